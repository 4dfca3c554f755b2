"""Paper-figure analogues (sipec_models.figures): each a PNG with its numbers in a CSV beside it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from sipec_models import figures


def _png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_segmentation_identity(tmp_path):
    ab = pd.DataFrame({"fold": [0, 0, 1, 1], "n_train": [2, 8, 2, 8], "ap": [0.4, 0.8, 0.6, 0.9],
                       "chance": [0.1, 0.1, 0.2, 0.0]})
    ab.to_csv(tmp_path / "ab.csv", index=False)
    ident = {"video": "v1", "smoothing_none": {"accuracy": 0.9, "chance": 0.5},
             "smoothing_track": {"accuracy": 0.95, "chance": 0.5}}
    (tmp_path / "id.json").write_text(json.dumps(ident))
    table = figures.segmentation_id(tmp_path / "ab.csv", [tmp_path / "id.json"], tmp_path / "fig.png")
    _png(tmp_path / "fig.png")
    ap = table[(table["panel"] == "segnet_ap") & (table["score"] == "ap")].set_index("x")
    assert ap.loc[8, "mean"] == pytest.approx(0.85) and ap.loc[2, "sem"] == pytest.approx(0.1)
    assert pd.read_csv(tmp_path / "fig.csv").shape == table.shape
    with pytest.raises(ValueError, match="nothing|no segmentation"):
        figures.segmentation_id(None, [], tmp_path / "x.png")


def test_segmentation_identity_with_the_idnet_ablation(tmp_path):
    ab = pd.DataFrame({"repeat": [0, 1, 0], "n_train": [5, 5, 80], "accuracy": [0.6, 0.8, 0.95],
                       "chance": [0.33, 0.34, 0.33]})
    ab.to_csv(tmp_path / "idab.csv", index=False)
    table = figures.segmentation_id(None, [], tmp_path / "fig.png", idnet_ablation_csv=tmp_path / "idab.csv")
    _png(tmp_path / "fig.png")
    acc = table[(table["panel"] == "idnet_accuracy") & (table["score"] == "accuracy")].set_index("x")
    assert acc.loc[5, "mean"] == pytest.approx(0.7) and acc.loc[5, "n"] == 2 and acc.loc[80, "n"] == 1
    ab.drop(columns="chance").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="bad.csv: lacks column.*chance"):
        figures.segmentation_id(None, [], tmp_path / "x.png", idnet_ablation_csv=tmp_path / "bad.csv")


def _fold(path, model, fold, f1s):
    path.write_text(json.dumps({"model": model, "fold": fold, "label_fraction": 1.0, "chance_macro_f1": {"mean": 0.2},
                                "per_behaviour": {b: {"f1": v} for b, v in f1s.items()}}))
    return path


def test_behaviour_compare_pairs_folds_and_behaviours(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for fold in range(4):
        base = {b: float(rng.uniform(0.3, 0.6)) for b in ("walk", "rear", "groom")}
        paths.append(_fold(tmp_path / f"p{fold}.json", "pose_classifier", fold, base))
        paths.append(_fold(tmp_path / f"b{fold}.json", "behavenet", fold,
                           {**{b: v + 0.2 for b, v in base.items()}, "background": 0.9}))
    result = figures.behaviour_compare(paths, tmp_path / "cmp.png")
    _png(tmp_path / "cmp.png")
    assert result["n_pairs"] == 12  # background is left out
    assert result["median_difference"] == pytest.approx(0.2)
    assert result["p_value"] < 0.01  # 12 pairs all in one direction
    assert json.loads((tmp_path / "cmp.json").read_text())["n_pairs"] == 12
    with pytest.raises(ValueError, match="needs cross-validation folds"):
        figures.behaviour_compare(paths[:1], tmp_path / "x.png")


def test_behaviour_ablation_and_95pct_point(tmp_path):
    ab = pd.DataFrame({"model": ["m"] * 3, "label_fraction": [0.25, 0.5, 1.0], "labelled_minutes": [1.0, 2.0, 4.0],
                       "macro_f1_mean": [0.5, 0.78, 0.8], "macro_f1_sem": [0.05, 0.03, 0.02], "n_folds": 3,
                       "chance_macro_f1_mean": [0.2, 0.2, 0.2]})
    ab.to_csv(tmp_path / "ab.csv", index=False)
    table = figures.behaviour_ablation(tmp_path / "ab.csv", tmp_path / "abl.png")
    _png(tmp_path / "abl.png")
    assert table.iloc[0]["minutes_to_95pct_of_peak"] == 2.0 and table.iloc[0]["peak_macro_f1"] == 0.8
    ab.drop(columns="labelled_minutes").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="labelled_minutes"):
        figures.behaviour_ablation(tmp_path / "bad.csv", tmp_path / "x.png")


def test_position3d_and_bout_statistics(tmp_path):
    cv = {"rmse": {"X": 3.0, "Y": 4.0, "Z": 5.0}, "rmse_mean_baseline": {"X": 100.0, "Y": 110.0, "Z": 6.0},
          "rmse_per_fold": [{"X": 2.0, "Y": 4.0, "Z": 5.0}, {"X": 4.0, "Y": 4.0, "Z": 5.0}], "folds": 2, "n": 50,
          "unit": "mm"}
    (tmp_path / "cv.json").write_text(json.dumps(cv))
    table = figures.position3d_error(tmp_path / "cv.json", tmp_path / "p3d.png")
    _png(tmp_path / "p3d.png")
    assert list(table["axis"]) == ["X", "Y", "Z"] and table.iloc[0]["rmse_fold_sem"] == pytest.approx(1.0)
    cohort = pd.DataFrame({"video": ["v"] * 4, "animal": ["a", "a", "b", "b"], "behaviour": ["walk", "rear"] * 2,
                           "fraction": [0.7, 0.3, 0.5, 0.5], "bouts_per_min": [2.0, 1.0, 3.0, 1.0],
                           "mean_bout_s": [1.0, np.nan, 2.0, 0.5]})
    cohort.to_csv(tmp_path / "cohort.csv", index=False)
    table = figures.bout_statistics(tmp_path / "cohort.csv", tmp_path / "bouts.png")
    _png(tmp_path / "bouts.png")
    row = table[(table["statistic"] == "fraction") & (table["behaviour"] == "walk")].iloc[0]
    assert row["mean"] == pytest.approx(0.6) and row["n_animals"] == 2
    row = table[(table["statistic"] == "mean_bout_s") & (table["behaviour"] == "rear")].iloc[0]
    assert row["n_animals"] == 1  # an animal without a bout has no bout duration
