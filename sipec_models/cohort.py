"""Cohort behaviour tables: time budgets and bout statistics per video and animal, averaged per group.

Reads the per-animal tables of the merge step (``results/<video>/animals.parquet``,
:func:`sipec_models.tables.animal_table`), whose behaviour columns are
``<behaviour>_prob`` (0-1) and ``<behaviour>`` (the bool call), and the videos
table (``config/videos.tsv``) for the metadata columns to group by.

Per video, animal and behaviour (:func:`behaviour_budgets`):

- the time budget, from :func:`sipec_models.ethogram.time_budget` over the
  animal's frames in time order (frames without a call, undetected ones
  included, end a bout, exactly as in ``bouts.csv``);
- ``fraction`` is relative to the frames where the animal was *detected*
  (the table's ``detected`` column), not to all frames of the video;
- ``bouts_per_min`` is bouts per minute of detected time.

Per group (:func:`group_statistics`): the mean and standard error of the
mean (``std(ddof=1) / sqrt(n)``) of each statistic over the animals of the
group (one animal of one video is one sample; an animal filmed in two
videos counts twice). Animals without a bout of a behaviour have no bout
duration and are left out of the bout-duration means (``n`` counts them
per statistic; ``n_animals`` counts every animal).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from sipec_models.ethogram import time_budget

log = logging.getLogger(__name__)

#: Columns of :func:`behaviour_budgets` (the per-animal cohort table; videos.tsv metadata go after ``animal``).
ANIMAL_COLUMNS = ["video", "animal", "behaviour", "n_frames", "detected_frames", "detected_s", "frames", "seconds",
                  "fraction", "n_bouts", "bouts_per_min", "mean_bout_s", "median_bout_s"]
#: Statistics averaged per group (:func:`group_statistics`).
GROUP_STATISTICS = ["fraction", "seconds", "n_bouts", "bouts_per_min", "mean_bout_s", "median_bout_s"]
#: The cohort-wide block of the group table.
ALL = "all"


def table_behaviours(table: pd.DataFrame) -> list[str]:
    """Behaviours of a per-animal table: every ``<b>`` with a ``<b>_prob`` column and a bool ``<b>`` column."""
    return [c[:-len("_prob")] for c in table.columns
            if c.endswith("_prob") and c[:-len("_prob")] in table.columns
            and pd.api.types.is_bool_dtype(table[c[:-len("_prob")]])]


def table_fps(table: pd.DataFrame) -> float:
    """Frames per second of a per-animal table, from its ``frame`` and ``time_s = frame / fps`` columns."""
    frame, time_s = table["frame"].to_numpy(float), table["time_s"].to_numpy(float)
    ok = (frame > 0) & np.isfinite(time_s) & (time_s > 0)
    if not ok.any():
        raise ValueError("cannot tell the frame rate: the table has no frame > 0 with a time_s")
    return float(np.median(frame[ok] / time_s[ok]))


def behaviour_budgets(table: pd.DataFrame, behaviours: Sequence[str] | None = None,
                      fps: float | None = None) -> pd.DataFrame:
    """Time budget and bout statistics of each animal and behaviour of one video's per-animal table.

    Args:
        table: per-animal table (``video, frame, time_s, animal, detected`` and the behaviour calls).
        behaviours: the behaviour columns; None: every behaviour of the table (:func:`table_behaviours`).
        fps: frames per second; None: from the table's ``time_s`` (:func:`table_fps`).

    Returns:
        One row per animal (table order) and behaviour, columns :data:`ANIMAL_COLUMNS`:
        ``n_frames`` (the animal's rows), ``detected_frames`` and ``detected_s``
        (frames / seconds it was detected), ``frames`` and ``seconds`` called,
        ``fraction = frames / detected_frames``, ``n_bouts``,
        ``bouts_per_min = n_bouts / (detected_s / 60)``, ``mean_bout_s`` and
        ``median_bout_s`` (NaN without bouts). Ratios over zero detected
        frames are NaN.

    Raises:
        ValueError: no behaviour columns, or a named behaviour missing from the table.
    """
    behaviours = table_behaviours(table) if behaviours is None else list(behaviours)
    if not behaviours:
        raise ValueError("the table has no behaviour columns (<behaviour>_prob and a bool <behaviour>): "
                         "was behaviour enabled?")
    missing = [b for b in behaviours if b not in table.columns]
    if missing:
        raise ValueError(f"the table has no column(s) {', '.join(missing)} (behaviours: {table_behaviours(table)})")
    for col in ("video", "frame", "animal", "detected"):
        if col not in table.columns:
            raise ValueError(f"the table has no {col!r} column: is it a per-animal table (animals.parquet)?")
    fps = table_fps(table) if fps is None else float(fps)
    parts = []
    for animal, t in table.groupby("animal", sort=False):
        t = t.sort_values("frame")
        calls = t[behaviours].fillna(False).to_numpy(bool)  # as bout_table: no call ends a bout
        budget = time_budget(calls, behaviours, fps)
        detected = int(t["detected"].fillna(False).astype(bool).sum())
        detected_s = detected / fps
        with np.errstate(invalid="ignore", divide="ignore"):
            budget["fraction"] = budget["frames"] / detected if detected else np.nan
            budget["bouts_per_min"] = budget["n_bouts"] / (detected_s / 60) if detected else np.nan
        budget.insert(0, "video", t["video"].iloc[0])
        budget.insert(1, "animal", animal)
        budget["n_frames"] = len(t)
        budget["detected_frames"] = detected
        budget["detected_s"] = detected_s
        parts.append(budget)
    if not parts:
        return pd.DataFrame(columns=ANIMAL_COLUMNS)
    return pd.concat(parts, ignore_index=True)[ANIMAL_COLUMNS]


def read_videos_table(path: str | os.PathLike) -> pd.DataFrame:
    """The videos table as strings, indexed by video id (``id`` column)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: videos table does not exist")
    videos = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, comment="#")
    videos.columns = [c.strip() for c in videos.columns]
    if "id" not in videos.columns:
        raise ValueError(f"{path}: no 'id' column (columns: {', '.join(videos.columns)})")
    return videos.set_index("id")


