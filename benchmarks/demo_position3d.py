"""SIPEC 3D position from one camera on the demo: 10-fold CV RMSE per axis and a held-out video.

The demo arena is a 420 x 420 mm floor with 60 mm walls, seen by one pinhole camera 520 mm above
the floor and tilted down (``sipec_models.demo``); each animal's body centre is 14 mm above the floor,
up to 38 mm when it rears. Labels: the rendered ``positions_3d.csv`` (X, Y, Z in mm) matched to the
tracks through ``centroids.csv``. Masks: the workflow's classical segmentation (merged-blob splits left
out of training, as in ``sipec train-position3d``).

Two protocols, each for SIPEC's regressor (Isomap, 6 components, then least squares on the Isomap
features plus 1/sqrt(s), s, x, y) and for the same least squares on the standardised mask features
without the embedding (``isomap.n_components=0``):

* ``cv``: 10-fold cross-validation over contiguous time blocks of both demo videos' frames
  (:func:`sipec_models.position3d.cross_validate`), RMSE per axis beside the mean-position baseline;
* ``held_out_video``: fitted on arena_0, RMSE on every annotated mask of arena_1.

Run after the workflow has tracked the demo (``make demo`` or ``snakemake``)::

    .venv/bin/python benchmarks/demo_position3d.py --out results/benchmarks/demo_position3d.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=REPO / "results")
    ap.add_argument("--demo", type=Path, default=REPO / "resources" / "demo")
    ap.add_argument("--videos", nargs="+", default=["arena_0", "arena_1"])
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "demo_position3d.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(REPO))
    from sipec_models.position3d import AXES, Position3DRegressor, cross_validate, position_samples
    from sipec_models.training.config import load_model_config, to_dict

    data = {}
    for v in args.videos:
        store = args.results / v / f"{v}.zarr"
        if not store.exists():
            raise SystemExit(f"{store}: not found; run the workflow on the demo first")
        data[v] = position_samples(store, args.demo / v / "positions_3d.csv", args.demo / v / "centroids.csv",
                                   max_distance=10)
    out = {"room": "420 x 420 mm floor, 60 mm walls; camera 520 mm above the floor; body centre 14-38 mm high",
           "unit": "mm", "n_masks": {v: int(len(d[0])) for v, d in data.items()}, "variants": {}}
    for name, overrides in (("sipec_isomap6", []), ("no_isomap", ["isomap.n_components=0"])):
        cfg = to_dict(load_model_config("position3d", overrides))
        feats = np.concatenate([d[0] for d in data.values()])
        targets = np.concatenate([d[1] for d in data.values()])
        keys = np.concatenate([i * 10 ** 9 + d[2] for i, d in enumerate(data.values())])
        cv = cross_validate(feats, targets, keys, cfg["isomap"], cfg["cv"]["folds"])
        first, second = args.videos[0], args.videos[1]
        model = Position3DRegressor(**cfg["isomap"]).fit(data[first][0], data[first][1])
        err = model.predict(data[second][0]) - data[second][1]
        base = data[second][1] - data[first][1].mean(0)
        held = {"train": first, "test": second,
                "rmse": dict(zip(AXES, np.sqrt(np.nanmean(err ** 2, 0)).tolist())),
                "rmse_mean_baseline": dict(zip(AXES, np.sqrt(np.mean(base ** 2, 0)).tolist()))}
        out["variants"][name] = {"overrides": overrides, "cv": cv, "held_out_video": held}
        print(f"{name:14s} 10-fold CV RMSE X/Y/Z " + " / ".join(f"{cv['rmse'][a]:.2f}" for a in AXES)
              + " mm (mean baseline " + " / ".join(f"{cv['rmse_mean_baseline'][a]:.2f}" for a in AXES)
              + f"); {first} -> {second}: " + " / ".join(f"{held['rmse'][a]:.2f}" for a in AXES)
              + " mm (baseline " + " / ".join(f"{held['rmse_mean_baseline'][a]:.2f}" for a in AXES) + ")")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
