"""Per-animal tables (one row per frame and animal) and the cohort summary.

Columns and units are listed in ``docs/architecture.md``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from sipec_models.inference.ingest import load_probe
from sipec_models.io.store import open_store
from sipec_models.segmentation.flags import AT_BORDER, MERGED_SPLIT

log = logging.getLogger(__name__)


def animal_names(n_animals: int) -> list[str]:
    """Default animal labels before identification: ``animal_0``, ``animal_1``, ..."""
    return [f"animal_{i}" for i in range(n_animals)]


def animal_table(store: str | os.PathLike, video_id: str, fps: float) -> pd.DataFrame:
    """Build the per-animal table of a consolidated video store.

    Args:
        store: the video store (arrays ``com``, ``box``, ``area``, ``score``,
            ``flags`` indexed ``(frame, animal, ...)``).
        video_id: value of the ``video`` column.
        fps: frames per second, for ``time_s``.

    Returns:
        DataFrame sorted by frame then animal, one row per frame and animal
        (``T * A`` rows); undetected animals have NaN positions and
        ``detected = False``.
    """
    group = open_store(store)
    com = group["com"][...]
    box = group["box"][...]
    area = group["area"][...]
    score = group["score"][...]
    flags = group["flags"][...]
    n_found = group["n_found"][...]
    n_frames, n_animals = area.shape
    names = list(group.attrs.get("animal_names") or animal_names(n_animals))
    frame = np.repeat(np.arange(n_frames), n_animals)
    detected = np.isfinite(area).reshape(-1)
    table = pd.DataFrame({
        "video": video_id,
        "frame": frame,
        "time_s": frame / fps,
        "animal": np.tile(np.asarray(names, dtype=object), n_frames),
        "x": com[..., 0].reshape(-1),
        "y": com[..., 1].reshape(-1),
        "box_x0": box[..., 0].reshape(-1),
        "box_y0": box[..., 1].reshape(-1),
        "box_x1": box[..., 2].reshape(-1),
        "box_y1": box[..., 3].reshape(-1),
        "area": area.reshape(-1),
        "score": score.reshape(-1),
        "detected": detected,
        "merged": ((flags & MERGED_SPLIT) > 0).reshape(-1) & detected,
        "at_border": ((flags & AT_BORDER) > 0).reshape(-1) & detected,
        "n_found": np.repeat(n_found.astype(np.int16), n_animals),
    })
    return table


def _write_atomic(table: pd.DataFrame, path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if kind == "csv":
            table.to_csv(tmp, index=False, float_format="%.3f")
        else:
            table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run_merge(store, video_id: str, probe_json, csv, parquet, figure) -> pd.DataFrame:
    """Write the per-animal table (CSV and Parquet) and the trajectory figure of a video."""
    from sipec_models.plots import trajectory_figure

    info, _ = load_probe(probe_json)
    table = animal_table(store, video_id, info.fps)
    _write_atomic(table, Path(parquet), "parquet")
    _write_atomic(table, Path(csv), "csv")
    trajectory_figure(table, info.width, info.height, figure, title=video_id)
    per_animal = table.groupby("animal")["detected"].mean()
    log.info("%s: %d frames, %d animals, detected %s", video_id, table["frame"].nunique(), len(per_animal),
             ", ".join(f"{a} {v:.1%}" for a, v in per_animal.items()))
    return table


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """One row per video and animal: coverage, merges, distance and speed.

    ``more_found_fraction`` / ``fewer_found_fraction``: fraction of the
    video's frames where the segmenter found more / fewer instances than
    the video's animals (quality control; the same for every animal of a video).

    Distance sums centre displacements between consecutive frames where the
    animal was detected in both (px); mean speed is that distance over the
    time covered by those frame pairs (px/s).
    """
    rows = []
    expected = table.groupby("video")["animal"].nunique()
    for (video, animal), t in table.sort_values("frame").groupby(["video", "animal"], sort=True):
        xy = t[["x", "y"]].to_numpy(float)
        step = np.linalg.norm(np.diff(xy, axis=0), axis=1)
        consecutive = np.diff(t["frame"].to_numpy()) == 1
        valid = np.isfinite(step) & consecutive
        dt = np.diff(t["time_s"].to_numpy())[valid].sum()
        distance = float(step[valid].sum())
        rows.append({
            "video": video,
            "animal": animal,
            "n_frames": len(t),
            "detected_fraction": float(t["detected"].mean()),
            "merged_fraction": float(t["merged"].mean()),
            "at_border_fraction": float(t["at_border"].mean()),
            "more_found_fraction": float((t["n_found"] > expected[video]).mean()),
            "fewer_found_fraction": float((t["n_found"] < expected[video]).mean()),
            "distance_px": distance,
            "mean_speed_px_s": distance / dt if dt > 0 else float("nan"),
            "mean_area_px2": float(t["area"].mean()),
        })
    return pd.DataFrame(rows)


def run_summary(tables: Sequence[str | os.PathLike], videos_tsv, out) -> pd.DataFrame:
    """Write the cohort summary: :func:`summarise` of every table joined with video metadata."""
    summary = pd.concat([summarise(pd.read_parquet(p)) for p in tables], ignore_index=True)
    videos = pd.read_csv(videos_tsv, sep="\t", dtype=str, keep_default_na=False, comment="#")
    meta = videos.drop(columns=[c for c in ("path",) if c in videos.columns]).rename(columns={"id": "video"})
    summary = summary.merge(meta, on="video", how="left")
    _write_atomic(summary, Path(out), "csv")
    log.info("cohort summary: %d videos, %d animals -> %s", summary["video"].nunique(), len(summary), out)
    return summary
