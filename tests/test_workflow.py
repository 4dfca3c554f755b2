"""The Snakemake workflow end to end on a small demo, and its behaviour on bad input."""

from __future__ import annotations


import numpy as np
import pandas as pd
import pytest

from sipec_models.io.store import dimension_names, open_store
from sipec_models.metrics import centre_errors, match_tracks_to_truth, positions_array
from sipec_models.tracking import identity_switches
from tests.workflow_helpers import SMALL_DEMO, run_snakemake, write_workdir

pytestmark = pytest.mark.slow

# Measured on this demo (2 videos x 150 frames, 3 animals, chunks of 50 frames): median 0.63 / 0.61 px,
# p95 2.34 / 2.27 px, 0 identity switches (README "Measured").
MEDIAN_COM_ERROR_PX = 1.0
P95_COM_ERROR_PX = 3.5
MAX_ID_SWITCHES_PER_VIDEO = 0


def truth_and_prediction(workdir, video):
    table = pd.read_parquet(workdir / f"results/{video}/animals.parquet")
    truth = pd.read_csv(workdir / f"resources/demo/{video}/centroids.csv")
    n_frames = int(table["frame"].max()) + 1
    pred, _ = positions_array(table, n_frames=n_frames)
    true, _ = positions_array(truth, n_frames=n_frames)
    return table, pred, true


def test_outputs_exist(demo_run):
    for video in ("arena_0", "arena_1"):
        for name in ("animals.csv", "animals.parquet", "trajectories.png", "probe.json", "plan.json"):
            assert (demo_run / f"results/{video}/{name}").is_file(), name
        assert len(list((demo_run / f"results/{video}/segment").glob("chunk_*.zarr"))) == 3
        assert (demo_run / f"logs/track/{video}.log").is_file()
        assert len(list((demo_run / f"logs/segment/{video}").glob("chunk_*.log"))) == 3
    summary = pd.read_csv(demo_run / "results/cohort_summary.csv")
    assert len(summary) == 6 and set(summary["session"]) == {0, 1}
    assert (summary["detected_fraction"] > 0.9).all()


def test_table_columns_and_rows(demo_run):
    table = pd.read_csv(demo_run / "results/arena_0/animals.csv")
    assert list(table.columns[:4]) == ["video", "frame", "time_s", "animal"]
    assert len(table) == 150 * 3
    assert np.allclose(table["time_s"], table["frame"] / 25.0)
    assert pd.read_parquet(demo_run / "results/arena_0/animals.parquet").shape == table.shape


def test_video_store_layout(demo_run):
    store = open_store(demo_run / "results/arena_0/arena_0.zarr")
    assert dimension_names(store["com"]) == ("frame", "animal", "xy")
    assert dimension_names(store["mask"]) == ("frame", "animal", "y", "x")
    assert store["com"].shape == (150, 3, 2) and store["com"].chunks[0] == 50
    assert store["com"].attrs["units"] == "px"
    prov = store.attrs["provenance"]
    assert prov["video_checksum"].startswith("sha256:") and prov["code_version"]
    assert prov["config"]["tracking"]["method"] == "greedy"


def test_centre_of_mass_error_and_identity_switches(demo_run):
    for video in ("arena_0", "arena_1"):
        _, pred, true = truth_and_prediction(demo_run, video)
        errors = centre_errors(pred, true, match_tracks_to_truth(pred, true))
        finite = errors[np.isfinite(errors)]
        assert finite.size > 0.9 * errors.size
        assert np.median(finite) < MEDIAN_COM_ERROR_PX, np.median(finite)
        assert np.percentile(finite, 95) < P95_COM_ERROR_PX, np.percentile(finite, 95)
        assert identity_switches(pred, true).sum() <= MAX_ID_SWITCHES_PER_VIDEO


def test_report(demo_run):
    result = run_snakemake(demo_run, "--cores", "1", "--report", "results/report.html")
    assert result.returncode == 0, result.stdout[-4000:]
    html = (demo_run / "results/report.html").read_text(errors="ignore")
    assert "trajectories" in html.lower()