def resolve_group_by(videos: pd.DataFrame, group_by: Sequence[str] | None, videos_path="videos.tsv") -> list[str]:
    """The metadata columns to group by: ``group_by`` as given (checked), or ``[group]`` when None and the
    videos table has a ``group`` column, else none.

    Raises:
        ValueError: a named column is not in the videos table (naming the file and the column).
    """
    if group_by is None:
        return ["group"] if "group" in videos.columns else []
    group_by = [str(g) for g in group_by]
    columns = [c for c in videos.columns if c != "path"]
    for g in group_by:
        if g not in columns:
            raise ValueError(f"{videos_path}: no column {g!r} to group the cohort by (summary.group_by); "
                             f"its columns are: id, {', '.join(columns)}")
        if g in ANIMAL_COLUMNS:
            raise ValueError(f"{videos_path}: column {g!r} shares its name with a column of the cohort table; "
                             "rename it to group by it")
    return list(dict.fromkeys(group_by))


def _sem(x: pd.Series) -> float:
    x = x.dropna()
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def group_statistics(animals: pd.DataFrame, group_by: Sequence[str]) -> pd.DataFrame:
    """Mean and s.e.m. over animals of each statistic, per behaviour and group.

    Args:
        animals: per-animal rows (:func:`behaviour_budgets`) with the ``group_by`` metadata columns.
        group_by: metadata columns; each gives one block of rows (one row per value and behaviour).

    Returns:
        Columns ``group_by`` (the column, or ``all`` for the cohort-wide
        block that always comes first), ``group`` (its value), ``behaviour``,
        ``n_animals``, then for each statistic ``s`` of
        :data:`GROUP_STATISTICS`: ``s_mean``, ``s_sem`` and ``s_n`` (the
        animals with a value: fewer than ``n_animals`` for the bout
        durations when some animals had no bout). s.e.m. is NaN for one animal.
    """
    animals = animals.copy()
    animals[ALL] = ALL
    behaviour_order = list(dict.fromkeys(animals["behaviour"]))
    blocks = []
    for column in [ALL, *group_by]:
        keys = animals[column].fillna("").astype(str)
        grouped = animals.groupby([keys.rename("group"), animals["behaviour"]], sort=False)
        stats = {"n_animals": grouped.size()}
        for s in GROUP_STATISTICS:
            stats[f"{s}_mean"] = grouped[s].mean()
            stats[f"{s}_sem"] = grouped[s].agg(_sem)
            stats[f"{s}_n"] = grouped[s].count()
        block = pd.DataFrame(stats).reset_index()
        block.insert(0, "group_by", column)
        order = block["behaviour"].map({b: i for i, b in enumerate(behaviour_order)})
        blocks.append(block.assign(_o=order).sort_values(["group", "_o"], kind="stable").drop(columns="_o"))
    return pd.concat(blocks, ignore_index=True)


