"""3D position of each animal from one camera (SIPEC, Marks et al., Methods "3D position").

A single camera sees an animal further away as smaller and higher in the
image, and a rearing animal as nearer the camera. SIPEC turns each mask into
three numbers (its normalised size ``s``, and the normalised image position
``x``, ``y`` of its centre of mass), embeds ``(s, x, y, s*x, s*y, x*y)`` with
Isomap (6 components) and fits ordinary least squares from the Isomap
features plus ``1/sqrt(s)``, ``s``, ``x`` and ``y`` to annotated 3D
positions. :class:`Position3DRegressor` is that model (the Isomap step can be
switched off with ``isomap.n_components=0``, which regresses on the six mask
features and the same four extra terms directly).

Conventions: ``s`` = mask area / frame area, ``x`` = column / frame width,
``y`` = row / frame height (frame px, centre of mass of the mask). Targets
are world coordinates ``X, Y, Z`` in the unit of the label table (its
columns ``X_<unit>``, ``Y_<unit>``, ``Z_<unit>``); predictions come in the
same unit and the per-animal tables name their columns the same way.

Training data (:func:`position_samples`): a table of annotated 3D positions
``frame, animal, X_<unit>, Y_<unit>, Z_<unit>`` matched to the track slots
of a tracked video by position (a positions table ``frame, animal, x, y``
or ``x, y`` columns in the 3D table; :func:`~sipec_models.behaviour_data.match_to_slots`),
or to slot 0 when the video holds one animal. Masks from a split of merged
blobs are left out of training (their sizes are unreliable).

Evaluation (:func:`cross_validate`): k-fold cross-validation over
contiguous time blocks of the labelled frames (all animals of a frame in
the same fold), RMSE per axis against the annotated positions, beside the
RMSE of predicting the training mean (the chance level of a regression).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

AXES = ("X", "Y", "Z")


def mask_features(area: np.ndarray, com: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised mask size and position ``(N, 3)``: ``s`` = area / (width * height), ``x`` = col / width, ``y`` = row / height.

    Args:
        area: ``(N,)`` mask areas, px^2 (NaN: no mask).
        com: ``(N, 2)`` centres of mass ``(x, y)``, frame px.
        width, height: frame size, px.
    """
    area = np.asarray(area, np.float64).reshape(-1)
    com = np.asarray(com, np.float64).reshape(-1, 2)
    return np.stack([area / float(width * height), com[:, 0] / width, com[:, 1] / height], axis=1)


def _embedding_input(f: np.ndarray) -> np.ndarray:
    """``(N, 3)`` ``(s, x, y)`` -> ``(N, 6)`` ``(s, x, y, s*x, s*y, x*y)`` (SIPEC's Isomap input)."""
    s, x, y = f.T
    return np.stack([s, x, y, s * x, s * y, x * y], axis=1)


def _extra_terms(f: np.ndarray) -> np.ndarray:
    """``(N, 3)`` -> ``(N, 4)`` ``(1/sqrt(s), s, x, y)``: the terms SIPEC regresses on beside the Isomap features."""
    s, x, y = f.T
    return np.stack([1.0 / np.sqrt(s), s, x, y], axis=1)


