"""Pair behaviour on the demo: BehaveNet on the pair crops of social events (SIPEC's social input) against the
dilated-mask overlap alone, scored on a video it never saw.

The workflow (``make demo``: ``behaviour.social`` in ``config/config.yaml``)
trains a BehaveNet on the pair crops of ``arena_0``'s social events with the
demo's pair contacts (``social.csv``: ``touch`` where the two outlines lie
within 10 mm; event frames without contact are ``background``) and runs it on
every chunk of both videos. This script scores the calls of
``results/arena_1`` (``behave_pairs`` chunk stores, called as the merged
tables are) on arena_1's event frames against ``social.csv``:

* touch F1, precision, recall and frame accuracy over the (frame, pair)
  event samples;
* chance: the same calls against circularly shifted labels of each pair;
* baseline: ``touch`` where the pair's dilated-mask overlap exceeds a
  threshold chosen on arena_0's event frames to maximise touch F1 (what the
  event detector alone knows).

Run the workflow first, then from the repository root::

    .venv/bin/python benchmarks/demo_pair_behaviour.py --out results/benchmarks/demo_pair_behaviour.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def _f1(y: np.ndarray, p: np.ndarray) -> float:
    tp, fp, fn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def pair_truth(results: Path, demo: Path, video: str, max_distance: float):
    """``(touch (T, P) float NaN-unlabelled, event (T, P) bool, overlap (T, P))`` of a video."""
    from sipec_models.behaviour_data import pair_slot_labels
    from sipec_models.io.store import open_store
    from sipec_models.social import read_social_chunks

    store = open_store(results / video / f"{video}.zarr")
    T = int(store.attrs["n_frames"])
    social = sorted((results / video / "social").glob("chunk_*.zarr"))
    event, overlap, pairs = read_social_chunks(social, T)
    y, _ = pair_slot_labels(demo / video / "social.csv", store["com"][...].astype(float), pairs,
                            demo / video / "centroids.csv", behaviours=["touch"], max_distance=max_distance)
    return y[..., 0], event, overlap


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--results", type=Path, default=REPO / "results")
    ap.add_argument("--demo", type=Path, default=REPO / "resources/demo")
    ap.add_argument("--max-distance", type=float, default=10.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from sipec_models.behaviour_metrics import circular_shift_chance
    from sipec_models.tables import behaviour_calls, read_behaviour_chunks

    # Baseline threshold on the training video.
    y0, ev0, ov0 = pair_truth(args.results, args.demo, "arena_0", args.max_distance)
    ok0 = ev0 & np.isfinite(y0)
    grid = np.unique(np.round(ov0[ok0], 3))
    f1s = [_f1(y0[ok0] > 0.5, ov0[ok0] >= g) for g in grid]
    threshold = float(grid[int(np.argmax(f1s))])

    y1, ev1, ov1 = pair_truth(args.results, args.demo, "arena_1", args.max_distance)
    T = y1.shape[0]
    chunks = sorted((args.results / "arena_1" / "behave_pairs").glob("chunk_*.zarr"))
    probs, names, attrs = read_behaviour_chunks(chunks, T)
    calls = behaviour_calls(probs, bool(attrs["multilabel"]), dict(attrs.get("postprocess") or {}), 25.0)
    k = names.index("touch")
    ok = ev1 & np.isfinite(y1) & np.isfinite(probs).all(-1)
    # (pair, frame) order: each pair's samples in time order, for the per-pair circular shifts.
    okT = ok.T
    truth = (y1.T[okT] > 0.5)
    pred = calls[..., k].T[okT]
    base = ov1.T[okT] >= threshold
    pair_id = np.repeat(np.arange(okT.shape[0]), okT.shape[1])[okT.ravel()]

    def scores(p):
        tp = int((truth & p).sum())
        return {"f1": _f1(truth, p), "precision": tp / max(int(p.sum()), 1), "recall": tp / max(int(truth.sum()), 1),
                "accuracy": float((truth == p).mean())}

    chance = circular_shift_chance(truth[:, None].astype(int), pred[:, None].astype(int), video_ids=pair_id,
                                   score_fn=lambda a, b: _f1(a[:, 0] > 0, b[:, 0] > 0), n_shifts=50)
    out = {
        "test_video": "arena_1", "event_samples": int(ok.sum()), "touch_fraction": float(truth.mean()),
        "labelled_touch_frames_without_event": int(((y1 > 0.5) & ~ev1).sum()),
        "behavenet_pairs": scores(pred),
        "overlap_threshold": {"threshold": threshold, **scores(base)},
        "chance_f1": {"mean": chance["mean"], "std": chance["std"]},
        "names": names,
    }
    print(json.dumps(out, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
