"""Cross-validation folds and aggregates of the behaviour models (sipec_models.crossval)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sipec_models.crossval import make_folds, n_folds, run_cv_aggregate


def _frames(ranges, n):
    m = np.zeros(n, bool)
    for r in ranges:
        m[r["start"]:r["stop"]] = True
    return m


def _by_video(fold, key, video, n):
    return _frames([r for r in fold[key] if r["video"] == video], n)


def test_time_blocks_test_every_labelled_frame_once_and_purge_around_them():
    labelled = {"a": np.r_[np.zeros(10, bool), np.ones(100, bool)], "b": np.ones(60, bool)}
    folds = make_folds(labelled, "time_blocks", k=4, purge_frames=5)
    assert len(folds) == 4
    for v, m in labelled.items():
        tested = sum(_by_video(f, "test", v, len(m)).astype(int) for f in folds)
        np.testing.assert_array_equal(tested, m.astype(int))  # every labelled frame once, unlabelled never
        for f in folds:
            te, tr = _by_video(f, "test", v, len(m)), _by_video(f, "train", v, len(m))
            assert not (te & tr).any() and not (tr & ~m).any()
            idx_te, idx_tr = np.flatnonzero(te), np.flatnonzero(tr)
            assert np.abs(idx_tr[:, None] - idx_te[None]).min() > 5  # purged
            assert len(idx_te) and np.all(np.diff(idx_te) == 1)  # one contiguous block per video
    # block i of every video in fold i
    assert folds[0]["test"] == [{"video": "a", "start": 10, "stop": 35}, {"video": "b", "start": 0, "stop": 15}]


def test_leave_one_video_out_and_group_schemes():
    labelled = {v: np.ones(20, bool) for v in ("a", "b", "c")}
    folds = make_folds(labelled, "leave_one_video_out")
    assert [[r["video"] for r in f["test"]] for f in folds] == [["a"], ["b"], ["c"]]
    assert all(len(f["train"]) == 2 for f in folds)
    folds = make_folds(labelled, "group", k=5, groups={"a": "s1", "b": "s1", "c": "s2"})
    assert len(folds) == 2  # at most one fold per group
    tested = sorted(sorted(r["video"] for r in f["test"]) for f in folds)
    assert tested == [["a", "b"], ["c"]]
    for f in folds:  # no group is split between training and test
        assert not {r["video"] for r in f["test"]} & {r["video"] for r in f["train"]}


def test_stratified_blocks_put_every_behaviour_in_every_fold():
    rng = np.random.default_rng(0)
    n = 600
    strata = np.repeat(rng.integers(0, 3, n // 20), 20)  # bouts of 20 frames of 3 behaviours
    strata[:60] = 3  # a rare behaviour, only at the start
    strata[300:330] = 3
    labelled = {"a": np.ones(n, bool)}
    folds = make_folds(labelled, "stratified_blocks", k=2, strata={"a": strata}, blocks_per_fold=10)
    for f in folds:
        te = _by_video(f, "test", "a", n)
        assert set(np.unique(strata[te])) == {0, 1, 2, 3}
        runs = np.diff(np.r_[0, te.astype(int), 0])
        assert (runs == 1).sum() < 15  # whole blocks of 30 frames, not scattered frames
    tested = sum(_by_video(f, "test", "a", n).astype(int) for f in folds)
    assert (tested == 1).all()


@pytest.mark.parametrize("args, message", [
    (("leave_one_video_out", 5, ["a"]), "at least 2 videos"),
    (("group", 5, ["a", "b"], {"a": "x", "b": "x"}), "at least 2 groups"),
    (("time_blocks", 1, ["a"]), "at least 2 folds"),
    (("shuffled", 5, ["a"]), "unknown cross-validation scheme"),
])
def test_impossible_fold_definitions_are_refused(args, message):
    with pytest.raises(ValueError, match=message):
        n_folds(*args)


def test_aggregate_gives_mean_and_sem_over_folds(tmp_path):
    paths = []
    for fold, (f1, walk) in enumerate([(0.5, 0.6), (0.7, 0.8), (0.9, 1.0)]):
        m = {"model": "behavenet", "fold": fold, "scheme": "time_blocks", "macro_f1": f1, "frame_accuracy": f1 + 0.05,
             "per_behaviour": {"walk": {"f1": walk}, "rear": {"f1": f1 - 0.1}}, "chance_macro_f1": {"mean": 0.2},
             "n_test_animal_frames": 100}
        paths.append(tmp_path / f"fold_{fold}.json")
        paths[-1].write_text(json.dumps(m))
    summary = run_cv_aggregate(paths, tmp_path / "summary.json", tmp_path / "summary.csv")["behavenet"]
    assert summary["n_folds"] == 3
    assert summary["macro_f1"]["mean"] == pytest.approx(0.7)
    assert summary["macro_f1"]["sem"] == pytest.approx(0.2 / np.sqrt(3))
    assert summary["per_behaviour_f1"]["walk"]["mean"] == pytest.approx(0.8)
    assert summary["chance_macro_f1"]["mean"] == pytest.approx(0.2)
    csv = (tmp_path / "summary.csv").read_text().splitlines()
    assert csv[0] == "model,score,mean,sem,n" and len(csv) == 1 + 3 + 2


def test_deepethogram_fold_trains_its_three_stages_and_scores_the_test_block(tmp_path):
    """A DeepEthogram fold: flow generator, feature extractor, features and sequence model trained on the training
    block only (as the workflow runs them), calls scored on the test block, beside the circular-shift chance."""
    import torch

    from sipec_models.crossval import run_cv_fold, run_cv_folds
    from tests.test_deepethogram_rules import TINY_DEG
    from tests.test_tuning import _behavenet_source

    torch.set_num_threads(1)
    src = _behavenet_source(tmp_path, T=160)
    folds = run_cv_folds([src], tmp_path / "folds.json", "time_blocks", 2, purge_frames=5, max_distance=5.0)
    assert len(folds) == 2
    out = tmp_path / "fold_1.json"
    result = run_cv_fold("deepethogram", tmp_path / "folds.json", 1, [src], out, overrides=TINY_DEG,
                         max_distance=5.0, n_shifts=10)
    assert json.loads(out.read_text()) == result
    assert result["model"] == "deepethogram" and result["fold"] == 1
    assert result["n_test_animal_frames"] == 2 * 80
    assert set(result["per_behaviour"]) >= {"still", "flicker", "long"}
    assert 0 <= result["macro_f1"] <= 1 and 0 <= result["chance_macro_f1"]["mean"] <= 1
    with pytest.raises(ValueError, match="cross-validation runs behavenet, pose_classifier, deepethogram"):
        run_cv_fold("leap", tmp_path / "folds.json", 0, [src], tmp_path / "x.json")
