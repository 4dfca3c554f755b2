"""Run Snakemake through the single-node SLURM test cluster (tests/cluster/slurm.sh).

Used by tests/test_slurm.py; reusable for any workflow:

    from helpers import cluster_session, run_snakemake_slurm   # see test_slurm.py for the import

    with cluster_session() as cluster:          # starts the cluster (or reuses a running one)
        res = run_snakemake_slurm(workdir, snakefile, ["all"], ["--config", "x=1"], timeout=600)
        assert res.returncode == 0, res.tail()

Everything that talks to the cluster needs ``SLURM_CONF`` (the cluster's config lives
in its state dir, not in /etc/slurm); :func:`slurm_env` builds such an environment,
with the Python environment running the tests first on PATH so the jobs' shell
commands find the same tools.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

REPO = Path(__file__).resolve().parents[2]
SLURM_SH = REPO / "tests" / "cluster" / "slurm.sh"
SLURM_PROFILE = REPO / "profiles" / "slurm"


class ClusterUnavailable(RuntimeError):
    """The test cluster cannot be used here (not root, no apt, daemons not up)."""


def state_dir() -> Path:
    return Path(os.environ.get("SIPEC_SLURM_DIR", "/tmp/sipec-slurm"))


def slurm_conf() -> Path:
    return state_dir() / "slurm.conf"


def slurm_env(base: dict | None = None) -> dict:
    """Environment for snakemake/sbatch/squeue against the test cluster.

    * ``SLURM_CONF`` points at the cluster's slurm.conf;
    * ``<state dir>/bin`` comes first on PATH: wrappers of srun, sbatch, squeue, ...
      that set SLURM_CONF themselves. Needed because the jobstep plugin drops all
      SLURM_* variables (SLURM_CONF too) before it calls ``srun`` inside the job;
      jobs inherit PATH through ``sbatch --export=ALL``;
    * then the bin/ dir of the running Python (the venv): jobs run
      ``<this python> -m snakemake`` and their shell commands use PATH;
    * SLURM_* job variables of an enclosing allocation are dropped.
    """
    env = dict(os.environ if base is None else base)
    for key in list(env):
        if key.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")):
            del env[key]
    env["SLURM_CONF"] = str(slurm_conf())
    first = [str(state_dir() / "bin"), str(Path(sys.executable).parent)]
    env["PATH"] = os.pathsep.join(first + [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in first])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def cluster_cmd(sub: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``tests/cluster/slurm.sh <sub>``; output (stdout+stderr) in ``.stdout``."""
    return subprocess.run(
        ["bash", str(SLURM_SH), sub],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        env=slurm_env(),
    )


def start_cluster() -> bool:
    """Install the packages if needed and start the cluster.

    Returns True when this call started it (so the caller should stop it), False
    when it was already running. Raises ClusterUnavailable with the reason otherwise.
    """
    if os.geteuid() != 0:
        raise ClusterUnavailable("needs root to start slurmctld/slurmd (os.geteuid() != 0)")
    if not SLURM_SH.exists():
        raise ClusterUnavailable(f"{SLURM_SH} missing")
    have_tools = all(shutil.which(t) for t in ("slurmctld", "slurmd", "sbatch", "munged"))
    if not have_tools:
        if shutil.which("apt-get") is None:
            raise ClusterUnavailable("SLURM packages missing and no apt-get to install them")
        try:
            res = cluster_cmd("install", timeout=900)
        except subprocess.TimeoutExpired:
            raise ClusterUnavailable("apt-get install of the SLURM packages timed out") from None
        if res.returncode != 0:
            raise ClusterUnavailable(f"apt-get install of the SLURM packages failed:\n{res.stdout[-3000:]}")
    was_running = cluster_cmd("status", timeout=60).returncode == 0
    try:
        res = cluster_cmd("start", timeout=180)
    except subprocess.TimeoutExpired:
        raise ClusterUnavailable("tests/cluster/slurm.sh start timed out") from None
    if res.returncode != 0:
        raise ClusterUnavailable(f"SLURM daemons did not come up:\n{res.stdout[-5000:]}")
    return not was_running


def stop_cluster() -> None:
    cluster_cmd("stop", timeout=120)


