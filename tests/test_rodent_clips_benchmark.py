"""The rodent_clips benchmarks' protocol: session groups, leak-free folds, and merging runs of disjoint folds.

Only file names are read (``list_clips`` globs ``<class>/*.mkv``), so a directory of empty files stands in
for the real clips; nothing is decoded or trained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import rodent_clips_behavenet as rcb  # noqa: E402
import rodent_clips_deepethogram as rcd  # noqa: E402


@pytest.fixture
def clip_dir(tmp_path: Path) -> Path:
    """Empty ``.mkv`` files: per class 4 clips of 2 cage sessions and 4 bare-number clips in 2 chains."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(rcb.CLASSES):
        d = tmp_path / name
        d.mkdir()
        for s in range(4):
            (d / f"cage{1 + s % 2}_1_{k + 1}_{s}_0_{int(rng.integers(1000))}.mkv").touch()
        for j in range(4):  # chains 1000*k + 16*j (one chain per class: gaps 16 <= 64)
            (d / f"{100000 * k + 16 * j}.mkv").touch()
    return tmp_path


def test_groups_chain_bare_numbers_and_keep_sessions(clip_dir):
    clips = rcb.list_clips(clip_dir)
    groups = rcb.clip_groups(clips)
    bare = [g for c, g in zip(clips, groups) if c["session"] is None]
    assert len(set(bare)) == len(rcb.CLASSES)  # one chain per class's run of numbers 16 apart
    sessions = {c["session"]: g for c, g in zip(clips, groups) if c["session"] is not None}
    assert all(s == g for s, g in sessions.items())
    # the gap rule: 65 frames apart starts a new chain, 64 does not
    assert len(set(rcb.clip_groups([{"session": None, "number": n} for n in (0, 64, 129)]))) == 2


def test_folds_never_split_a_group(clip_dir):
    clips = rcb.list_clips(clip_dir)
    y = np.array([c["label"] for c in clips])
    groups = rcb.clip_groups(clips)
    keep, splits = rcb.fold_splits(y, groups, n_folds=5, seed=0)
    tested = np.concatenate([keep[te] for _, te in splits])
    assert sorted(tested.tolist()) == list(range(len(clips)))  # every clip tested exactly once
    for tr, te in splits:
        assert not set(groups[keep[tr]]) & set(groups[keep[te]])


def _partial(clips, y, splits, keep, run, rng, overrides):
    """A result dict as ``main`` writes it for the folds ``run`` (random predictions)."""
    from sipec_models.training.config import load_model_config

    cfg = load_model_config("deepethogram", overrides)
    pred, pred_fx, fold_of = (np.full(len(clips), -1) for _ in range(3))
    folds, folds_fx = [], []
    for f in run:
        te = keep[splits[f][1]]
        pred[te], pred_fx[te], fold_of[te] = rng.integers(0, 7, len(te)), rng.integers(0, 7, len(te)), f
        s, sf = rcb._scores(y[te], pred[te]), rcb._scores(y[te], pred_fx[te])
        folds.append({"fold": f, "accuracy": s["accuracy"], "macro_f1": s["macro_f1"], "total_s": 1.0,
                      "feature_extractor": {k: sf[k] for k in ("accuracy", "macro_f1", "f1")}})
        folds_fx.append({"accuracy": sf["accuracy"], "macro_f1": sf["macro_f1"]})
    args = argparse.Namespace(seed=0, threads=1, max_clips=None, only_folds=list(run), flow_per_fold=True,
                              flow_val_fraction=0.1, crop_size=128)
    return rcd.assemble(args, cfg, overrides, clips, y, rcb.clip_groups(clips),
                        np.array([c["cage"] for c in clips]), pred, pred_fx, fold_of, folds, folds_fx, 0, "cpu",
                        None)


