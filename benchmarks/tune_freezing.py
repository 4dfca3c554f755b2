"""Ray Tune sweep of the pose classifier on BehaviorDepot's freezing demo: the default config against the sweep's best.

Data: ``../shared/data/behaviordepot_freezing`` (one mouse, DeepLabCut tracks
of 8 keypoints, 6000 frames at 50 fps, 32 px/cm, human freezing labels;
loaded as :mod:`freezing_pose` does). Two classes: ``background`` (not
freezing) and ``freezing``.

Protocol (time blocks, nothing shuffled):

* test block: the last ``--test-fraction`` of the video (default 20 %:
  frames 4800-6000, 4 freezing bouts); never seen by the sweep or by any
  choice below.
* training part: the frames before it. The sweep (:func:`sipec_models.tuning.run_sweep`,
  the ``tune`` section of ``config/models/pose_classifier.yaml``: random
  search over learning rate, weight decay, focal gamma, class weights,
  dropout, input dropout, hidden layers and window half-width, with ASHA)
  trains each trial on the training part less its validation block (the
  last 20 % of the training part: frames 3840-4800, 5 bouts) and scores it
  there: best-threshold freezing F1 (``val_f1_fg``). Every trial uses
  seed 0; trial 0 is the default config.
* the default config and the sweep's best are then trained with the full
  protocol (early stopping on the same validation block with the config's
  own epoch limit, refit on the whole training part, threshold and minimum
  bout from cross-fitted predictions of the training part) with seed 0 and
  ``--seeds - 1`` further seeds the sweep never used, and scored on the
  validation block (``val``: best-threshold freezing F1 of the network
  before the refit, the sweep's metric) and on the test block (``test``:
  freezing F1, precision and recall of the postprocessed calls; AUROC of the
  probabilities). ``chance``: each model's test calls scored against the
  test labels circularly shifted in time (mean of ``--shifts`` shifts,
  :func:`sipec_models.behaviour_metrics.circular_shift_chance`).

Run from the repository root (about 8 min on one CPU thread: sweep 2 min, final trainings 6 min)::

    .venv/bin/python benchmarks/tune_freezing.py --num-samples 20 --seeds 5 --threads 1 \
        --out results/benchmarks/tune_freezing.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from freezing_pose import DATA, FPS, PX_PER_CM, frame_scores, load_data  # noqa: E402

from sipec_models.behaviour_metrics import circular_shift_chance  # noqa: E402
from sipec_models.training.config import load_model_config  # noqa: E402

NAMES = ["background", "freezing"]
log = logging.getLogger("tune_freezing")


def evaluate(points, scores, nodes, labels, n_train: int, overrides: list[str], seed: int, n_shifts: int) -> dict:
    """Train with the full protocol on frames ``[0, n_train)``; validation-block and test-block scores."""
    from sklearn.metrics import roc_auc_score

    from sipec_models.training.pose_classifier import (
        features_from_keypoints, postprocess_probs, predict_proba, train_pose_classifier,
    )

    cfg = load_model_config("pose_classifier", [*overrides, f"seed={seed}"])
    f_tr, fnames = features_from_keypoints(points[:n_train], FPS, PX_PER_CM, cfg, nodes, scores[:n_train])
    f_te, _ = features_from_keypoints(points[n_train:], FPS, PX_PER_CM, cfg, nodes, scores[n_train:])
    t0 = time.perf_counter()
    model = train_pose_classifier(f_tr, labels[:n_train], cfg, fps=FPS, names=NAMES, feature_names=fnames)
    probs = predict_proba(model, f_te)  # windows padded at the test block's own edges
    calls = postprocess_probs(model, probs)[:, 1]
    y = labels[n_train:].astype(bool)
    test = frame_scores(y, calls)
    ch = circular_shift_chance(y[:, None].astype(int), calls[:, None].astype(int), n_shifts=n_shifts, seed=seed,
                               score_fn=lambda a, b: frame_scores(a[:, 0].astype(bool), b[:, 0])["f1"])
    return {"seed": seed, "val_f1": model.val_scores[1], "test_f1": test["f1"], "test_precision": test["precision"],
            "test_recall": test["recall"], "test_auroc": float(roc_auc_score(y, probs[:, 1])),
            "chance_f1": ch["mean"], "best_epoch": model.best_epoch, "epochs": len(model.history),
            "threshold": float(model.thresholds[1]), "min_bout_frames": int(model.min_frames[1]),
            "seconds": round(time.perf_counter() - t0, 1)}


def _stats(rows: list[dict], key: str) -> dict:
    v = np.array([r[key] for r in rows], float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
            "values": [round(float(x), 4) for x in v]}


def run(data: Path, num_samples: int, seeds: int, threads: int, test_fraction: float, base: list[str],
        sweep_dir: Path, n_shifts: int) -> dict:
    from sipec_models.tuning import PoseSequences, read_overrides, run_sweep

    points, scores, nodes, labels = load_data(data)
    T = len(labels)
    n_train = T - int(round(test_fraction * T))
    log.info("%d frames: training part 0-%d (%d freezing), test block %d-%d (%d freezing)", T, n_train,
             int(labels[:n_train].sum()), n_train, T, int(labels[n_train:].sum()))
    seqs = PoseSequences([points[:n_train]], [labels[:n_train]], NAMES, FPS, PX_PER_CM, nodes, [scores[:n_train]])
    t0 = time.perf_counter()
    table = run_sweep("pose_classifier", seqs, sweep_dir, base, num_samples=num_samples, threads=threads)
    sweep_s = time.perf_counter() - t0
    best = read_overrides(sweep_dir / "best_overrides.yaml")
    metric = "val_f1_fg"
    ok = table[table["status"] == "ok"]
    best_row = ok.loc[ok[metric].idxmax()]
    configs = {"default": list(base), "best": [*base, *best]}
    results: dict[str, list[dict]] = {}
    for name, over in configs.items():
        results[name] = []
        for s in range(seeds):
            r = evaluate(points, scores, nodes, labels, n_train, over, s, n_shifts)
            results[name].append(r)
            log.info("%s seed %d: val F1 %.3f, test F1 %.3f (chance %.3f), AUROC %.3f; %s s", name, s, r["val_f1"],
                     r["test_f1"], r["chance_f1"], r["test_auroc"], r["seconds"])
    summary = {name: {k: _stats(rows, k) for k in ("val_f1", "test_f1", "test_precision", "test_recall",
                                                    "test_auroc", "chance_f1")}
               for name, rows in results.items()}
    return {
        "data": str(data), "n_frames": T, "fps": FPS, "px_per_cm": PX_PER_CM,
        "split": {"train": [0, n_train], "validation": [n_train - int(round(0.2 * n_train)), n_train],
                  "test": [n_train, T]},
        "base_overrides": base,
        "sweep": {"num_samples": int(len(table)), "threads": threads, "seconds": round(sweep_s, 1),
                  "metric": metric, "default_trial": float(table.loc[table["trial"] == 0, metric].iloc[0]),
                  "best_trial": int(best_row["trial"]), "best_trial_score": float(best_row[metric]),
                  "best_overrides": best, "ended": table["ended"].value_counts().to_dict(),
                  "trials": json.loads(table.drop(columns=["trial_id"]).to_json(orient="records"))},
        "evaluation_seeds": list(range(seeds)), "per_seed": results, "summary": summary,
    }


def table_text(r: dict) -> str:
    sw = r["sweep"]
    lines = [f"sweep: {sw['num_samples']} trials in {sw['seconds']:.0f} s ({sw['ended']}); validation-block "
             f"{sw['metric']} (seed 0, <= tune.max_epochs): default (trial 0) {sw['default_trial']:.3f}, best "
             f"(trial {sw['best_trial']}) {sw['best_trial_score']:.3f}",
             f"best overrides: {' '.join(sw['best_overrides']) or '(the default configuration)'}",
             f"{'config':<8} {'val F1':>15} {'test F1':>15} {'precision':>15} {'recall':>15} {'AUROC':>15} "
             f"{'chance F1':>15}"]
    for name, s in r["summary"].items():
        cell = lambda k: (f"{s[k]['mean']:.3f}±{s[k]['sd']:.3f}" if s[k]["sd"] is not None  # noqa: E731
                          else f"{s[k]['mean']:.3f}")
        lines.append(f"{name:<8} " + " ".join(f"{cell(k):>15}" for k in ("val_f1", "test_f1", "test_precision",
                                                                          "test_recall", "test_auroc", "chance_f1")))
    for name, s in r["summary"].items():
        lines.append(f"{name} per seed {r['evaluation_seeds']}: val {s['val_f1']['values']}, test "
                     f"{s['test_f1']['values']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--num-samples", type=int, default=16, help="trials of the sweep (the default config included)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds of the final default-vs-best comparison (0, 1, ..)")
    ap.add_argument("--threads", type=int, default=1, help="CPU cores of the sweep (and torch threads afterwards)")
    ap.add_argument("--test-fraction", type=float, default=0.2, help="held-out test block at the end of the video")
    ap.add_argument("--override", action="append", default=[],
                    help="base Hydra override of pose_classifier, in every trial and both configs (repeatable)")
    ap.add_argument("--shifts", type=int, default=20, help="circular shifts of the chance level")
    ap.add_argument("--sweep-dir", type=Path, default=Path("results/benchmarks/tune_freezing"),
                    help="the sweep's best_overrides.yaml, trials.csv and Ray folder")
    ap.add_argument("--out", type=Path, help="write everything as JSON here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    import pytorch_lightning  # noqa: F401  (sets its loggers' levels on import; quieten them afterwards)

    for name in ("sipec_models.training.pose_classifier", "pytorch_lightning", "lightning", "lightning_fabric",
                 "pytorch_lightning.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    base = list(args.override)
    result = run(args.data, args.num_samples, args.seeds, args.threads, args.test_fraction, base, args.sweep_dir,
                 args.shifts)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(table_text(result))
    print(f"total {result['seconds']:.0f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