@contextlib.contextmanager
def cluster_session() -> Iterator[Path]:
    """Start the cluster for a block and stop it afterwards if this block started it.

    Yields the path of slurm.conf. A cluster that was already running (e.g. started
    by a CI step before pytest) is left running.
    """
    started = start_cluster()
    try:
        yield slurm_conf()
    finally:
        if started and not os.environ.get("SIPEC_SLURM_KEEP"):
            stop_cluster()


def usable_cpus() -> int:
    """CPUs this process may run on: the cap for rule threads (--max-threads).

    The test node declares more CPUs than that (slurm.sh oversubscribes small
    machines so that short jobs run side by side), threads stay real.
    """
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@dataclass
class SlurmJob:
    jobid: str
    state: str
    partition: str
    name: str
    comment: str
    workdir: str
    min_memory: str
    cpus: str
    time_limit: str


def slurm_jobs(workdir: Path | str | None = None, run_uuid: str | None = None) -> list[SlurmJob]:
    """Jobs the cluster still knows (squeue --states=all: finished ones stay MinJobAge=600 s).

    Filter by working directory (the plugin submits with -D <workdir>) and/or by the
    plugin's run id (the job name).
    """
    fmt = "%i|%T|%P|%j|%k|%Z|%m|%C|%l"
    res = subprocess.run(
        ["squeue", "-h", "--states=all", "-o", fmt],
        capture_output=True, text=True, timeout=30, env=slurm_env(),
    )
    jobs = []
    want_dir = os.path.realpath(workdir) if workdir is not None else None
    for line in res.stdout.splitlines():
        parts = line.split("|")
        if len(parts) != 9:
            continue
        job = SlurmJob(*[p.strip() for p in parts])
        if want_dir is not None and os.path.realpath(job.workdir) != want_dir:
            continue
        if run_uuid is not None and job.name != run_uuid:
            continue
        jobs.append(job)
    return jobs


def cancel_jobs(workdir: Path | str) -> None:
    """scancel the queued/running jobs submitted from workdir."""
    ids = [j.jobid for j in slurm_jobs(workdir) if j.state in ("PENDING", "RUNNING", "CONFIGURING", "SUSPENDED", "COMPLETING")]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=30, env=slurm_env())


@dataclass
class SnakemakeRun:
    cmd: list[str]
    returncode: int | None  # None when killed on timeout
    output: str  # stdout + stderr
    seconds: float
    timed_out: bool = False
    workdir: Path = field(default_factory=Path)

    def tail(self, n: int = 80) -> str:
        head = "TIMED OUT; " if self.timed_out else ""
        return f"{head}rc={self.returncode} after {self.seconds:.1f} s: {' '.join(self.cmd)}\n" + "\n".join(
            self.output.splitlines()[-n:]
        )


def run_snakemake_slurm(
    workdir: Path | str,
    snakefile: Path | str,
    targets: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    timeout: float = 300,
    profile: Path | str = SLURM_PROFILE,
    max_threads: int | None = None,
    env: dict | None = None,
) -> SnakemakeRun:
    """Run ``snakemake --profile profiles/slurm`` on the test cluster; never hangs.

    * runs ``<this python> -m snakemake --profile <profile> --snakefile <snakefile>
      --directory <workdir> --max-threads <usable CPUs> <extra_args> <targets>`` with
      :func:`slurm_env` (SLURM_CONF, wrapper dir and venv first on PATH);
      ``--max-threads`` keeps the profile's thread counts within this machine (a job
      asking for more CPUs than the node has would be rejected by sbatch);
    * in its own process group; on timeout the whole group gets SIGTERM, then SIGKILL
      after 10 s (the executor may ignore SIGTERM while it waits for job states), and
      the jobs still queued/running from ``workdir`` are scancel-ed;
    * returns the exit code, combined output and wall time; check ``returncode == 0``
      and ``timed_out``.
    """
    workdir = Path(workdir)
    if max_threads is None:
        max_threads = usable_cpus()
    cmd = [
        sys.executable, "-m", "snakemake",
        "--profile", str(profile),
        "--snakefile", str(snakefile),
        "--directory", str(workdir),
        "--max-threads", str(max_threads),
        *map(str, extra_args),
        *map(str, targets),
    ]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=workdir,
        env=slurm_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc.pid, signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        cancel_jobs(workdir)
    return SnakemakeRun(
        cmd=cmd,
        returncode=None if timed_out else proc.returncode,
        output=out or "",
        seconds=time.monotonic() - t0,
        timed_out=timed_out,
        workdir=workdir,
    )


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
