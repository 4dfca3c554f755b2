"""Cohort behaviour tables: hand-made per-animal tables with known bouts, hand-computed budgets and group means."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sipec_models.cli import main
from sipec_models.cohort import (behaviour_budgets, cohort_behaviour, read_videos_table, resolve_group_by,
                                 run_cohort_behaviour, table_behaviours)
from sipec_models.tables import bout_table

FPS = 10.0
T = 100


def _animal(video: str, animal: str, calls: dict[str, list[tuple[int, int]]], detected=(0, T)) -> pd.DataFrame:
    """Rows of one animal: ``calls`` maps a behaviour to its bouts ``[start, stop)``; frames outside ``detected``
    are undetected (no position, NaN probabilities, no call)."""
    frame = np.arange(T)
    det = (frame >= detected[0]) & (frame < detected[1])
    t = pd.DataFrame({"video": video, "frame": frame, "time_s": frame / FPS, "animal": animal,
                      "x": np.where(det, 5.0, np.nan), "detected": det})
    for b in ("walk", "rest"):
        on = np.zeros(T, bool)
        for s, e in calls.get(b, []):
            on[s:e] = True
        t[f"{b}_prob"] = np.where(det, np.where(on, 0.9, 0.1), np.nan)
        t[b] = on & det
    return t


def _video(*animals: pd.DataFrame) -> pd.DataFrame:
    return pd.concat(animals, ignore_index=True).sort_values(["frame", "animal"], ignore_index=True)


@pytest.fixture
def tables():
    # v1: animal a detected throughout; walk 0-20 and 50-60 (2 bouts, 2.0 s and 1.0 s), rest 20-50 (3.0 s).
    #     animal b detected in frames 0-50 only: walk 10-20 and 30-40 (2 x 1.0 s), rest 45-50 (0.5 s, ended by
    #     the loss of detection).
    # v2: animal c detected throughout: walk 0-10 (1.0 s), never rests.
    v1 = _video(_animal("v1", "a", {"walk": [(0, 20), (50, 60)], "rest": [(20, 50)]}),
                _animal("v1", "b", {"walk": [(10, 20), (30, 40)], "rest": [(45, 50)]}, detected=(0, 50)))
    v2 = _video(_animal("v2", "c", {"walk": [(0, 10)]}))
    return {"v1.parquet": v1, "v2.parquet": v2}


@pytest.fixture
def videos_tsv(tmp_path):
    path = tmp_path / "videos.tsv"
    path.write_text("id\tpath\tn_animals\tgroup\tday\n"
                    "v1\tv1.mp4\t2\tA\t1\n"
                    "v2\tv2.mp4\t1\tB\t1\n")
    return path


def _row(df, **keys):
    sel = df
    for k, v in keys.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, (keys, sel)
    return sel.iloc[0]


def test_table_behaviours_ignores_other_prob_columns(tables):
    t = tables["v1.parquet"].assign(identity_prob=0.5, nose_conf=0.3)
    assert table_behaviours(t) == ["walk", "rest"]


def test_budgets_of_hand_made_bouts(tables):
    out = behaviour_budgets(tables["v1.parquet"], fps=FPS)
    assert list(out[["animal", "behaviour"]].itertuples(index=False, name=None)) == [
        ("a", "walk"), ("a", "rest"), ("b", "walk"), ("b", "rest")]
    expected = {
        # (animal, behaviour): detected_frames, frames, n_bouts, bouts_per_min, mean_bout_s, median_bout_s
        ("a", "walk"): (100, 30, 2, 12.0, 1.5, 1.5),
        ("a", "rest"): (100, 30, 1, 6.0, 3.0, 3.0),
        ("b", "walk"): (50, 20, 2, 24.0, 1.0, 1.0),
        ("b", "rest"): (50, 5, 1, 12.0, 0.5, 0.5),
    }
    for (animal, b), (det, frames, n_bouts, bpm, mean_s, median_s) in expected.items():
        r = _row(out, animal=animal, behaviour=b)
        assert r["n_frames"] == 100
        assert r["detected_frames"] == det and r["detected_s"] == pytest.approx(det / FPS)
        assert r["frames"] == frames and r["seconds"] == pytest.approx(frames / FPS)
        assert r["fraction"] == pytest.approx(frames / det)  # of detected frames, not of the video
        assert r["n_bouts"] == n_bouts
        assert r["bouts_per_min"] == pytest.approx(bpm)
        assert r["mean_bout_s"] == pytest.approx(mean_s) and r["median_bout_s"] == pytest.approx(median_s)


def test_budgets_infer_fps_from_the_table(tables):
    a = behaviour_budgets(tables["v1.parquet"])  # fps from time_s = frame / fps
    b = behaviour_budgets(tables["v1.parquet"], fps=FPS)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12)
    c = behaviour_budgets(tables["v1.parquet"], fps=2 * FPS)  # the frame rate really is used
    assert _row(c, animal="a", behaviour="walk")["seconds"] == pytest.approx(1.5)


def test_budgets_match_bouts_csv(tables):
    """The bouts counted are those of bouts.csv (tables.bout_table), with uneven bouts and an undetected gap."""
    t = _video(_animal("v", "a", {"walk": [(0, 7), (9, 10), (40, 73)], "rest": [(80, 100)]}, detected=(0, 60)),
               _animal("v", "b", {"walk": [(3, 4), (5, 6), (7, 9)]}))
    bouts = bout_table(t, ["walk", "rest"], FPS)
    out = behaviour_budgets(t, fps=FPS)
    for r in out.itertuples():
        mine = bouts[(bouts["animal"] == r.animal) & (bouts["behaviour"] == r.behaviour)]
        assert r.n_bouts == len(mine)
        assert r.frames == mine["n_frames"].sum()
        if len(mine):
            assert r.mean_bout_s == pytest.approx(mine["duration_s"].mean())
            assert r.median_bout_s == pytest.approx(mine["duration_s"].median())
        else:
            assert math.isnan(r.mean_bout_s)
    a_walk = _row(out, animal="a", behaviour="walk")
    assert (a_walk["n_bouts"], a_walk["frames"], a_walk["detected_frames"]) == (3, 28, 60)  # 40-73 cut at 60
    assert _row(out, animal="a", behaviour="rest")["n_bouts"] == 0  # rest 80-100 is undetected: no call


def test_group_means_and_sem(tables, videos_tsv):
    videos = read_videos_table(videos_tsv)
    animals, groups = cohort_behaviour(tables, videos, ["group"])
    assert list(animals.columns[:5]) == ["video", "animal", "n_animals", "group", "day"]
    assert _row(animals, animal="b", behaviour="walk")["group"] == "A"
    assert _row(animals, animal="c", behaviour="walk")["group"] == "B"

    # group A: animals a and b.
    a_walk = _row(groups, group_by="group", group="A", behaviour="walk")
    assert a_walk["n_animals"] == 2
    assert a_walk["fraction_mean"] == pytest.approx(0.35)  # (0.3 + 0.4) / 2
    assert a_walk["fraction_sem"] == pytest.approx(0.05)  # std([0.3, 0.4], ddof=1) / sqrt(2)
    assert a_walk["bouts_per_min_mean"] == pytest.approx(18.0)  # (12 + 24) / 2
    assert a_walk["bouts_per_min_sem"] == pytest.approx(6.0)
    assert a_walk["n_bouts_mean"] == pytest.approx(2.0) and a_walk["n_bouts_sem"] == pytest.approx(0.0)
    a_rest = _row(groups, group_by="group", group="A", behaviour="rest")
    assert a_rest["fraction_mean"] == pytest.approx(0.2) and a_rest["fraction_sem"] == pytest.approx(0.1)
    assert a_rest["mean_bout_s_mean"] == pytest.approx(1.75)  # (3.0 + 0.5) / 2
    assert a_rest["mean_bout_s_sem"] == pytest.approx(1.25)
    assert a_rest["seconds_mean"] == pytest.approx(1.75)  # (3.0 + 0.5) / 2

    # group B: one animal, never rests: no s.e.m., no bout duration.
    b_walk = _row(groups, group_by="group", group="B", behaviour="walk")
    assert b_walk["n_animals"] == 1 and b_walk["fraction_mean"] == pytest.approx(0.1)
    assert math.isnan(b_walk["fraction_sem"])
    b_rest = _row(groups, group_by="group", group="B", behaviour="rest")
    assert b_rest["fraction_mean"] == 0 and b_rest["mean_bout_s_n"] == 0 and math.isnan(b_rest["mean_bout_s_mean"])

    # the cohort-wide block comes first; animals without bouts are left out of the bout durations only.
    assert groups["group_by"].iloc[0] == "all"
    all_walk = _row(groups, group_by="all", behaviour="walk")
    fractions = np.array([0.3, 0.4, 0.1])
    assert all_walk["n_animals"] == 3
    assert all_walk["fraction_mean"] == pytest.approx(fractions.mean())
    assert all_walk["fraction_sem"] == pytest.approx(fractions.std(ddof=1) / np.sqrt(3))
    all_rest = _row(groups, group_by="all", behaviour="rest")
    assert all_rest["fraction_n"] == 3 and all_rest["mean_bout_s_n"] == 2
    assert all_rest["mean_bout_s_mean"] == pytest.approx(1.75)
    assert all_rest["fraction_mean"] == pytest.approx((0.3 + 0.1 + 0.0) / 3)


def test_several_group_columns_and_default(tables, videos_tsv, tmp_path):
    videos = read_videos_table(videos_tsv)
    _, groups = cohort_behaviour(tables, videos, ["group", "day"])
    assert list(dict.fromkeys(groups["group_by"])) == ["all", "group", "day"]
    day1 = _row(groups, group_by="day", group="1", behaviour="walk")
    assert day1["n_animals"] == 3
    assert day1["fraction_mean"] == pytest.approx(_row(groups, group_by="all", behaviour="walk")["fraction_mean"])
    # default: the group column when there is one ...
    assert resolve_group_by(videos, None) == ["group"]
    _, default = cohort_behaviour(tables, videos)
    assert list(dict.fromkeys(default["group_by"])) == ["all", "group"]
    # ... else the cohort only; an explicit empty list: the cohort only
    no_group = tmp_path / "nogroup.tsv"
    no_group.write_text("id\tpath\tn_animals\nv1\tv1.mp4\t2\nv2\tv2.mp4\t1\n")
    assert resolve_group_by(read_videos_table(no_group), None) == []
    _, only = cohort_behaviour(tables, videos, [])
    assert set(only["group_by"]) == {"all"}


def test_missing_group_by_column_names_file_and_column(tables, videos_tsv, tmp_path):
    with pytest.raises(ValueError, match=r"videos\.tsv: no column 'treatment'.*group, day"):
        cohort_behaviour(tables, read_videos_table(videos_tsv), ["treatment"], videos_path=videos_tsv)
    with pytest.raises(ValueError, match="no column 'path'"):
        resolve_group_by(read_videos_table(videos_tsv), ["path"], videos_tsv)
    # through the command: status 1, the message names the file and column, nothing written
    paths = []
    for name, t in tables.items():
        paths.append(tmp_path / name)
        t.to_parquet(paths[-1])
    out, groups = tmp_path / "out" / "cohort_behaviour.csv", tmp_path / "out" / "cohort_groups.csv"
    code = main(["cohort-behaviour", *map(str, paths), "--videos", str(videos_tsv), "--group-by", "treatment",
                 "--out", str(out), "--groups", str(groups)])
    assert code == 1
    assert not out.exists() and not groups.exists()


def test_bad_tables(tables, videos_tsv):
    videos = read_videos_table(videos_tsv)
    no_behaviour = tables["v2.parquet"].drop(columns=["walk", "walk_prob", "rest", "rest_prob"])
    with pytest.raises(ValueError, match="v2.parquet: the table has no behaviour columns"):
        cohort_behaviour({"v1.parquet": tables["v1.parquet"], "v2.parquet": no_behaviour}, videos)
    other = tables["v2.parquet"].drop(columns=["rest", "rest_prob"])
    with pytest.raises(ValueError, match=r"v2.parquet: behaviours \['walk'\] differ"):
        cohort_behaviour({"v1.parquet": tables["v1.parquet"], "v2.parquet": other}, videos)


def test_run_writes_both_tables(tables, videos_tsv, tmp_path):
    paths = []
    for name, t in tables.items():
        paths.append(tmp_path / name)
        t.to_parquet(paths[-1])
    out, groups = tmp_path / "res" / "cohort_behaviour.csv", tmp_path / "res" / "cohort_groups.csv"
    code = main(["cohort-behaviour", *map(str, paths), "--videos", str(videos_tsv), "--group-by", "group", "day",
                 "--out", str(out), "--groups", str(groups)])
    assert code == 0
    animals = pd.read_csv(out)
    assert len(animals) == 3 * 2  # 3 animals x 2 behaviours
    assert _row(animals, animal="b", behaviour="walk")["bouts_per_min"] == pytest.approx(24.0)
    g = pd.read_csv(groups, dtype={"group": str})
    assert _row(g, group_by="group", group="A", behaviour="walk")["fraction_sem"] == pytest.approx(0.05)
    assert sorted(p.name for p in out.parent.iterdir()) == ["cohort_behaviour.csv", "cohort_groups.csv"]
    # the function returns what it wrote
    a2, _ = run_cohort_behaviour(paths, videos_tsv, out, groups)
    assert len(a2) == len(animals)
