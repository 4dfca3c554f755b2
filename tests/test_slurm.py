"""Run workflows through a real single-node SLURM cluster with ``--profile profiles/slurm``.

The session fixture starts the cluster with tests/cluster/slurm.sh (installing the
Debian packages when missing) and stops it at the end, unless it was already
running. Skips when not root, when the packages cannot be installed or when the
daemons do not come up; set SIPEC_SLURM_REQUIRED=1 (e.g. in CI) to fail instead.

    sudo .venv/bin/pytest -m slurm tests/test_slurm.py
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from tests.cluster import helpers as slurm_helpers
from tests.cluster.helpers import ClusterUnavailable, run_snakemake_slurm, slurm_jobs

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running test cluster for the session; yields the path of its slurm.conf."""
    try:
        started = slurm_helpers.start_cluster()
    except ClusterUnavailable as e:
        if os.environ.get("SIPEC_SLURM_REQUIRED"):
            pytest.fail(f"SLURM test cluster unavailable: {e}")
        pytest.skip(f"SLURM test cluster unavailable: {e}")
    yield slurm_helpers.slurm_conf()
    if started and not os.environ.get("SIPEC_SLURM_KEEP"):
        slurm_helpers.stop_cluster()


# A fan-out (3 x segment) and a gather (merge), named after pipeline rules so
# that the profile's set-resources/set-threads for them are exercised too.
TINY_SNAKEFILE = textwrap.dedent(
    """
    CHUNKS = [0, 1, 2]

    localrules: all

    rule all:
        input: "out/merged.txt"

    rule segment:
        output: "out/chunk_{chunk}.txt"
        log: "logs/segment_{chunk}.log"
        shell:
            "(echo SLURM_JOB_ID=$SLURM_JOB_ID; echo SLURM_JOB_PARTITION=$SLURM_JOB_PARTITION;"
            " echo SLURM_CPUS_PER_TASK=$SLURM_CPUS_PER_TASK; echo threads={threads};"
            " echo chunk {wildcards.chunk} > {output}) > {log} 2>&1"

    rule merge:
        input: expand("out/chunk_{chunk}.txt", chunk=CHUNKS)
        output: "out/merged.txt"
        log: "logs/merge.log"
        run:
            import os, sys
            with open(log[0], "w") as fh:
                print(f"SLURM_JOB_ID={os.environ.get('SLURM_JOB_ID', '')}", file=fh)
                print(f"python={sys.executable}", file=fh)
            with open(output[0], "w") as out:
                for path in input:
                    with open(path) as fh:
                        out.write(fh.read())
    """
)


