"""Paper-figure analogues from the workflow's evaluation outputs (the ``figures`` target).

Each function reads result files the workflow wrote, draws one PNG and
writes the numbers it shows as a CSV beside it (``<figure>.csv``), so a
figure can always be checked against a table:

=========================  ============================================  ====================================
function                   inputs                                        analogue
=========================  ============================================  ====================================
:func:`segmentation_id`    ``evaluation/segnet_ablation.csv``,           SIPEC Fig. 2b-d: mask AP against
                           ``evaluation/identity_<video>.json``          labelled frames, identity accuracy,
                                                                         each beside chance
:func:`behaviour_compare`  ``cv/<model>/fold_<i>.json`` of two models    SIPEC Fig. 3c: per-behaviour F1 of
                                                                         BehaveNet against the pose-based
                                                                         classifier, paired Wilcoxon test
:func:`behaviour_ablation` ``cv/ablation.csv``                           SIPEC Fig. 3d: F1 against labelled
                                                                         minutes, 95 %-of-peak point
:func:`position3d_error`   ``models/position3d_cv.json``                 SIPEC Fig. 4b: 3D error per axis
:func:`bout_statistics`    ``cohort_behaviour.csv``                      DeepEthogram Fig. 6-7: time budget,
                                                                         bouts per minute, bout duration
=========================  ============================================  ====================================
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, table: pd.DataFrame, figure: str | os.PathLike) -> Path:
    """Write ``figure`` (PNG) and ``<figure without suffix>.csv`` atomically; return the CSV path."""
    from sipec_models.crossval import _write_atomic_text

    figure = Path(figure)
    figure.parent.mkdir(parents=True, exist_ok=True)
    tmp = figure.with_name(f".{figure.stem}.tmp{figure.suffix}")
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", metadata={"Software": None})
        os.replace(tmp, figure)
    finally:
        tmp.unlink(missing_ok=True)
        _pyplot().close(fig)
    csv = figure.with_suffix(".csv")
    _write_atomic_text(csv, table.to_csv(index=False, float_format="%.4f"))
    return csv


def _ablation_panel(ax, csv: str | os.PathLike, score: str, panel: str, label: str, ylabel: str,
                    title: str) -> list[dict]:
    """Draw mean ± s.e.m. of ``score`` and ``chance`` against ``n_train`` of an ablation CSV; return its rows."""
    ab = pd.read_csv(csv)
    missing = {"n_train", score, "chance"} - set(ab.columns)
    if missing:
        raise ValueError(f"{csv}: lacks column(s) {', '.join(sorted(missing))}")
    rows = []
    for col, style in ((score, "o-"), ("chance", "s--")):
        g = ab.groupby("n_train")[col]
        mean, sem, n = g.mean(), g.sem(), g.count()
        ax.errorbar(mean.index, mean.values, yerr=sem.fillna(0).values, fmt=style,
                    label=label if col == score else "chance", capsize=3)
        rows += [{"panel": panel, "x": int(x), "score": col, "mean": mean[x], "sem": sem[x], "n": n[x]}
                 for x in mean.index]
    ax.set_xscale("log")
    ax.set_xlabel("labelled frames")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.legend(frameon=False)
    ax.set_title(title)
    return rows


def segmentation_id(ablation_csv: str | os.PathLike | None, identity_json: Sequence[str | os.PathLike],
                    figure: str | os.PathLike, idnet_ablation_csv: str | os.PathLike | None = None) -> pd.DataFrame:
    """SIPEC Fig. 2b-d: SegNet mask AP@0.5 against labelled frames, identity accuracy per video and against
    labelled frames, each with chance.

    Args:
        ablation_csv: ``sipec evaluate-segnet`` ablation (fold, n_train, ap, chance), or None.
        identity_json: ``sipec evaluate-identity`` results (accuracy and chance, without and with track smoothing).
        idnet_ablation_csv: ``sipec evaluate-idnet`` ablation (repeat, n_train, accuracy, chance), or None.

    Returns:
        The table written beside the figure: ``panel, x, score, mean, sem, n``.
    """
    if ablation_csv is None and not identity_json and idnet_ablation_csv is None:
        raise ValueError("no segmentation ablation and no identity evaluation to draw")
    plt = _pyplot()
    rows = []
    panels = int(ablation_csv is not None) + int(bool(identity_json)) + int(idnet_ablation_csv is not None)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.6), squeeze=False)
    k = 0
    if ablation_csv is not None:
        rows += _ablation_panel(axes[0, k], ablation_csv, "ap", "segnet_ap", "SegNet",
                                "mask AP@0.5 (k-fold, mean ± s.e.m.)", "Segmentation (SIPEC Fig. 2b)")
        k += 1
    if identity_json:
        ax = axes[0, k]
        labels, acc_none, acc_track, chance = [], [], [], []
        for path in identity_json:
            d = json.loads(Path(path).read_text())
            labels.append(d["video"])
            acc_none.append(d["smoothing_none"]["accuracy"])
            acc_track.append(d["smoothing_track"]["accuracy"])
            chance.append(d["smoothing_none"]["chance"])
            for score, v in (("accuracy_frame", acc_none[-1]), ("accuracy_track_smoothed", acc_track[-1]),
                             ("chance", chance[-1])):
                rows.append({"panel": "identity", "x": d["video"], "score": score, "mean": v, "sem": None, "n": 1})
        x = np.arange(len(labels))
        ax.bar(x - 0.27, acc_none, 0.27, label="per frame")
        ax.bar(x, acc_track, 0.27, label="track-smoothed")
        ax.bar(x + 0.27, chance, 0.27, label="chance", color="0.7")
        ax.set_xticks(x, labels)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("identity accuracy")
        ax.legend(frameon=False, fontsize=8)
        ax.set_title("Identification (SIPEC Fig. 2c)")
        k += 1
    if idnet_ablation_csv is not None:
        rows += _ablation_panel(axes[0, k], idnet_ablation_csv, "accuracy", "idnet_accuracy", "IdNet",
                                "identity accuracy (mean ± s.e.m.)", "Identification (SIPEC Fig. 2d)")
    fig.tight_layout()
    table = pd.DataFrame(rows, columns=["panel", "x", "score", "mean", "sem", "n"])
    _save(fig, table, figure)
    return table


def _fold_f1(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """``model, fold, behaviour, f1, chance`` of full-label cross-validation folds (ablation runs left out)."""
    rows = []
    for p in paths:
        m = json.loads(Path(p).read_text())
        if float(m.get("label_fraction", 1.0)) != 1.0:
            continue
        for b, s in m["per_behaviour"].items():
            if b == "background":
                continue
            rows.append({"model": m["model"], "fold": m["fold"], "behaviour": b, "f1": s["f1"],
                         "chance_macro_f1": m["chance_macro_f1"]["mean"]})
    return pd.DataFrame(rows)


def behaviour_compare(fold_metrics: Sequence[str | os.PathLike], figure: str | os.PathLike,
                      models: Sequence[str] = ("behavenet", "pose_classifier")) -> dict:
    """SIPEC Fig. 3c: per-behaviour F1 of two models over the same folds, and a paired Wilcoxon signed-rank test.

    The pairs are (fold, behaviour) F1 values of the two models on the same
    test frames. Returns ``{"n_pairs", "wilcoxon_statistic", "p_value",
    "median_difference", "mean_f1": {model: ...}}`` (also in the table's
    attributes); the CSV holds one row per fold and behaviour.
    """
    from scipy.stats import wilcoxon

    f1 = _fold_f1(fold_metrics)
    a, b = models
    have = set(f1["model"]) if len(f1) else set()
    if not {a, b} <= have:
        raise ValueError(f"behaviour comparison needs cross-validation folds of {a} and {b}; got {sorted(have)}")
    wide = f1.pivot_table(index=["fold", "behaviour"], columns="model", values="f1").dropna(subset=[a, b])
    if wide.empty:
        raise ValueError(f"no fold and behaviour scored by both {a} and {b}")
    diff = wide[a] - wide[b]
    test = wilcoxon(wide[a], wide[b]) if (diff != 0).any() else None
    result = {"n_pairs": int(len(wide)), "wilcoxon_statistic": float(test.statistic) if test else None,
              "p_value": float(test.pvalue) if test else 1.0, "median_difference": float(diff.median()),
              "mean_f1": {m: float(wide[m].mean()) for m in (a, b)}}
    plt = _pyplot()
    behaviours = list(dict.fromkeys(f1["behaviour"]))
    fig, ax = plt.subplots(figsize=(1.3 * len(behaviours) + 2, 3.8))
    x = np.arange(len(behaviours))
    for k, (m, colour) in enumerate(((a, "tab:blue"), (b, "tab:orange"))):
        data = [wide.xs(beh, level="behaviour")[m].to_numpy() for beh in behaviours]
        bp = ax.boxplot(data, positions=x + (k - 0.5) * 0.35, widths=0.3, patch_artist=True,
                        medianprops={"color": "k"})
        for patch in bp["boxes"]:
            patch.set_facecolor(colour)
            patch.set_alpha(0.6)
        ax.plot([], [], "s", color=colour, label=m)
    chance = f1.groupby("model")["chance_macro_f1"].mean().mean()
    ax.axhline(chance, color="0.5", ls="--", lw=1, label="chance (macro-F1)")
    ax.set_xticks(x, behaviours)
    ax.set_ylabel("F1 per fold")
    ax.set_ylim(0, 1.02)
    p = result["p_value"]
    ax.set_title(f"{a} vs {b}: Wilcoxon p = {p:.3g} ({result['n_pairs']} fold x behaviour pairs)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    table = wide.reset_index()
    table["difference"] = diff.to_numpy()
    _save(fig, table, figure)
    Path(figure).with_suffix(".json").write_text(json.dumps(result, indent=2))
    return result


def behaviour_ablation(ablation_csv: str | os.PathLike, figure: str | os.PathLike, level: float = 0.95
                       ) -> pd.DataFrame:
    """SIPEC Fig. 3d: cross-validated macro-F1 against labelled minutes, per model, with the 95 %-of-peak point."""
    ab = pd.read_csv(ablation_csv)
    need = {"model", "labelled_minutes", "macro_f1_mean", "macro_f1_sem", "chance_macro_f1_mean"}
    if not need <= set(ab.columns):
        raise ValueError(f"{ablation_csv}: lacks column(s) {', '.join(sorted(need - set(ab.columns)))}")
    if ab.empty:
        raise ValueError(f"{ablation_csv}: no label-ablation runs (set cv.label_fractions)")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    rows = []
    for model, g in ab.groupby("model", sort=True):
        g = g.sort_values("labelled_minutes")
        line = ax.errorbar(g["labelled_minutes"], g["macro_f1_mean"], yerr=g["macro_f1_sem"].fillna(0), fmt="o-",
                           capsize=3, label=model)
        peak = g["macro_f1_mean"].max()
        reach = g.loc[g["macro_f1_mean"] >= level * peak, "labelled_minutes"].min()
        ax.axvline(reach, color=line[0].get_color(), ls=":", lw=1)
        ax.plot(g["labelled_minutes"], g["chance_macro_f1_mean"], "--", color=line[0].get_color(), lw=1, alpha=0.6)
        rows.append({"model": model, "peak_macro_f1": peak, f"minutes_to_{round(level * 100)}pct_of_peak": reach})
    ax.set_xlabel("labelled minutes (training)")
    ax.set_ylabel("macro-F1 (mean ± s.e.m. over folds)")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Labels needed (dotted: {round(level * 100)} % of peak; dashed: chance)")
    ax.legend(frameon=False)
    fig.tight_layout()
    table = pd.DataFrame(rows)
    _save(fig, table, figure)
    return table


def position3d_error(cv_json: str | os.PathLike, figure: str | os.PathLike) -> pd.DataFrame:
    """SIPEC Fig. 4b: cross-validated RMSE per axis of the one-camera 3D regressor, beside the mean baseline."""
    d = json.loads(Path(cv_json).read_text())
    axes_ = list(d["rmse"])
    unit = d.get("unit", "")
    per_fold = pd.DataFrame(d["rmse_per_fold"])
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.6))
    x = np.arange(len(axes_))
    ax.boxplot([per_fold[a].to_numpy() for a in axes_], positions=x - 0.2, widths=0.3)
    ax.bar(x + 0.2, [d["rmse_mean_baseline"][a] for a in axes_], 0.3, color="0.75", label="mean-position baseline")
    ax.set_yscale("log")
    ax.set_xticks(x, axes_)
    ax.set_ylabel(f"RMSE ({unit})")
    ax.set_title(f"3D position, {d['folds']}-fold CV ({d['n']} masks)")
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    table = pd.DataFrame({"axis": axes_, "rmse": [d["rmse"][a] for a in axes_],
                          "rmse_fold_sem": [per_fold[a].sem() for a in axes_],
                          "rmse_mean_baseline": [d["rmse_mean_baseline"][a] for a in axes_], "unit": unit})
    _save(fig, table, figure)
    return table


def bout_statistics(cohort_csv: str | os.PathLike, figure: str | os.PathLike) -> pd.DataFrame:
    """DeepEthogram-style bout statistics: time budget, bouts per minute and mean bout duration per behaviour.

    One point per video and animal (``cohort_behaviour.csv``), boxes per behaviour.
    """
    c = pd.read_csv(cohort_csv)
    need = {"video", "animal", "behaviour", "fraction", "bouts_per_min", "mean_bout_s"}
    if not need <= set(c.columns):
        raise ValueError(f"{cohort_csv}: lacks column(s) {', '.join(sorted(need - set(c.columns)))}")
    if c.empty:
        raise ValueError(f"{cohort_csv}: no rows")
    behaviours = list(dict.fromkeys(c["behaviour"]))
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(4 * 3, 3.6))
    rows = []
    for ax, (col, label) in zip(axes, (("fraction", "time budget (fraction of frames)"),
                                       ("bouts_per_min", "bouts per minute"), ("mean_bout_s", "mean bout (s)"))):
        data = [c.loc[c["behaviour"] == b, col].dropna().to_numpy() for b in behaviours]
        ax.boxplot(data, widths=0.5)
        for k, d in enumerate(data):
            ax.plot(np.full(len(d), k + 1) + np.linspace(-0.1, 0.1, len(d)), d, "o", ms=3, alpha=0.6)
            rows.append({"statistic": col, "behaviour": behaviours[k], "median": float(np.median(d)) if len(d)
                         else None, "mean": float(np.mean(d)) if len(d) else None, "n_animals": len(d)})
        ax.set_xticks(np.arange(1, len(behaviours) + 1), behaviours, rotation=30)
        ax.set_ylabel(label)
    fig.suptitle("Bout statistics per animal")
    fig.tight_layout()
    table = pd.DataFrame(rows)
    _save(fig, table, figure)
    return table