def test_merge_equals_one_run_and_refuses_mismatches(clip_dir, tmp_path):
    clips = rcb.list_clips(clip_dir)
    y = np.array([c["label"] for c in clips])
    keep, splits = rcb.fold_splits(y, rcb.clip_groups(clips), 5, 0)
    ov = list(rcd.DEFAULT_OVERRIDES)
    whole = _partial(clips, y, splits, keep, range(5), np.random.default_rng(1), ov)
    # the same predictions split over two runs
    fold = np.array(whole["predictions"]["fold"])
    parts = []
    for run in ((0, 3), (1, 2, 4)):
        p = json.loads(json.dumps(whole, default=float))
        m = ~np.isin(fold, run)
        for key in ("fold", "pred", "pred_feature_extractor"):
            v = np.array(p["predictions"][key])
            v[m] = -1
            p["predictions"][key] = v.tolist()
        p["folds"] = [d for d in p["folds"] if d["fold"] in run]
        path = tmp_path / f"part{run[0]}.json"
        path.write_text(json.dumps(p))
        parts.append(path)
    out = rcd.main(["--data", str(clip_dir), "--merge", *map(str, parts), "--out", str(tmp_path / "all.json")])
    for key in ("pooled", "per_fold", "subsets", "chance"):
        assert out[key] == json.loads(json.dumps(whole[key], default=float)), key
    assert out["feature_extractor"]["pooled"] == whole["feature_extractor"]["pooled"]
    assert json.loads((tmp_path / "all.json").read_text())["only_folds"] == [0, 1, 2, 3, 4]

    with pytest.raises(SystemExit, match="fold"):  # the same fold twice
        rcd.main(["--data", str(clip_dir), "--merge", str(parts[0]), str(parts[0]), "--out", str(tmp_path / "x")])
    other = json.loads(parts[1].read_text())
    other["overrides"] = ov + ["features.train.epochs=1"]
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="overrides"):
        rcd.main(["--data", str(clip_dir), "--merge", str(parts[0]), str(bad), "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_behavenet_merge_scores_disjoint_runs_as_one(clip_dir, tmp_path):
    """``rodent_clips_behavenet.py --merge``: runs of disjoint folds give the scores of one run of all folds."""
    clips = rcb.list_clips(clip_dir)
    y = np.array([c["label"] for c in clips])
    keep, splits = rcb.fold_splits(y, rcb.clip_groups(clips), 5, 0)
    whole = json.loads(json.dumps(_partial(clips, y, splits, keep, range(5), np.random.default_rng(2), []),
                                  default=float))
    fold = np.array(whole["predictions"]["fold"])
    parts = []
    for run in ((0, 1, 2), (3, 4)):
        p = json.loads(json.dumps(whole))
        m = ~np.isin(fold, run)
        for key in ("fold", "pred"):
            v = np.array(p["predictions"][key])
            v[m] = -1
            p["predictions"][key] = v.tolist()
        p["folds"] = [d for d in p["folds"] if d["fold"] in run]
        parts.append(tmp_path / f"bn{run[0]}.json")
        parts[-1].write_text(json.dumps(p))
    out = rcb.main(["--data", str(clip_dir), "--merge", *map(str, parts), "--out", str(tmp_path / "all.json")])
    for key in ("pooled", "per_fold", "subsets", "chance"):
        assert out[key] == whole[key], key
    assert out["merged_from"] == [str(p) for p in parts] and out["only_folds"] is None
    with pytest.raises(SystemExit, match="fold"):
        rcb.main(["--data", str(clip_dir), "--merge", str(parts[0]), str(parts[0]), "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()


def test_behavenet_merge_averages_seeds(clip_dir, tmp_path):
    """Runs of the same folds with different training seeds: the ensemble calls the argmax of the mean clip
    probabilities, scores each seed alone, and refuses seeds that cover different folds."""
    clips = rcb.list_clips(clip_dir)
    y = np.array([c["label"] for c in clips])
    keep, splits = rcb.fold_splits(y, rcb.clip_groups(clips), 5, 0)
    rng = np.random.default_rng(3)
    base = json.loads(json.dumps(_partial(clips, y, splits, keep, range(5), rng, []), default=float))
    probs, paths = [], []
    for seed in (1, 2):
        p = json.loads(json.dumps(base))
        prob = rng.dirichlet(np.ones(len(rcb.CLASSES)), len(clips))
        prob_no_flip = rng.dirichlet(np.ones(len(rcb.CLASSES)), len(clips))
        probs.append((prob, prob_no_flip))
        p["config"]["seed"] = seed
        p["overrides"] = [f"seed={seed}"]
        p["predictions"].update(pred=prob.argmax(1).tolist(), prob=prob.tolist(), prob_no_flip=prob_no_flip.tolist())
        paths.append(tmp_path / f"s{seed}.json")
        paths[-1].write_text(json.dumps(p))
    out = rcb.main(["--data", str(clip_dir), "--merge", *map(str, paths), "--out", str(tmp_path / "ens.json")])
    want = (probs[0][0] + probs[1][0]).argmax(1)
    assert out["pooled"] == rcb._scores(y, want)
    assert out["predictions"]["pred"] == want.tolist()
    ens = out["ensemble"]
    assert ens["seeds"] == [1, 2]
    assert ens["per_seed"]["2"]["macro_f1"] == rcb._scores(y, probs[1][0].argmax(1))["macro_f1"]
    assert ens["no_flip"]["macro_f1"] == rcb._scores(y, (probs[0][1] + probs[1][1]).argmax(1))["macro_f1"]
    assert [d["fold"] for d in out["folds"]] == [0, 1, 2, 3, 4]
    assert all(len(d["members"]) == 2 for d in out["folds"])
    # rescoring the written ensemble gives the same scores
    again = rcb.main(["--data", str(clip_dir), "--rescore", str(tmp_path / "ens.json"), "--out", str(tmp_path / "again.json")])
    assert again["pooled"] == out["pooled"] and again["ensemble"] == json.loads(json.dumps(ens))

    # seed 2 without fold 4: refused
    part = json.loads(paths[1].read_text())
    fold = np.array(part["predictions"]["fold"])
    fold[fold == 4] = -1
    part["predictions"]["fold"] = fold.tolist()
    part["folds"] = [d for d in part["folds"] if d["fold"] != 4]
    (tmp_path / "s2part.json").write_text(json.dumps(part))
    with pytest.raises(SystemExit, match="same folds"):
        rcb.main(["--data", str(clip_dir), "--merge", str(paths[0]), str(tmp_path / "s2part.json"), "--out", str(tmp_path / "x.json")])
    # a member without probabilities cannot be averaged
    old = json.loads(paths[1].read_text())
    del old["predictions"]["prob"]
    (tmp_path / "noprob.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit, match="no clip probabilities"):
        rcb.main(["--data", str(clip_dir), "--merge", str(paths[0]), str(tmp_path / "noprob.json"), "--out", str(tmp_path / "x.json")])
    # other settings than the seed: refused
    other = json.loads(paths[1].read_text())
    other["overrides"] = ["seed=2", "tcn.half_window=3"]
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="overrides"):
        rcb.main(["--data", str(clip_dir), "--merge", str(paths[0]), str(tmp_path / "other.json"), "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()