def _log_vars(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_tiny_workflow_through_slurm(slurm_cluster, tmp_path):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(TINY_SNAKEFILE)

    res = run_snakemake_slurm(
        tmp_path, snakefile, ["all"], ["--slurm-keep-successful-logs"], timeout=300
    )
    assert not res.timed_out, res.tail()
    assert res.returncode == 0, res.tail()

    # outputs
    merged = (tmp_path / "out" / "merged.txt").read_text().split("\n")
    assert merged[:3] == ["chunk 0", "chunk 1", "chunk 2"], res.tail()

    # every job ran inside a SLURM allocation, with the venv's python
    profile = yaml.safe_load((slurm_helpers.SLURM_PROFILE / "config.yaml").read_text())
    partition = profile["default-resources"]["slurm_partition"]
    job_ids = set()
    for chunk in range(3):
        v = _log_vars(tmp_path / "logs" / f"segment_{chunk}.log")
        assert v.get("SLURM_JOB_ID", "").isdigit(), v
        assert v["SLURM_JOB_PARTITION"] == partition
        job_ids.add(v["SLURM_JOB_ID"])
    v = _log_vars(tmp_path / "logs" / "merge.log")
    assert v.get("SLURM_JOB_ID", "").isdigit(), v
    assert Path(v["python"]).parent == Path(sys.executable).parent, v
    job_ids.add(v["SLURM_JOB_ID"])
    assert len(job_ids) == 4, job_ids

    # SLURM's own logs of the jobs (kept with --slurm-keep-successful-logs)
    slurm_logs = sorted((tmp_path / ".snakemake" / "slurm_logs").rglob("*.log"))
    assert {p.stem for p in slurm_logs} == job_ids, slurm_logs

    # squeue (MinJobAge=600) still lists them: COMPLETED, with the profile's resources
    jobs = {j.jobid: j for j in slurm_jobs(tmp_path)}
    assert job_ids <= set(jobs), (job_ids, jobs)
    for jid in job_ids:
        assert jobs[jid].state == "COMPLETED", jobs[jid]
        assert jobs[jid].partition == partition, jobs[jid]
    seg = next(jobs[j] for j in job_ids if jobs[j].comment.startswith("rule_segment"))
    seg_mem = profile["set-resources"]["segment"]["mem_mb"]
    assert seg.min_memory in (f"{seg_mem}M", f"{seg_mem // 1024}G"), seg

    # status came from squeue, not sacct (no accounting database on the test cluster)
    assert "Falling back to 'sacct'" not in res.output, res.tail()


def test_demo_workflow_through_slurm(slurm_cluster, demo_run, tmp_path_factory):
    """The real workflow on the small demo through `--profile profiles/slurm`: same tables as the local run."""
    import pandas as pd

    from tests.workflow_helpers import SMALL_DEMO, SNAKEFILE, write_workdir

    workdir = write_workdir(tmp_path_factory.mktemp("slurm_demo"), SMALL_DEMO)
    res = run_snakemake_slurm(workdir, SNAKEFILE, extra_args=["--latency-wait", "5"], timeout=1200)
    assert res.returncode == 0, res.tail()
    comments = " ".join(j.comment for j in slurm_jobs(workdir))
    for rule in ("probe", "segment", "track", "merge", "summary"):
        assert f"rule_{rule}" in comments, comments
    for video in ("arena_0", "arena_1"):
        local = pd.read_parquet(demo_run / f"results/{video}/animals.parquet")
        slurm = pd.read_parquet(workdir / f"results/{video}/animals.parquet")
        pd.testing.assert_frame_equal(local, slurm)
    summary_local = pd.read_csv(demo_run / "results/cohort_summary.csv")
    pd.testing.assert_frame_equal(summary_local, pd.read_csv(workdir / "results/cohort_summary.csv"))


# The GPU rules the reduced figures run needs, moved to the test cluster's CPU partition without a GPU.
_GPU_RULES_ON_CPU = [f"{rule}:{key}" for rule in ("train_idnet", "identify", "train_behavenet", "behave", "cv_fold")
                     for key in ("slurm_partition=cpu", "gpu=0")]


def test_figures_target_through_slurm(slurm_cluster, tmp_path):
    """`snakemake figures` at reduced size through `--profile profiles/slurm`: every job a SLURM job, then a no-op."""
    import pandas as pd

    from tests.test_workflow_models import MODELS_DEMO
    from tests.workflow_helpers import SMALL_DEMO, SNAKEFILE, write_workdir

    config = {
        **SMALL_DEMO,
        "identification": MODELS_DEMO["identification"],
        "behaviour": {k: v for k, v in MODELS_DEMO["behaviour"].items() if k != "social"},
        "position3d": MODELS_DEMO["position3d"],
        "evaluation": MODELS_DEMO["evaluation"],
        "cv": {"models": {"behavenet": []}, "scheme": "time_blocks", "folds": 2, "purge_frames": 5,
               "label_fractions": [0.5]},
    }
    workdir = write_workdir(tmp_path, config)
    # the target first: --set-resources takes every word after it
    res = run_snakemake_slurm(workdir, SNAKEFILE, [],
                              ["figures", "--latency-wait", "5", "--set-resources", *_GPU_RULES_ON_CPU], timeout=1800)
    assert not res.timed_out and res.returncode == 0, res.tail()
    figures = workdir / "results/figures"
    for name in ("segmentation_identity", "behaviour_ablation", "position3d_error", "bout_statistics"):
        assert (figures / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
        assert len(pd.read_csv(figures / f"{name}.csv")) > 0, name
    comments = " ".join(j.comment for j in slurm_jobs(workdir))
    for rule in ("train_idnet", "train_behavenet", "cv_fold", "cv_aggregate", "train_position3d",
                 "figure_behaviour_ablation", "figure_position3d", "figure_bout_statistics"):
        assert f"rule_{rule}" in comments, (rule, comments)
    again = run_snakemake_slurm(workdir, SNAKEFILE, ["figures"], ["--dry-run"], timeout=300)
    assert again.returncode == 0 and "Nothing to be done" in again.output, again.tail()
