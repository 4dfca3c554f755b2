"""Ray Tune sweeps of a model's Hydra config: random search with asynchronous successive halving (ASHA).

DeepEthogram tunes its models by random search over learning rate,
regularisation, focal-loss and positive-weight settings, dropout and layer
sizes; this module does the same for any model registered in
:data:`TUNABLES`: the pose classifier; BehaveNet's temporal stage on its frozen
frame-network features; DeepEthogram's sequence model on the features of its
flow generator and feature extractors (as DeepEthogram tunes its sequence
models on cached features).

The sweep is described by the ``tune`` section of the model's config
(``config/models/<model>.yaml``)::

    tune:
      metric: val_f1_fg        # a metric the model's trainable reports every epoch
      mode: max
      num_samples: 16          # trials, the default configuration included
      include_default: true    # trial 0: the config as it is (the baseline)
      max_epochs: 40           # epochs per trial at most (ASHA's max_t)
      grace_period: 5          # ASHA: epochs before a trial can be stopped
      reduction_factor: 2      # ASHA: the best 1/reduction_factor go on at each rung
      seed: 0                  # seed of the random search
      cpus_per_trial: 1
      gpus_per_trial: 0
      space:
        train.lr: {loguniform: [1.0e-4, 1.0e-2]}
        model.dropout: {uniform: [0.1, 0.7]}
        train.gamma: {choice: [0.0, 1.0, 2.0, 3.0]}
        features.half_width: {randint: [5, 25]}   # both ends included

Each key of ``space`` must name an entry of the config (a typo stops the
sweep with the key and the closest existing ones). Every trial composes the
config with the sweep's base overrides, then its sampled values as Hydra
override strings (floats rounded to 4 significant digits, so that what is
written is exactly what was trained), then fixed settings of the model's
trainable (epochs capped at ``max_epochs``, one torch thread per CPU, no
refit); every trial trains with the config's own ``seed``. The trainable
reports the validation metric after every epoch; ASHA stops trials that
fall behind at its rungs. A trial's score is the best value of the metric
over its epochs (the models restore their best epoch's weights).

Outputs of :func:`run_sweep` in ``out_dir``:

* ``best_overrides.yaml``: a YAML list of Hydra override strings, the
  sampled values of the best trial (ties go to the earlier trial, so the
  default configuration is kept unless a trial beats it); use them after
  the sweep's base overrides, e.g. in ``behaviour.overrides`` of
  ``config/config.yaml`` or as ``--overrides`` of ``sipec train-*``.
* ``trials.csv``: one row per trial: its overrides and sampled values, the
  best and last metric, epochs run, how it ended (``max_epochs``,
  ``early_stopping`` by the model's patience, ``asha``, ``error``).
* ``ray/<model>/``: Ray Tune's own experiment folder (per-trial results).

Ray runs inside the calling process's job: ``ray.init(num_cpus=threads)``
on the local machine (no dashboard, workers' output not forwarded); the
GPUs Ray sees are those of the job (``CUDA_VISIBLE_DEVICES``, as SLURM sets
for an allocation) unless ``gpus`` is given.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml
from omegaconf import DictConfig, ListConfig

from sipec_models.training.config import load_model_config, to_dict

log = logging.getLogger(__name__)

#: Distributions of a search-space entry and their number of arguments (None: any number >= 1).
KINDS = {"uniform": 2, "loguniform": 2, "randint": 2, "choice": None}
#: Settings of a ``tune`` section and their defaults (``space`` has none).
DEFAULTS = {"metric": None, "mode": "max", "num_samples": 8, "include_default": True, "max_epochs": 20,
            "grace_period": 2, "reduction_factor": 2, "seed": 0, "cpus_per_trial": 1, "gpus_per_trial": 0}


# --------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class Dimension:
    """One entry of a search space: a dotted config key and its distribution."""

    key: str
    kind: str
    args: tuple

    def sampler(self):
        """The Ray Tune search-space object (choices as their override value strings: Tune takes lists in a
        configuration apart)."""
        from ray import tune

        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "randint":
            return tune.randint(self.args[0], self.args[1] + 1)  # tune's upper bound is exclusive
        return tune.choice([_format_value(v) for v in self.args])

    def encode(self, value: Any) -> Any:
        """A config value as this dimension's Tune value (e.g. the default configuration's)."""
        return _format_value(value) if self.kind == "choice" else value

    def override(self, value: Any) -> str:
        """The Hydra override string of a Tune value of this dimension."""
        return f"{self.key}={value}" if self.kind == "choice" else format_override(self.key, value)


def _config_keys(node: Any, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of a plain nested dict (sections and leaves) -> its value."""
    out: dict[str, Any] = {}
    if isinstance(node, Mapping):
        for k, v in node.items():
            key = f"{prefix}{k}"
            out[key] = v
            out.update(_config_keys(v, key + "."))
    return out


