"""Helpers of the Slurm tests: the real one-host dev cluster, sbatch, waiting for jobs, submitting a run.

The tests talk to the real cluster (`slurm/dev-cluster.sh up`, or `.ci/slurm-setup.sh` in CI).
Outside CI they skip when Slurm is not installed or the cluster is not up; in CI they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from crosscity.launch.slurm.status import JobState, query_states
from tests.helpers.runs import CONFIG, QUICK, REPO, crosscity

DEV_CLUSTER = REPO / "slurm" / "dev-cluster.sh"


def require_slurm() -> None:
    """Skip (outside CI) or fail (CI=true) when there is no Slurm cluster to submit to."""
    in_ci = os.environ.get("CI") == "true"
    problem = None
    if shutil.which("sbatch") is None:
        problem = "sbatch not installed (run .ci/slurm-setup.sh)"
    elif subprocess.run(["scontrol", "ping"], capture_output=True, timeout=10).returncode != 0:
        problem = "Slurm controller not answering (run slurm/dev-cluster.sh up)"
    if problem:
        if in_ci:
            pytest.fail(problem)
        pytest.skip(problem)


def sbatch(*args: str, cwd: Path) -> str:
    """Submit and return the job id (`sbatch --parsable`)."""
    done = subprocess.run(
        ["sbatch", "--parsable", *args], cwd=cwd, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def wait_finished(job_ids: list[str], timeout_s: float = 60) -> dict[str, JobState]:
    """Poll the real controller until every job id has a final state."""
    deadline = time.monotonic() + timeout_s
    while True:
        states = query_states(job_ids)
        if all(s.finished for s in states.values()):
            return states
        assert time.monotonic() < deadline, f"jobs not finished after {timeout_s}s: {states}"
        time.sleep(0.5)


def max_array_size() -> int:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=10).stdout
    for line in out.splitlines():
        if line.startswith("MaxArraySize"):
            return int(line.split("=")[1])
    raise AssertionError("MaxArraySize not in scontrol show config")


# ------------------------------------------------------------------ submitting runs

SLURM_QUICK = [*QUICK, "optim.name=sgd"]


def requeue_run_overrides(small_dataset: Path) -> list[str]:
    """2 cities x 2 ranks, long enough that a requeue signal lands mid-run even on an idle machine."""
    return [
        f"data.dir={small_dataset}",
        "data.cities=north,east",
        "topology.cities=2",
        "topology.ranks_per_city=2",
        "train.steps=300",
        "wan.sync_every=4",
        *SLURM_QUICK,
    ]


def submit_and_wait(run_dir: Path, overrides: list[str], timeout_s: float = 90) -> dict:
    done = crosscity("submit", str(CONFIG), *overrides, f"train.run_dir={run_dir}")
    assert done.returncode == 0, done.stderr
    jobs = json.loads((run_dir / "slurm" / "jobs.json").read_text())
    states = wait_finished([e["job"] for e in jobs["entries"]], timeout_s=timeout_s)
    logs = "\n".join(Path(e["log"]).read_text()[-1500:] for e in jobs["entries"] if Path(e["log"]).exists())
    assert {s.state for s in states.values()} == {"COMPLETED"}, logs
    return jobs