class Position3DRegressor:
    """SIPEC's monocular 3D regressor: Isomap of mask features, then ordinary least squares.

    Args:
        n_components: Isomap components (SIPEC: 6); 0 regresses on the
            standardised six mask features instead of their embedding.
        n_neighbors: neighbours of the Isomap graph.
        max_fit_samples: the Isomap embedding is fitted on at most this many
            training masks (evenly spaced in the training order; its cost
            grows with the square of this number); the least-squares step
            uses every training mask.
    """

    def __init__(self, n_components: int = 6, n_neighbors: int = 10, max_fit_samples: int = 3000):
        if n_components < 0 or n_neighbors < 1 or max_fit_samples < 2:
            raise ValueError(f"invalid Position3DRegressor settings: n_components={n_components}, "
                             f"n_neighbors={n_neighbors}, max_fit_samples={max_fit_samples}")
        self.n_components = int(n_components)
        self.n_neighbors = int(n_neighbors)
        self.max_fit_samples = int(max_fit_samples)

    def _design(self, f: np.ndarray) -> np.ndarray:
        z = self.scaler_.transform(_embedding_input(f))
        emb = self.isomap_.transform(z) if self.isomap_ is not None else z
        return np.concatenate([emb, _extra_terms(f)], axis=1)

    def fit(self, features: np.ndarray, targets: np.ndarray) -> "Position3DRegressor":
        """Fit on ``features (N, 3)`` (:func:`mask_features`) and ``targets (N, 3)`` (X, Y, Z, any unit)."""
        import warnings

        from sklearn.linear_model import LinearRegression
        from sklearn.manifold import Isomap
        from sklearn.preprocessing import StandardScaler

        features = np.asarray(features, np.float64)
        targets = np.asarray(targets, np.float64)
        ok = np.isfinite(features).all(1) & np.isfinite(targets).all(1) & (features[:, 0] > 0)
        features, targets = features[ok], targets[ok]
        need = max(self.n_neighbors + 2, self.n_components + 2, 12)
        if len(features) < need:
            raise ValueError(f"3D regression needs at least {need} annotated masks, got {len(features)}")
        self.scaler_ = StandardScaler().fit(_embedding_input(features))
        self.isomap_ = None
        if self.n_components:
            pick = np.unique(np.linspace(0, len(features) - 1, min(len(features), self.max_fit_samples)).astype(int))
            with warnings.catch_warnings():
                # A disconnected neighbour graph is completed by sklearn; the warning says only that it is slow.
                warnings.filterwarnings("ignore", message=".*connected components.*")
                warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
                warnings.filterwarnings("ignore", message=".*sparsity structure.*")
                self.isomap_ = Isomap(n_components=self.n_components,
                                      n_neighbors=min(self.n_neighbors, len(pick) - 1)).fit(
                    self.scaler_.transform(_embedding_input(features[pick])))
        self.ols_ = LinearRegression().fit(self._design(features), targets)
        self.n_train_ = int(len(features))
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``(N, 3)`` mask features -> ``(N, 3)`` positions in the training unit (NaN where a feature is missing)."""
        features = np.asarray(features, np.float64).reshape(-1, 3)
        out = np.full((len(features), 3), np.nan)
        ok = np.isfinite(features).all(1) & (features[:, 0] > 0)
        if ok.any():
            out[ok] = self.ols_.predict(self._design(features[ok]))
        return out


# --------------------------------------------------------------------------- labels


def read_positions_3d(path: str | os.PathLike) -> tuple[pd.DataFrame, str]:
    """A table of annotated 3D positions -> ``(table with frame, animal, X, Y, Z [, x, y], unit)``.

    The file (CSV or TSV) has columns ``frame``, ``X_<unit>``, ``Y_<unit>``,
    ``Z_<unit>`` (one unit for all three, e.g. ``X_mm``), optionally
    ``animal`` (needed with several animals) and ``x, y`` (the animal's image
    position, frame px, to match it to a track).

    Raises:
        ValueError: naming the file: unreadable, a missing column, mixed units, non-numeric values.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path, sep=None, engine="python")
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ValueError(f"{path}: cannot read the 3D position table ({exc})") from None
    units = {}
    for axis in AXES:
        cols = [c for c in table.columns if re.fullmatch(rf"{axis}_(\w+)", str(c))]
        if len(cols) != 1:
            raise ValueError(f"{path}: needs one column {axis}_<unit> (e.g. {axis}_mm) for the {axis} coordinate; "
                             f"has {', '.join(map(str, table.columns))}")
        units[axis] = cols[0].split("_", 1)[1]
    if len(set(units.values())) != 1:
        raise ValueError(f"{path}: X, Y and Z must share one unit, got {units}")
    if "frame" not in table.columns:
        raise ValueError(f"{path}: the 3D position table lacks a frame column")
    unit = units["X"]
    out = pd.DataFrame({"frame": table["frame"]})
    out["animal"] = table["animal"].astype(str) if "animal" in table.columns else ""
    for axis in AXES:
        out[axis] = pd.to_numeric(table[f"{axis}_{unit}"], errors="coerce")
    for c in ("x", "y"):
        if c in table.columns:
            out[c] = pd.to_numeric(table[c], errors="coerce")
    bad = out[list(AXES)].isna().any(axis=1) | pd.to_numeric(out["frame"], errors="coerce").isna()
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} row(s) with a missing or non-numeric frame or coordinate "
                         f"(first: row {int(np.flatnonzero(bad.to_numpy())[0]) + 2} of the file)")
    out["frame"] = out["frame"].astype(np.int64)
    return out, unit