def cohort_behaviour(tables: Mapping[str, pd.DataFrame] | Sequence[pd.DataFrame], videos: pd.DataFrame,
                     group_by: Sequence[str] | None = None, fps: Mapping[str, float] | None = None,
                     videos_path="videos.tsv") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-animal and per-group behaviour tables of a cohort.

    Args:
        tables: per-animal tables, one per video (a mapping from a name used
            in error messages, e.g. the file, or a sequence).
        videos: the videos table indexed by id (:func:`read_videos_table`).
        group_by: metadata columns to average over (:func:`resolve_group_by`).
        fps: frames per second of each video id; default: from each table.
        videos_path: the videos table's file, for error messages.

    Returns:
        ``(animals, groups)``: :func:`behaviour_budgets` of every video with
        the videos table's metadata columns (all but ``path``) after
        ``animal``, and :func:`group_statistics`.

    Raises:
        ValueError: tables with different behaviours, a table without
            behaviours, a ``group_by`` column not in the videos table.
    """
    group_by = resolve_group_by(videos, group_by, videos_path)
    items = tables.items() if isinstance(tables, Mapping) else ((str(i), t) for i, t in enumerate(tables))
    parts, behaviours, first = [], None, None
    for name, table in items:
        try:
            own = table_behaviours(table)
            if not own:
                raise ValueError("the table has no behaviour columns (<behaviour>_prob and a bool <behaviour>): "
                                 "was behaviour enabled?")
            if behaviours is None:
                behaviours, first = own, name
            elif own != behaviours:
                raise ValueError(f"behaviours {own} differ from {first}'s {behaviours}; re-run its merge job")
            video = str(table["video"].iloc[0]) if len(table) else ""
            parts.append(behaviour_budgets(table, behaviours, None if fps is None else fps[video]))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None
    if not parts:
        raise ValueError("no per-animal tables given")
    animals = pd.concat(parts, ignore_index=True)
    unknown = sorted(set(animals["video"]) - set(videos.index))
    if unknown:
        log.warning("videos %s are not in %s: their metadata columns stay empty", ", ".join(unknown), videos_path)
    meta = [c for c in videos.columns if c != "path" and c not in ANIMAL_COLUMNS]
    skipped = [c for c in videos.columns if c != "path" and c in ANIMAL_COLUMNS]
    if skipped:
        log.warning("%s: metadata column(s) %s share a name with a cohort column and are left out",
                    videos_path, ", ".join(skipped))
    joined = videos[meta].reindex(animals["video"].to_numpy())
    for i, c in enumerate(meta):
        animals.insert(2 + i, c, joined[c].to_numpy())
    return animals, group_statistics(animals, group_by)


def _write_csv_atomic(table: pd.DataFrame, path: Path) -> None:
    """Write a CSV through a temporary file beside it (``tables._write_atomic``, 6 significant digits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        table.to_csv(tmp, index=False, float_format="%.6g")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run_cohort_behaviour(tables: Sequence[str | os.PathLike], videos_tsv: str | os.PathLike,
                         animals_out: str | os.PathLike, groups_out: str | os.PathLike,
                         group_by: Sequence[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write ``cohort_behaviour.csv`` (per video, animal and behaviour) and ``cohort_groups.csv`` (per group).

    Both tables are computed before either is written, and each is written
    through a temporary file, so an error leaves no half-written file.
    """
    videos = read_videos_table(videos_tsv)
    group_by = resolve_group_by(videos, group_by, videos_tsv)  # fail before reading the tables
    loaded = {}
    for p in tables:
        p = Path(p)
        if not p.exists():
            raise FileNotFoundError(f"{p}: per-animal table does not exist")
        loaded[str(p)] = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    animals, groups = cohort_behaviour(loaded, videos, group_by, videos_path=videos_tsv)
    _write_csv_atomic(animals, Path(animals_out))
    _write_csv_atomic(groups, Path(groups_out))
    log.info("cohort behaviour: %d videos, %d animals, %d behaviours, grouped by %s -> %s, %s",
             animals["video"].nunique(), len(animals.drop_duplicates(["video", "animal"])),
             animals["behaviour"].nunique(), ", ".join(group_by) or "(cohort only)", animals_out, groups_out)
    return animals, groups