def test_rerun_is_noop(demo_run):
    result = run_snakemake(demo_run, "--cores", "1", "--dry-run")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout


# ----- bad input: clear messages, nothing left behind -------------------------------------------


def test_config_typo_stops_before_any_job(tmp_path):
    config = {**SMALL_DEMO, "tracking": {"methd": "greedy"}}
    workdir = write_workdir(tmp_path, config)
    result = run_snakemake(workdir, "--cores", "1", timeout=120)
    assert result.returncode != 0
    assert "tracking.methd" in result.stdout and "did you mean 'method'" in result.stdout
    assert not (workdir / "results").exists() and not (workdir / "resources").exists()


def test_wrong_type_stops_before_any_job(tmp_path):
    workdir = write_workdir(tmp_path, {**SMALL_DEMO, "chunks": {"size": "fifty"}})
    result = run_snakemake(workdir, "--cores", "1", timeout=120)
    assert result.returncode != 0 and "chunks.size must be of type integer" in result.stdout
    assert not (workdir / "results").exists()


def test_missing_video_and_duplicate_ids(tmp_path):
    config = {**SMALL_DEMO, "demo": {**SMALL_DEMO["demo"], "enabled": False}}
    workdir = write_workdir(tmp_path, config, videos=[("a", "nowhere/a.mp4", 1), ("a", "nowhere/b.mp4", 1)])
    result = run_snakemake(workdir, "--cores", "1", timeout=120)
    assert result.returncode != 0 and "duplicate video id(s): a" in result.stdout
    workdir = write_workdir(tmp_path, config, videos=[("a", "nowhere/a.mp4", 1)])
    result = run_snakemake(workdir, "--cores", "1", timeout=120)
    assert result.returncode != 0 and "nowhere/a.mp4: video file does not exist" in result.stdout


def test_truncated_video_fails_cleanly(tmp_path, demo_run):
    """A video cut short mid-file: the job that meets it fails naming the file; no output is left half-written."""
    original = demo_run / "resources/demo/arena_0.mp4"
    data = original.read_bytes()
    (tmp_path / "videos").mkdir()
    truncated = tmp_path / "videos/cut.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    config = {**SMALL_DEMO, "demo": {**SMALL_DEMO["demo"], "enabled": False}}
    workdir = write_workdir(tmp_path, config, videos=[("cut", "videos/cut.mp4", 3)])
    result = run_snakemake(workdir, "--cores", "1", timeout=300)
    if result.returncode == 0:
        # The container kept its index: the decodable frames were processed and counted.
        table = pd.read_parquet(workdir / "results/cut/animals.parquet")
        assert table["frame"].max() + 1 < 150
    else:
        assert "cut.mp4" in result.stdout
        leftovers = [p for p in (workdir / "results").rglob("*") if p.name.startswith(".") and ".tmp-" in p.name]
        assert not leftovers


def test_video_without_animals(tmp_path):
    """Zero animals found: the run completes, every row says not detected, and the log says why to look."""
    from sipec_models.io.video import write_video

    (tmp_path / "videos").mkdir()
    rng = np.random.default_rng(0)
    floor = rng.integers(150, 170, (96, 96, 3), dtype=np.uint8)
    write_video(tmp_path / "videos/empty.mp4", [floor] * 40, fps=10.0)
    config = {**SMALL_DEMO, "demo": {**SMALL_DEMO["demo"], "enabled": False}, "chunks": {"size": 20}}
    workdir = write_workdir(tmp_path, config, videos=[("empty", "videos/empty.mp4", 2)])
    result = run_snakemake(workdir, "--cores", "2", timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]
    table = pd.read_parquet(workdir / "results/empty/animals.parquet")
    assert len(table) == 80 and not table["detected"].any() and (table["n_found"] == 0).all()
    assert "no animal found in 20 of 20 frames" in (workdir / "logs/segment/empty/chunk_0000.log").read_text()
    summary = pd.read_csv(workdir / "results/cohort_summary.csv")
    assert (summary["fewer_found_fraction"] == 1).all()