def parse_space(cfg: DictConfig | Mapping[str, Any], space: Mapping[str, Any] | None = None,
                what: str = "tune.space") -> dict[str, Dimension]:
    """The search space of a model config, checked against its keys.

    Args:
        cfg: the composed model config.
        space: the space (default: ``cfg['tune']['space']``): dotted key ->
            ``{uniform | loguniform: [low, high]}``, ``{randint: [low, high]}``
            (integers, both ends included) or ``{choice: [values]}``.
        what: where the space comes from, for messages.

    Returns:
        Dotted key -> :class:`Dimension`, in the space's order.

    Raises:
        ValueError: naming the key: not an entry of the config (with the
            closest existing keys), a whole section, the ``tune`` section
            itself, an unknown distribution, wrong bounds.
    """
    plain = to_dict(cfg) if not isinstance(cfg, dict) else cfg
    if space is None:
        space = (plain.get("tune") or {}).get("space")
    if not space:
        raise ValueError(f"{what}: the search space is empty")
    if not isinstance(space, Mapping):
        raise ValueError(f"{what}: must map dotted config keys to distributions, got {type(space).__name__}")
    keys = {k: v for k, v in _config_keys({k: v for k, v in plain.items() if k != "tune"}).items()}
    out: dict[str, Dimension] = {}
    for key, spec in space.items():
        key = str(key)
        if key == "tune" or key.startswith("tune."):
            raise ValueError(f"{what}: {key!r} is part of the sweep's own settings, not of the model")
        if key not in keys:
            close = difflib.get_close_matches(key, list(keys), n=3, cutoff=0.6)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ValueError(f"{what}: {key!r} is not a key of the model config{hint}")
        if isinstance(keys[key], Mapping):
            raise ValueError(f"{what}: {key!r} is a section of the model config; name one of its entries")
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise ValueError(f"{what}.{key}: expected one of {{{' | '.join(KINDS)}: [...]}}, got {spec!r}")
        kind, args = next(iter(spec.items()))
        if kind not in KINDS:
            close = difflib.get_close_matches(str(kind), list(KINDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{what}.{key}: unknown distribution {kind!r}{hint}; use one of {', '.join(KINDS)}")
        if not isinstance(args, (list, tuple)) or not args:
            raise ValueError(f"{what}.{key}: {kind} needs a list of values, got {args!r}")
        n = KINDS[kind]
        if n is not None:
            if len(args) != n or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
                raise ValueError(f"{what}.{key}: {kind} needs [low, high] numbers, got {list(args)!r}")
            lo, hi = args
            if not lo < hi if kind != "randint" else not lo <= hi:
                raise ValueError(f"{what}.{key}: {kind} needs low < high, got {list(args)!r}")
            if kind == "loguniform" and lo <= 0:
                raise ValueError(f"{what}.{key}: loguniform needs low > 0, got {list(args)!r}")
            if kind == "randint" and not (float(lo).is_integer() and float(hi).is_integer()):
                raise ValueError(f"{what}.{key}: randint needs integer bounds, got {list(args)!r}")
            args = (int(lo), int(hi)) if kind == "randint" else (float(lo), float(hi))
        out[key] = Dimension(key, str(kind), tuple(args))
    return out


def _format_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        s = f"{float(v):.4g}"
        return s if any(c in s for c in ".en") else s + ".0"  # stays a float for Hydra
    if isinstance(v, (list, tuple, ListConfig)):
        return "[" + ",".join(_format_value(x) for x in v) + "]"
    if isinstance(v, str):
        plain = v and all(c.isalnum() or c in "_-./" for c in v) and v.lower() not in ("null", "true", "false")
        return v if plain else "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    raise ValueError(f"cannot write {v!r} as a Hydra override value")


def format_override(key: str, value: Any) -> str:
    """A Hydra override string ``key=value`` (floats to 4 significant digits, lists as ``[a,b]``)."""
    return f"{key}={_format_value(value)}"


def tune_settings(cfg: DictConfig | Mapping[str, Any], metrics: Sequence[str] = (), **given: Any) -> dict[str, Any]:
    """The ``tune`` section's settings with defaults, ``given`` values (not None) winning; checked.

    Raises:
        ValueError: naming ``tune.<setting>``.
    """
    plain = to_dict(cfg) if not isinstance(cfg, dict) else cfg
    section = dict(plain.get("tune") or {})
    unknown = set(section) - set(DEFAULTS) - {"space"}
    if unknown:
        raise ValueError(f"tune: unknown setting(s) {', '.join(sorted(unknown))}; known: "
                         f"{', '.join([*DEFAULTS, 'space'])}")
    s = {**DEFAULTS, **{k: v for k, v in section.items() if k != "space"},
         **{k: v for k, v in given.items() if v is not None}}
    if s["metric"] is None:
        s["metric"] = metrics[0] if metrics else None
    if metrics and s["metric"] not in metrics:
        raise ValueError(f"tune.metric: {s['metric']!r} is not reported by this model; use one of {', '.join(metrics)}")
    if s["mode"] not in ("max", "min"):
        raise ValueError(f"tune.mode must be max or min, got {s['mode']!r}")
    for k in ("num_samples", "max_epochs", "grace_period", "cpus_per_trial"):
        if not isinstance(s[k], int) or isinstance(s[k], bool) or s[k] < 1:
            raise ValueError(f"tune.{k} must be an integer >= 1, got {s[k]!r}")
    if s["grace_period"] > s["max_epochs"]:
        raise ValueError(f"tune.grace_period ({s['grace_period']}) exceeds tune.max_epochs ({s['max_epochs']})")
    if not isinstance(s["reduction_factor"], (int, float)) or s["reduction_factor"] <= 1:
        raise ValueError(f"tune.reduction_factor must be > 1, got {s['reduction_factor']!r}")
    if not isinstance(s["gpus_per_trial"], (int, float)) or s["gpus_per_trial"] < 0:
        raise ValueError(f"tune.gpus_per_trial must be >= 0, got {s['gpus_per_trial']!r}")
    s["seed"] = int(s["seed"])
    s["include_default"] = bool(s["include_default"])
    return s


# --------------------------------------------------------------------------- trainables


@dataclass(frozen=True)
class Tunable:
    """How to sweep one model.

    Attributes:
        config: the model config name (``config/models/<config>.yaml``).
        train: ``train(cfg, data, report)``: trains the model of the composed
            config on ``data``, calling ``report(metrics)`` after every
            epoch with a dict holding at least the metrics below, ``epoch``
            (1-based) and ``stop`` (True when the model's own early stopping
            ends training after this epoch).
        metrics: metrics ``report`` receives (the first is the default of ``tune.metric``).
        fixed: ``fixed(settings) -> overrides`` applied after the sampled
            values in every trial (epoch cap, threads, no refit, ...).
        load: ``load(sources, behaviours, max_distance, overrides) -> data``:
            the training data from the label sources ``sipec train-*`` takes
            and the sweep's base overrides (what ``sipec tune`` calls).
        keys: prefixes of the config keys the search space may hold (empty: any key).
    """

    config: str
    train: Callable[[DictConfig, Any, Callable[[dict], None]], None]
    metrics: tuple[str, ...]
    fixed: Callable[[Mapping[str, Any]], list[str]]
    load: Callable[[Sequence[Mapping[str, Any]], Sequence[str] | None, float, Sequence[str]], Any]
    keys: tuple[str, ...] = ()


@dataclass
class PoseSequences:
    """Labelled keypoint sequences of single animals: the pose classifier's raw training data.

    The features are computed in each trial from the trial's config, so
    ``features.*`` keys can be part of the search space.

    Attributes:
        points: per sequence ``(T_i, K, 2)`` keypoints, image px (NaN missing).
        labels: per sequence ``(T_i,)`` int classes (-1: unlabelled) or
            ``(T_i, C)`` 0/1 (NaN: unlabelled; exclusive behaviours become
            classes, as ``sipec train-pose-classifier`` does, unless
            ``train.multilabel``).
        names: the ``C`` behaviours.
        fps: frames per second (one number, or one per sequence); the first is the training frame rate.
        px_per_cm: image px per cm (one number, or one per sequence).
        node_names: the ``K`` keypoint names (one list, or one per sequence).
        scores: optional per sequence ``(T_i, K)`` detection likelihoods.
    """

    points: list[np.ndarray]
    labels: list[np.ndarray]
    names: list[str]
    fps: float | list[float]
    px_per_cm: float | list[float]
    node_names: list[str] | list[list[str]] | None = None
    scores: list[np.ndarray] | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    def _per(self, value, i):
        return value[i] if isinstance(value, (list, tuple)) else value

    def arrays(self, cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
        """The arrays ``train_pose_classifier`` takes, with the features of ``cfg``: frames whose features
        are finite and that are labelled, each run of such frames its own sequence (``video_ids``)."""
        from sipec_models.behaviour_data import exclusive_targets, slot_sequences
        from sipec_models.training.pose_classifier import features_from_keypoints

        c = to_dict(cfg) if not isinstance(cfg, dict) else cfg
        key = json.dumps(c["features"], sort_keys=True, default=str) + str(c["train"].get("multilabel"))
        if key in self._cache:
            return self._cache[key]
        if not self.points or len(self.points) != len(self.labels):
            raise ValueError(f"{len(self.points)} keypoint sequences but {len(self.labels)} label sequences")
        nodes = self.node_names
        feats, labels, vids, fnames, offset = [], [], [], None, 0
        for i, pts in enumerate(self.points):
            nn = nodes[i] if nodes and isinstance(nodes[0], (list, tuple)) else nodes
            f, fnames = features_from_keypoints(pts, float(self._per(self.fps, i)), float(self._per(self.px_per_cm, i)),
                                                c, nn, None if self.scores is None else self.scores[i])
            y = np.asarray(self.labels[i])
            if len(y) != len(f):
                raise ValueError(f"sequence {i}: {len(f)} frames of keypoints but {len(y)} of labels")
            labelled = (y >= 0) if y.ndim == 1 else np.isfinite(y).all(-1)
            use = np.isfinite(f).all(-1) & labelled
            t = np.flatnonzero(use)
            if not len(t):
                continue
            seq = slot_sequences(use[:, None])[:, 0]
            feats.append(f[t])
            labels.append(y[t])
            vids.append(seq[t] + offset)
            offset += int(seq.max()) + 1
        if not feats:
            raise ValueError("no labelled frame has finite pose features")
        X, Y, V = np.concatenate(feats), np.concatenate(labels), np.concatenate(vids)
        names = [str(n) for n in self.names]
        if Y.ndim == 2 and not bool(c["train"].get("multilabel", False)):
            Y, names = exclusive_targets(Y, names)
        out = {"features": X, "labels": Y, "video_ids": V, "names": names, "feature_names": fnames,
               "fps": float(self._per(self.fps, 0))}
        self._cache.clear()
        self._cache[key] = out
        return out


def pose_sequences_from_sources(sources: Iterable[Mapping[str, Any]], behaviours: Sequence[str] | None = None,
                                max_distance: float = 20.0, overrides: Sequence[str] = ()) -> PoseSequences:
    """The label sources of ``sipec train-pose-classifier`` (``{video, store, pose, px_per_cm, labels, format,
    positions, frames}``) as :class:`PoseSequences`: one sequence per run of frames in which a track slot holds
    keypoints, with the labels matched to that slot; :meth:`PoseSequences.arrays` then gives the arrays
    ``run_train_pose_classifier`` trains on. ``overrides`` are not needed: every trial computes its features."""
    from sipec_models.behaviour_data import slot_sequences
    from sipec_models.io.store import open_store
    from sipec_models.tables import read_pose_chunks
    from sipec_models.training.behaviour import _check_names, _source_labels

    sources = list(sources)
    if not sources:
        raise ValueError("no label sources given")
    pts, scs, labs, fps_l, ppcm_l, nodes_l, names = [], [], [], [], [], [], None
    for src in sources:
        if src.get("px_per_cm") is None:
            raise ValueError(f"{src.get('video')}: the pose classifier needs px_per_cm (behaviour.px_per_cm or a "
                             "px_per_cm column of videos.tsv)")
        group = open_store(src["store"])
        fps = float(group.attrs["fps"])
        y, n = _source_labels(src, group, behaviours, max_distance)
        names = _check_names(n, names, src)
        points, conf, nodes = read_pose_chunks(src["pose"], int(group.attrs["n_frames"]))
        runs = slot_sequences(np.isfinite(points).all(-1).any(-1))
        for a in range(points.shape[1]):
            for r in np.unique(runs[:, a][runs[:, a] >= 0]):
                t = np.flatnonzero(runs[:, a] == r)
                pts.append(points[t, a])
                scs.append(conf[t, a])
                labs.append(y[t, a])
                fps_l.append(fps)
                ppcm_l.append(float(src["px_per_cm"]))
                nodes_l.append(list(nodes))
    return PoseSequences(pts, labs, list(names or []), fps_l, ppcm_l, nodes_l, scs)


def _pose_metrics(h: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    from sipec_models.ethogram import BACKGROUND

    fg = [v for n, v in zip(names, h["val_f1_per_class"]) if n != BACKGROUND and v is not None]
    return {"val_f1_fg": float(np.mean(fg)) if fg else 0.0, "val_f1": float(h["val_f1"]),
            "val_loss": float(h["val_loss"]), "train_loss": float(h["train_loss"]), "epoch": int(h["epoch"]) + 1,
            "stop": bool(h["stop"])}


def _train_pose_classifier(cfg: DictConfig, data: PoseSequences, report: Callable[[dict], None]) -> None:
    from sipec_models.training.pose_classifier import train_pose_classifier

    a = data.arrays(cfg)
    train_pose_classifier(a["features"], a["labels"], cfg, video_ids=a["video_ids"], fps=a["fps"], names=a["names"],
                          feature_names=a["feature_names"],
                          epoch_callback=lambda h: report(_pose_metrics(h, a["names"])))


def _pose_fixed(s: Mapping[str, Any]) -> list[str]:
    # The refit network and the postprocessing do not change the validation score of the first network.
    return [f"train.max_epochs={s['max_epochs']}", f"train.num_threads={s['cpus_per_trial']}", "train.refit=false",
            "postprocess.tune_on=validation"]


@dataclass
class FrameFeatures:
    """BehaveNet's frozen frame-network features of labelled animal frames: the temporal network's training data.

    Attributes:
        features: ``(N, F)`` float32 frame-network features, frames of one sequence consecutive and in order.
        labels: ``(N,)`` int classes (-1: unlabelled context frame) or ``(N, K)`` 0/1 (NaN: unlabelled).
        sequence: ``(N,)`` sequence id of each frame.
        motion: ``(N, M)`` motion features (``tcn.motion_input``).
        is_val: ``(N,)`` bool, the validation block (the last ``data.val_fraction`` of each sequence).
        names: the ``K`` behaviours.
        frame_val_f1: the frame network's own validation macro-F1 (over the non-background behaviours).
    """

    features: np.ndarray
    labels: np.ndarray
    sequence: np.ndarray
    motion: np.ndarray
    is_val: np.ndarray
    names: list[str]
    frame_val_f1: float | None = None


def _f1_fg(prob: np.ndarray, labels: np.ndarray, names: Sequence[str], multilabel: bool) -> float:
    """Macro-F1 over the behaviours except ``background`` (argmax calls, or >= 0.5 with ``multilabel``)."""
    from sklearn.metrics import f1_score

    from sipec_models.ethogram import BACKGROUND

    if multilabel:
        keep = np.isfinite(labels).all(1)
        y, p = labels[keep].astype(int), (prob[keep] >= 0.5).astype(int)
        cols = [k for k, n in enumerate(names) if n != BACKGROUND and y[:, k].any()]
        return float(f1_score(y[:, cols], p[:, cols], average="macro", zero_division=0)) if cols else 0.0
    keep = labels >= 0
    y, p = labels[keep], prob[keep].argmax(1)
    cls = [k for k in np.unique(y) if names[k] != BACKGROUND]
    return float(f1_score(y, p, labels=cls, average="macro", zero_division=0)) if cls else 0.0


def behavenet_features_from_sources(sources: Iterable[Mapping[str, Any]], behaviours: Sequence[str] | None = None,
                                    max_distance: float = 20.0, overrides: Sequence[str] = ()) -> FrameFeatures:
    """Train BehaveNet's frame network once (the config with ``overrides``, as ``sipec train-behavenet`` does)
    and return its frozen features of every labelled run with enough context for the largest
    ``tcn.half_window`` of the search space: the data every trial's temporal network trains on.

    As DeepEthogram tunes its sequence model on cached features, the BehaveNet sweep tunes the temporal
    stage (``tcn.*``, ``tcn_train.*``); the frame network's settings come from ``overrides``.
    """
    from sipec_models.behaviour_data import exclusive_targets
    from sipec_models.training.behavenet import BehaveNetModel, BehaviourData, train_behavenet, validation_split
    from sipec_models.training.behaviour import behavenet_samples

    cfg = to_dict(load_model_config("behavenet", list(overrides)))
    half = int(cfg["tcn"]["half_window"])
    hw = ((cfg.get("tune") or {}).get("space") or {}).get("tcn.half_window")
    if isinstance(hw, Mapping):
        half = max([half, *[int(v) for v in np.ravel(list(hw.values())[0])]])
    crops, y, seq, motion, names, _ = behavenet_samples(list(sources), half, behaviours, max_distance)
    multilabel = bool(cfg["data"]["multilabel"])
    target, names = (y, list(names)) if multilabel else exclusive_targets(y, names)
    frame_cfg = {**cfg, "tcn_train": {**cfg["tcn_train"], "epochs": 0}}
    model = train_behavenet(BehaviourData(crops, target, seq, motion), names, frame_cfg)
    is_val = validation_split(seq, float(cfg["data"]["val_fraction"]))
    frame_f1 = None
    if is_val.any():
        prob = model.predict_proba(crops[is_val])
        frame_f1 = _f1_fg(prob, np.asarray(target)[is_val], names, multilabel)
    feats = BehaveNetModel(model.frame_net, None, names, cfg).frame_features(crops).numpy()
    log.info("BehaveNet sweep data: %d frames (%d validation), %d frame features; frame network validation "
             "macro-F1 (non-background) %s", len(feats), int(is_val.sum()), feats.shape[1],
             "n/a" if frame_f1 is None else f"{frame_f1:.3f}")
    return FrameFeatures(feats, np.asarray(target), np.asarray(seq), np.asarray(motion, np.float32), is_val,
                         list(names), frame_f1)


def _train_behavenet_tcn(cfg: DictConfig, data: FrameFeatures, report: Callable[[dict], None]) -> None:
    from torch.utils.data import TensorDataset

    from sipec_models.training.behavenet import (_fit, _join_motion, _labels_tensor, build_tcn, feature_windows,
                                                 motion_width)

    import torch

    c = to_dict(cfg)
    torch.set_num_threads(int(c.get("tune", {}).get("cpus_per_trial", 1) or 1))
    torch.manual_seed(int(c.get("seed", 0)))
    multilabel, names = bool(c["data"]["multilabel"]), data.names
    feats = _join_motion(torch.from_numpy(data.features), data.motion, c)
    tcn = build_tcn(c, data.features.shape[1] + motion_width(c), len(names))
    wins = feature_windows(feats, data.sequence, tcn.half_window)
    y = _labels_tensor(data.labels, multilabel)
    v = torch.from_numpy(data.is_val)
    if not bool(data.is_val.any()):
        raise ValueError("the BehaveNet sweep needs a validation block (data.val_fraction > 0)")

    def on_epoch(m: dict) -> None:
        report({"val_f1_fg": _f1_fg(m["prob"], m["labels"], names, multilabel),
                "val_macro_f1": float(m["val_macro_f1"]), "epoch": int(m["epoch"]), "stop": False})

    _fit(tcn, TensorDataset(wins[~v], y[~v]), TensorDataset(wins[v], y[v]), c["tcn_train"], multilabel, c["loss"],
         int(c.get("seed", 0)), None, False, epoch_callback=on_epoch)


def _behavenet_fixed(s: Mapping[str, Any]) -> list[str]:
    return [f"tcn_train.epochs={s['max_epochs']}", f"tune.cpus_per_trial={s['cpus_per_trial']}"]


@dataclass
class SequenceRuns:
    """DeepEthogram's cached features of labelled runs: the sequence model's training data.

    Attributes:
        features: per run ``(T_r, D)`` float32 features of the feature extractors.
        labels: per run ``(T_r, K)`` 0/1 labels (NaN unlabelled).
        names: the ``K`` behaviours (with ``background``).
    """

    features: list[np.ndarray]
    labels: list[np.ndarray]
    names: list[str]


def deg_sequences_from_sources(sources: Iterable[Mapping[str, Any]], behaviours: Sequence[str] | None = None,
                               max_distance: float = 20.0, overrides: Sequence[str] = ()) -> SequenceRuns:
    """Train DeepEthogram's flow generator and feature extractor once (the config with ``overrides``, as the
    workflow's train_flow and train_features do), extract the features of the label sources' videos and return
    the labelled runs: the data every trial's sequence model trains on (DeepEthogram tunes its sequence models
    on cached features the same way)."""
    from sipec_models.training.deepethogram import sequence_runs, train_feature_stages

    sources = list(sources)
    with tempfile.TemporaryDirectory(prefix="sipec_tune_deg_") as tmp:
        by_video = list({s["video"]: s for s in sources}.values())
        features = train_feature_stages(by_video, sources, [], tmp, overrides, behaviours, max_distance)
        feats, labs, names, _ = sequence_runs([{**s, "features": features[s["video"]]} for s in sources],
                                              behaviours, max_distance)
    log.info("DeepEthogram sweep data: %d labelled runs, %d frames, %d features", len(feats),
             sum(len(f) for f in feats), feats[0].shape[1])
    return SequenceRuns([np.asarray(f, np.float32) for f in feats], [np.asarray(y) for y in labs], names)


def _train_deg_sequence(cfg: DictConfig, data: SequenceRuns, report: Callable[[dict], None]) -> None:
    import torch

    from sipec_models.training.deg_sequence import train_sequence

    c = to_dict(cfg)
    torch.set_num_threads(int(c.get("tune", {}).get("cpus_per_trial", 1) or 1))

    def on_epoch(rec: dict) -> None:
        f1 = rec.get("val_macro_f1")
        if f1 is None:
            raise ValueError("the DeepEthogram sweep needs validation frames (data.val_fraction > 0)")
        report({"val_f1_fg": float(f1) if np.isfinite(f1) else 0.0, "train_loss": float(rec["train_data_loss"]),
                "epoch": int(rec["epoch"]) + 1, "stop": bool(rec["stop"])})

    train_sequence(data.features, data.labels, data.names, cfg=c, progress=False, epoch_callback=on_epoch)


def _deg_fixed(s: Mapping[str, Any]) -> list[str]:
    return [f"sequence.train.epochs={s['max_epochs']}", f"tune.cpus_per_trial={s['cpus_per_trial']}"]


#: Model name -> how to sweep it.
TUNABLES: dict[str, Tunable] = {
    "pose_classifier": Tunable("pose_classifier", _train_pose_classifier, ("val_f1_fg", "val_f1", "val_loss"),
                               _pose_fixed, pose_sequences_from_sources),
    "behavenet": Tunable("behavenet", _train_behavenet_tcn, ("val_f1_fg", "val_macro_f1"), _behavenet_fixed,
                         behavenet_features_from_sources, keys=("tcn.", "tcn_train.")),
    "deepethogram": Tunable("deepethogram", _train_deg_sequence, ("val_f1_fg",), _deg_fixed,
                            deg_sequences_from_sources, keys=("sequence.",)),
}


def _tunable(model: str) -> Tunable:
    if model not in TUNABLES:
        raise ValueError(f"no sweep is defined for model {model!r}; tunable models: {', '.join(TUNABLES)}")
    return TUNABLES[model]


# --------------------------------------------------------------------------- the trial (runs in a Ray worker)


def _better(a: float, b: float, mode: str) -> bool:
    return a > b if mode == "max" else a < b


def _trial(config: dict, spec: dict, data: Any) -> None:
    from ray import tune

    tunable = _tunable(spec["model"])
    sampled = [d.override(config[d.key]) for d in spec["space"]]
    cfg = load_model_config(tunable.config, [*spec["base"], *sampled, *spec["fixed"]], spec["config_dir"])
    metric, mode = spec["metric"], spec["mode"]
    state = {"best": None, "n": 0}

    def report(m: dict) -> None:
        v = float(m[metric])
        if not math.isfinite(v):
            v = -math.inf if mode == "max" else math.inf
        if state["best"] is None or _better(v, state["best"], mode):
            state["best"], state["best_epoch"] = v, int(m["epoch"])
        state["n"] += 1
        tune.report({**m, "score": state["best"], "best_epoch": state["best_epoch"]})

    tunable.train(cfg, data, report)
    if not state["n"]:
        raise RuntimeError("training reported no validation epoch (does the validation block hold labelled frames?)")


# --------------------------------------------------------------------------- the sweep


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        Path(tmp).write_text(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _progress_callback(n_trials: int, metric: str, mode: str, include_default: bool, max_epochs: int):
    from ray import tune

    class Progress(tune.Callback):
        """One log line per finished trial."""

        def __init__(self):
            self.done, self.best = 0, None

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            r = trial.last_result or {}
            idx = int(str(trial.trial_id).rsplit("_", 1)[-1])
            score = r.get("score")
            if score is not None and (self.best is None or _better(score, self.best[0], mode)):
                self.best = (score, idx)
            how = "early stopping" if r.get("stop") else "stopped by ASHA" if r.get("epoch", 0) < max_epochs else ""
            log.info("trial %d/%d%s: %s %.4f (best epoch %s of %s%s); best so far %.4f (trial %d)", self.done,
                     n_trials, " (default config)" if include_default and idx == 0 else "", metric,
                     score if score is not None else float("nan"), r.get("best_epoch"), r.get("epoch"),
                     f", {how}" if how else "", *(self.best or (float("nan"), -1)))

        def on_trial_error(self, iteration, trials, trial, **info):
            self.done += 1
            log.warning("trial %d/%d failed: %s", self.done, n_trials, trial.error_file or "see the Ray folder")

    return Progress()


def _ray_init(threads: int, gpus: int | None) -> bool:
    """Start a local Ray instance for this job (unless one is running in this process); True if started."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(address="local", num_cpus=int(threads), num_gpus=gpus, include_dashboard=False, log_to_driver=False,
             logging_level=logging.WARNING, configure_logging=True)
    return True


def run_sweep(model: str, data: Any, out_dir: str | os.PathLike, overrides: Sequence[str] = (),
              num_samples: int | None = None, threads: int = 1, gpus: int | None = None,
              config_dir: str | os.PathLike | None = None, space: Mapping[str, Any] | None = None,
              **settings: Any) -> pd.DataFrame:
    """Random search with ASHA over the ``tune.space`` of ``model``'s config; writes ``best_overrides.yaml``
    and ``trials.csv`` to ``out_dir``.

    Args:
        model: a key of :data:`TUNABLES`.
        data: the training data of the model's trainable (pose classifier: :class:`PoseSequences`).
        out_dir: output folder (Ray's own experiment folder goes to ``out_dir/ray``).
        overrides: base Hydra overrides of the model config, applied in every
            trial before the sampled values (they may also change ``tune.*``).
        num_samples: trials (default ``tune.num_samples``).
        threads: CPU cores Ray may use (``ray.init(num_cpus=threads)``).
        gpus: GPUs Ray may use (default: those the job sees).
        config_dir: folder of the model configs (default ``config/models``).
        space: a search space replacing ``tune.space`` (same form).
        settings: other ``tune`` settings given explicitly (``max_epochs``,
            ``grace_period``, ``reduction_factor``, ``seed``, ``metric``, ...;
            None: the config's).

    Returns:
        The trials table (also ``trials.csv``), one row per trial in trial order.

    Raises:
        ValueError: a bad search space or setting (before Ray starts).
        RuntimeError: every trial failed.
    """
    tunable = _tunable(model)
    overrides = list(overrides)
    cfg = load_model_config(tunable.config, overrides, config_dir)
    s = tune_settings(cfg, tunable.metrics, num_samples=num_samples, **settings)
    where = "tune.space" if space is None else "space"
    space = parse_space(cfg, space, where)
    outside = [k for k in space if tunable.keys and not k.startswith(tunable.keys)]
    if outside:
        raise ValueError(f"{where}: the {model} sweep tunes only keys under {', '.join(tunable.keys)}; not "
                         f"{', '.join(outside)} (set those with the sweep's base overrides)")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if s["cpus_per_trial"] > threads:
        log.warning("tune.cpus_per_trial %d > %d threads of the job: trials get %d", s["cpus_per_trial"], threads,
                    threads)
        s["cpus_per_trial"] = int(threads)
    fixed = tunable.fixed(s)
    plain = to_dict(cfg)
    flat = _config_keys({k: v for k, v in plain.items() if k != "tune"})
    default = {k: d.encode(flat[k]) for k, d in space.items()}
    for k in space:  # every sampled value must compose (e.g. a choice of the wrong kind for a list entry)
        for v in ([*space[k].args] if space[k].kind == "choice" else [space[k].args[0]]):
            try:
                load_model_config(tunable.config, [*overrides, format_override(k, v)], config_dir)
            except ValueError as exc:
                raise ValueError(f"tune.space.{k}: value {v!r} does not compose: {exc}") from None
    out_dir = Path(out_dir).resolve()
    ray_dir = out_dir / "ray"
    if (ray_dir / model).exists():
        shutil.rmtree(ray_dir / model)
    spec = {"model": model, "space": list(space.values()), "base": overrides, "fixed": fixed, "metric": s["metric"],
            "mode": s["mode"], "config_dir": None if config_dir is None else str(Path(config_dir).resolve())}
    log.info("sweep of %s: %d trials, %s (%s), ASHA grace %d, reduction %s, max %d epochs; %d threads, space %s",
             model, s["num_samples"], s["metric"], s["mode"], s["grace_period"], s["reduction_factor"],
             s["max_epochs"], threads, ", ".join(f"{k}~{d.kind}{list(d.args)}" for k, d in space.items()))

    # Tune's own console output off (one log line per trial instead, see _progress_callback).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    t0 = time.perf_counter()
    started = _ray_init(threads, gpus)
    try:
        if s["gpus_per_trial"] > ray.cluster_resources().get("GPU", 0):
            raise ValueError(f"tune.gpus_per_trial is {s['gpus_per_trial']} but Ray sees "
                             f"{ray.cluster_resources().get('GPU', 0)} GPUs in this job")
        search = BasicVariantGenerator(points_to_evaluate=[default] if s["include_default"] else None,
                                       random_state=s["seed"])
        scheduler = ASHAScheduler(time_attr="training_iteration", max_t=s["max_epochs"],
                                  grace_period=s["grace_period"], reduction_factor=s["reduction_factor"])
        trainable = tune.with_resources(tune.with_parameters(_trial, spec=spec, data=data),
                                        {"cpu": s["cpus_per_trial"], "gpu": s["gpus_per_trial"]})
        tuner = tune.Tuner(
            trainable, param_space={k: d.sampler() for k, d in space.items()},
            tune_config=tune.TuneConfig(metric="score", mode=s["mode"], num_samples=s["num_samples"],
                                        scheduler=scheduler, search_alg=search, reuse_actors=True,
                                        trial_dirname_creator=lambda t: f"trial_{t.trial_id}"),
            run_config=tune.RunConfig(name=model, storage_path=str(ray_dir), verbose=0,
                                      callbacks=[_progress_callback(s["num_samples"], s["metric"], s["mode"],
                                                                    s["include_default"], s["max_epochs"])]))
        grid = tuner.fit()
    finally:
        if started:
            ray.shutdown()
    table = _trials_table(grid, space, s)
    ok = table[table["status"] == "ok"]
    if ok.empty:
        raise RuntimeError(f"every trial of the {model} sweep failed; first error: {table['error'].iloc[0]}")
    best = ok.iloc[int(np.argmax(ok[s['metric']].values if s["mode"] == "max" else -ok[s['metric']].values))]
    best_overrides = best["overrides"].split() if best["overrides"] else []
    load_model_config(tunable.config, [*overrides, *best_overrides], config_dir)  # they compose
    head = [f"Ray Tune sweep of {model} ({len(table)} trials, ASHA, {time.perf_counter() - t0:.0f} s): best trial "
            f"{int(best['trial'])}, {s['metric']} {best[s['metric']]:.4f}"]
    if s["include_default"] and (table["trial"] == 0).any() and table.loc[table["trial"] == 0, "status"].iloc[0] == "ok":
        head.append(f"default configuration (trial 0): {s['metric']} {table.loc[table['trial'] == 0, s['metric']].iloc[0]:.4f}")
    head.append(f"Hydra overrides of config/models/{tunable.config}.yaml, to apply after the sweep's base "
                f"overrides {overrides}")
    text = "".join(f"# {h}\n" for h in head) + (yaml.safe_dump(best_overrides, default_flow_style=False,
                                                               sort_keys=False) if best_overrides else "[]\n")
    _write_atomic(out_dir / "best_overrides.yaml", text)
    _write_atomic(out_dir / "trials.csv", table.to_csv(index=False))
    log.info("%s: best trial %d, %s %.4f: %s", out_dir / "best_overrides.yaml", int(best["trial"]), s["metric"],
             best[s["metric"]], " ".join(best_overrides) or "(the default configuration)")
    return table


def _trials_table(grid, space: Mapping[str, Dimension], s: Mapping[str, Any]) -> pd.DataFrame:
    metric = s["metric"]
    rows = []
    for r in grid:
        trial_id = Path(r.path).name.removeprefix("trial_")
        idx = int(trial_id.rsplit("_", 1)[-1])
        sampled = [d.override(r.config[k]) for k, d in space.items()]
        m = r.metrics or {}
        hist = r.metrics_dataframe
        row = {"trial": idx, "trial_id": trial_id, "default": bool(s["include_default"] and idx == 0),
               "status": "error" if r.error is not None else "ok", "overrides": " ".join(sampled),
               **{k: o.split("=", 1)[1] for k, o in zip(space, sampled)}}
        if r.error is not None or hist is None or not len(hist):
            row.update({metric: np.nan, f"last_{metric}": np.nan, "epochs": 0, "best_epoch": np.nan,
                        "ended": "error", "seconds": np.nan,
                        "error": str(r.error).strip().splitlines()[-1] if r.error is not None else "no result"})
            row["status"] = "error"
        else:
            epochs = int(m.get("epoch", len(hist)))
            ended = ("early_stopping" if m.get("stop") else "max_epochs" if epochs >= s["max_epochs"] else "asha")
            row.update({metric: float(m["score"]), f"last_{metric}": float(m[metric]), "epochs": epochs,
                        "best_epoch": int(m["best_epoch"]), "ended": ended,
                        "seconds": round(float(m.get("time_total_s", np.nan)), 2), "error": ""})
        rows.append(row)
    return pd.DataFrame(rows).sort_values("trial").reset_index(drop=True)


def read_overrides(path: str | os.PathLike) -> list[str]:
    """The override strings of a ``best_overrides.yaml`` (a YAML list of strings).

    Raises:
        ValueError: naming the file: not a list of ``key=value`` strings.
    """
    data = yaml.safe_load(Path(path).read_text())
    if data is None:
        return []
    if not isinstance(data, list) or not all(isinstance(o, str) and "=" in o for o in data):
        raise ValueError(f"{path}: expected a YAML list of Hydra override strings (key=value)")
    return list(data)


def write_workflow_config(path: str | os.PathLike, model: str, overrides: Sequence[str],
                          best_overrides: Sequence[str]) -> None:
    """A Snakemake config file that trains ``behaviour.model: <model>`` with the base overrides followed by the
    best overrides of a sweep: ``snakemake --configfile <path>`` (it replaces ``behaviour.model`` and
    ``behaviour.overrides`` of ``config/config.yaml``; the other settings stay)."""
    text = (f"# snakemake --configfile {path}: behaviour.model {model} with the overrides of the best trial of the\n"
            f"# Ray Tune sweep (after the sweep's base overrides)\n"
            + yaml.safe_dump({"behaviour": {"model": model, "overrides": [*overrides, *best_overrides]}},
                             default_flow_style=False, sort_keys=False))
    _write_atomic(Path(path), text)