def position_samples(store: str | os.PathLike, labels: str | os.PathLike, positions=None,
                     frames: Sequence[int] | None = None, max_distance: float = 20.0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """Annotated masks of one tracked video.

    Args:
        store: the consolidated video store (``com``, ``area``, ``flags`` per frame and slot; attrs ``width``, ``height``).
        labels: the 3D position table (:func:`read_positions_3d`).
        positions: a positions table ``frame, animal, x, y`` (frame px) of the
            labelled animals, to match them to tracks; default: ``x, y``
            columns of ``labels``. Not needed with one animal.
        frames: ``[start, stop)``: only labels of these frames are used.
        max_distance: px between a labelled animal and its track.

    Returns:
        ``(features (N, 3), targets (N, 3), frame (N,), unit)``: :func:`mask_features`
        of each matched mask, its annotated position and its frame.
    """
    from sipec_models.behaviour_data import match_to_slots
    from sipec_models.io.store import open_store
    from sipec_models.segmentation.flags import MERGED_SPLIT

    path = Path(labels)
    table, unit = read_positions_3d(path)
    group = open_store(store)
    com, area, flags = group["com"][...], group["area"][...], group["flags"][...]
    T, A = area.shape
    if frames is not None:
        table = table[(table["frame"] >= frames[0]) & (table["frame"] < frames[1])]
    outside = (table["frame"] < 0) | (table["frame"] >= T)
    if outside.any():
        raise ValueError(f"{path}: labels frame {int(table['frame'][outside].iloc[0])} but {store} has {T} frames")
    if table.empty:
        raise ValueError(f"{path}: no 3D positions in the frames used")
    f = table["frame"].to_numpy()
    if A == 1 and table["animal"].nunique() <= 1 and positions is None:
        rows, t_idx, s_idx = np.arange(len(f)), f, np.zeros(len(f), np.int64)
    else:
        # Without a positions table, match_to_slots reads x, y from the label file itself.
        rows, t_idx, s_idx = match_to_slots(path, f, table["animal"].to_numpy(), com, positions, max_distance)
    keep = np.isfinite(area[t_idx, s_idx]) & ((flags[t_idx, s_idx] & MERGED_SPLIT) == 0)
    rows, t_idx, s_idx = rows[keep], t_idx[keep], s_idx[keep]
    feats = mask_features(area[t_idx, s_idx], com[t_idx, s_idx], int(group.attrs["width"]),
                          int(group.attrs["height"]))
    targets = table[list(AXES)].to_numpy(np.float64)[rows]
    log.info("%s: %d annotated masks from %s", path, len(rows), store)
    return feats, targets, t_idx, unit


# --------------------------------------------------------------------------- evaluation


def cross_validate(features: np.ndarray, targets: np.ndarray, groups: np.ndarray, cfg: Mapping[str, Any],
                   folds: int = 10) -> dict:
    """k-fold RMSE per axis over contiguous blocks of ``groups`` (time-ordered frame keys; a group never splits).

    Args:
        features, targets: ``(N, 3)`` as for :meth:`Position3DRegressor.fit`.
        groups: ``(N,)`` sortable keys (e.g. ``video_index * 1e6 + frame``); the
            sorted unique keys are cut into ``folds`` contiguous blocks.
        cfg: the ``isomap`` section (``n_components``, ``n_neighbors``, ``max_fit_samples``).

    Returns:
        ``{"rmse": {X, Y, Z}, "rmse_mean_baseline": {X, Y, Z}, "rmse_per_fold": [...], "n": N, "folds": k}``;
        the mean baseline predicts each test mask as the training folds' mean position.
    """
    from sipec_models.evaluation import time_block_folds

    keys = np.unique(groups)
    blocks = time_block_folds(len(keys), folds)
    err, base, per_fold = [], [], []
    for block in blocks:
        test = np.isin(groups, keys[block])
        model = Position3DRegressor(**dict(cfg)).fit(features[~test], targets[~test])
        e = model.predict(features[test]) - targets[test]
        b = targets[test] - targets[~test].mean(0)
        err.append(e)
        base.append(b)
        per_fold.append(dict(zip(AXES, np.sqrt(np.nanmean(e ** 2, axis=0)).round(4).tolist())))
    e, b = np.concatenate(err), np.concatenate(base)
    return {
        "rmse": dict(zip(AXES, np.sqrt(np.nanmean(e ** 2, axis=0)).tolist())),
        "rmse_mean_baseline": dict(zip(AXES, np.sqrt(np.mean(b ** 2, axis=0)).tolist())),
        "rmse_per_fold": per_fold,
        "n": int(len(features)),
        "folds": int(folds),
    }


# --------------------------------------------------------------------------- entry points


def run_train_position3d(sources: Sequence[Mapping[str, Any]], overrides: Sequence[str] = (), out=None,
                         metrics=None, max_distance: float = 20.0) -> dict:
    """Fit the 3D regressor on annotated masks of tracked videos, cross-validate it, and save it.

    Args:
        sources: ``[{"store", "labels", "positions"?, "frames"?}]``, one per annotated video.
        overrides: Hydra overrides of ``config/models/position3d.yaml``.
        out: the model file (joblib) to write, atomically.
        metrics: JSON with the cross-validation result.
        max_distance: px between a labelled animal and its track.

    Returns:
        The cross-validation result (:func:`cross_validate`) plus ``unit`` and ``config``.
    """
    import json

    import joblib

    from sipec_models.training.config import load_model_config, to_dict

    cfg = to_dict(load_model_config("position3d", overrides))
    feats, targets, keys, units = [], [], [], set()
    for i, src in enumerate(sources):
        f, y, t, unit = position_samples(src["store"], src["labels"], src.get("positions"), src.get("frames"),
                                         max_distance)
        feats.append(f)
        targets.append(y)
        keys.append(i * 10 ** 9 + t)
        units.add(unit)
    if len(units) != 1:
        raise ValueError(f"3D position labels in different units ({', '.join(sorted(units))}); use one unit")
    unit = units.pop()
    feats, targets, keys = np.concatenate(feats), np.concatenate(targets), np.concatenate(keys)
    cv = cross_validate(feats, targets, keys, cfg["isomap"], cfg["cv"]["folds"])
    log.info("3D position, %d-fold CV over time blocks (%d masks): RMSE %s %s (mean baseline %s)", cv["folds"],
             cv["n"], " / ".join(f"{a} {v:.2f}" for a, v in cv["rmse"].items()), unit,
             " / ".join(f"{v:.2f}" for v in cv["rmse_mean_baseline"].values()))
    model = Position3DRegressor(**cfg["isomap"]).fit(feats, targets)
    result = {**cv, "unit": unit, "config": cfg}
    if out is not None:
        _atomic(Path(out), lambda p: joblib.dump({"model": model, "unit": unit, "config": cfg, "cv": cv}, p))
    if metrics is not None:
        _atomic(Path(metrics), lambda p: Path(p).write_text(json.dumps(result, indent=2)))
    return result


def load_regressor(path: str | os.PathLike) -> tuple[Position3DRegressor, str]:
    """A saved regressor and its unit (:func:`run_train_position3d`)."""
    import joblib

    try:
        saved = joblib.load(path)
        return saved["model"], saved["unit"]
    except Exception as exc:  # noqa: BLE001 - a wrong or damaged file gets one clear message
        raise ValueError(f"{path}: not a 3D position model written by `sipec train-position3d` ({exc})") from None


def position_columns(table: pd.DataFrame, model: Position3DRegressor, unit: str, width: int,
                     height: int) -> dict[str, np.ndarray]:
    """``X_<unit>``, ``Y_<unit>``, ``Z_<unit>`` of every row of a per-animal table (its ``area``, ``x``, ``y``)."""
    xyz = model.predict(mask_features(table["area"].to_numpy(), table[["x", "y"]].to_numpy(), width, height))
    return {f"{a}_{unit}": xyz[:, k] for k, a in enumerate(AXES)}


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
