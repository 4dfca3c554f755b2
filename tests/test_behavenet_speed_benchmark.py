"""The BehaveNet speed benchmark measures what it says: the configured networks on crops of their input side."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import behavenet_speed as bs  # noqa: E402


def test_default_configuration_is_timed_on_its_own_network():
    r = bs.measure("default", flip_average=False, threads=1, frames=24)
    assert (r["backbone"], r["crop_size"], r["half_window"], r["frames"]) == ("xception", 64, 10, 24)
    assert r["fps"] > 0 and r["seconds"] > 0 and r["peak_rss_mib"] > 0


def test_rodent_configuration_is_the_rodent_benchmark_default():
    overrides = bs.config_overrides("rodent_clips")
    assert "frame_net.backbone=efficientnet_lite0" in overrides and "data.crop_size=192" in overrides
    assert "infer.flip_average=true" in overrides


def test_unknown_configuration_is_refused():
    with pytest.raises(ValueError, match="unknown configuration 'mouse'"):
        bs.config_overrides("mouse")


def test_training_steps_are_timed_with_the_configured_batch():
    r = bs.measure_train("default", threads=1, steps=1)
    assert (r["backbone"], r["crop_size"], r["batch_size"]) == ("xception", 64, 36)
    assert r["seconds_per_step"] > 0 and r["fps"] == pytest.approx(36 / r["seconds_per_step"])
