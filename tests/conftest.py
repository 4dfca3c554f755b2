"""Shared fixtures: repository paths, the real data folder, small synthetic videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not available: {SHARED_DATA} is absent")
    return SHARED_DATA


def moving_square_frames(n: int = 60, size: int = 64) -> np.ndarray:
    """``(n, size, size, 3)`` uint8 frames: a bright square moving one pixel a frame, plus the
    frame index written into the top-left pixels so every frame is distinguishable."""
    frames = np.full((n, size, size, 3), 40, np.uint8)
    for i in range(n):
        x = 8 + (i % (size - 24))
        frames[i, 20:36, x:x + 16] = 220
        frames[i, :4, :8] = (i * 37) % 256
    return frames


@pytest.fixture(scope="session")
def small_video(tmp_path_factory) -> Path:
    """A 60-frame 64x64 H.264 video with keyframes every 25 frames."""
    from sipec_models.io.video import write_video

    path = tmp_path_factory.mktemp("video") / "square.mp4"
    write_video(path, moving_square_frames(), fps=25.0)
    return path


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A working directory where the workflow ran locally on the small demo (see tests/workflow_helpers.py)."""
    from tests.workflow_helpers import SMALL_DEMO, run_snakemake, write_workdir

    workdir = write_workdir(tmp_path_factory.mktemp("demo_run"), SMALL_DEMO)
    result = run_snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-6000:]
    return workdir
