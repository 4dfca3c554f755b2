"""Smoke tests of benchmarks/deg_speed.py (DeepEthogram inference speed) on tiny inputs."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def deg_speed():
    spec = importlib.util.spec_from_file_location("deg_speed", REPO / "benchmarks" / "deg_speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_result(r: dict, preset: str, frames: int, n_classes: int = 5, size: int = 64) -> None:
    assert r["preset"] == preset
    assert r["frames"] == frames and r["size"] == [size, size] and r["device"] == "cpu" and r["threads"] == 1
    assert len(r["runs"]) == r["repeats"] == 1
    med = r["median_seconds"]
    assert set(med) == {"flow", "features", "sequence", "total"}
    assert all(v > 0 for v in med.values())
    assert med["total"] >= med["flow"] + med["features"] + med["sequence"]  # the pass contains its stages
    assert math.isclose(r["fps"], frames / med["total"])
    assert math.isclose(r["ratio_to_titan_rtx"], r["fps"] / r["anchor_fps_titan_rtx"])
    assert r["anchor_fps_titan_rtx"] == {"fast": 235.0, "medium": 128.0, "slow": 34.0}[preset]
    assert r["peak_memory_mib"] > 50 and "ru_maxrss" in r["peak_memory_kind"]
    assert r["output_shape"] == [frames, n_classes] and r["output_finite"]
    assert r["parameters"]["flow"] > 0 and r["parameters"]["features"] > r["parameters"]["flow"]


def test_main_in_process_writes_json(deg_speed, tmp_path):
    out = tmp_path / "speed.json"
    summary = deg_speed.main(["--size", "64", "--frames", "8", "--presets", "fast", "--repeats", "1",
                              "--threads", "1", "--in-process", "--out", str(out)])
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert on_disk["frames_per_preset"] == {"fast": 8}
    assert on_disk["environment"]["torch"] == torch.__version__
    assert "untrained" in on_disk["weights"]
    (r,) = on_disk["results"]
    _check_result(r, "fast", 8)
    assert r["arch"] == {"flow": "tiny_motionnet", "features": "resnet18", "sequence": "tgm"}
    assert r["pipeline"] == "staged" and r["batch_size"] == 8
    table = deg_speed.format_table(on_disk["results"])
    assert "fast" in table and f"{r['fps']:.2f}" in table


def test_child_mode_prints_one_preset_json(deg_speed, tmp_path, capsys):
    """The default mode runs each preset as ``--child`` in a fresh process and reads its last stdout line."""
    args = deg_speed.parse_args(["--size", "32", "--frames", "2", "--presets", "slow", "--repeats", "1",
                                 "--batch-size", "4", "--classes", "3", "--out", str(tmp_path / "s.json")])
    argv = deg_speed._child_argv(args, "slow", 2)
    child = deg_speed.parse_args(argv[2:])  # what the subprocess would parse
    assert child.child and child.presets == ["slow"] and child.frames == [2] and child.batch_size == 4
    assert (child.size, child.classes, child.threads, child.repeats) == (32, 3, 1, 1)
    deg_speed.main(argv[2:])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    _check_result(r, "slow", 2, n_classes=3, size=32)
    assert r["arch"]["flow"] == "tiny_motionnet3d" and r["arch"]["features"] == "resnet3d_34"
    assert r["batch_size"] == 4
    assert not (tmp_path / "s.json").exists()  # a child prints, the parent writes


def test_fused_full_resolution_equals_staged(deg_speed):
    """DeepEthogram's fused loop with full-size flows computes exactly what the workflow's staged path does."""
    torch.set_num_threads(1)
    flow, features, sequence, _ = deg_speed.build_models("fast", n_classes=4)
    frames = deg_speed.synthetic_frames(9, 64, seed=1)
    cpu = torch.device("cpu")
    s_secs, staged = deg_speed.staged_pass(flow, features, sequence, frames, 4, cpu)
    f_secs, fused = deg_speed.fused_pass(flow, features, sequence, frames, 4, cpu)
    _, half = deg_speed.fused_pass(flow, features, sequence, frames, 4, cpu, flow_res="half")
    assert staged.shape == fused.shape == half.shape == (9, 4)
    np.testing.assert_allclose(fused, staged, atol=1e-5)
    assert not np.allclose(half, staged, atol=1e-7)  # the flow stream saw a different (half-size) input
    assert set(s_secs) == set(f_secs) == {"flow", "features", "sequence"}


@pytest.mark.parametrize("kwargs, match", [
    ({"preset": "fast", "n_frames": 4, "size": 60}, "multiple of 8"),
    ({"preset": "medium", "n_frames": 4, "size": 48}, "multiple of 32"),
    ({"preset": "fast", "n_frames": 4, "size": 64, "flow_res": "half"}, "pipeline fused"),
    ({"preset": "fast", "n_frames": 4, "size": 64, "amp": "bf16"}, "CUDA only"),
    ({"preset": "turbo", "n_frames": 4, "size": 64}, "unknown preset"),
    ({"preset": "fast", "n_frames": 0, "size": 64}, "frames >= 1"),
])
def test_bad_settings_raise(deg_speed, kwargs, match):
    with pytest.raises(ValueError, match=match):
        deg_speed.bench_preset(**kwargs)


def test_frames_per_preset(deg_speed):
    assert deg_speed._frames_per_preset(["fast", "slow"], None, "cpu") == {"fast": 64, "slow": 8}
    assert deg_speed._frames_per_preset(["fast", "slow"], [5], "cpu") == {"fast": 5, "slow": 5}
    assert deg_speed._frames_per_preset(["fast", "slow"], [5, 2], "cuda") == {"fast": 5, "slow": 2}
    with pytest.raises(ValueError, match="one per preset"):
        deg_speed._frames_per_preset(["fast", "slow"], [5, 2, 1], "cpu")
