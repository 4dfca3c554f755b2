"""Helpers to run the Snakemake workflow in a scratch directory (used by the workflow and SLURM tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"

#: A small demo: 2 videos x 150 frames, 3 animals, chunks of 50 frames (3 chunks per video).
SMALL_DEMO = {
    "videos": "config/videos.tsv",
    "results": "results",
    "demo": {"enabled": True, "outdir": "resources/demo", "n_videos": 2, "n_frames": 150,
             "n_animals": 3, "size": 256, "seed": 0},
    "chunks": {"size": 50},
}


def venv_env() -> dict:
    """Environment whose PATH starts with this interpreter's bin folder (where `sipec` lives)."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("SNAKEMAKE_PROFILE", None)
    return env


def write_workdir(workdir: Path, config: dict, videos: list[tuple[str, str, int]] | None = None) -> Path:
    """Write ``config/config.yaml`` and ``config/videos.tsv`` into ``workdir``."""
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if videos is None:
        demo = config["demo"]
        videos = [(f"arena_{i}", f"{demo['outdir']}/arena_{i}.mp4", demo["n_animals"]) for i in range(demo["n_videos"])]
    lines = ["id\tpath\tn_animals\tsession"] + [f"{v}\t{p}\t{n}\t{i}" for i, (v, p, n) in enumerate(videos)]
    (workdir / "config" / "videos.tsv").write_text("\n".join(lines) + "\n")
    return workdir


def run_snakemake(workdir: Path, *args: str, profile: str = "local", timeout: float = 900,
                  env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the workflow in ``workdir`` with ``profiles/<profile>``; kill the process group on timeout."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(SNAKEFILE), "--directory", str(workdir),
           "--profile", str(REPO / "profiles" / profile), *args]
    proc = subprocess.Popen(cmd, cwd=workdir, env=env or venv_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"snakemake timed out after {timeout} s:\n{out[-5000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")
