"""The dev cluster itself, plus the helpers every Slurm test uses (imported by tests/test_slurm_*.py).

These tests talk to the real one-host cluster (`slurm/dev-cluster.sh up`, or `.ci/slurm-setup.sh`
in CI). Outside CI they skip when Slurm is not installed or the cluster is not up; in CI they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from crosscity.launch.slurm.status import JobState, query_states

REPO = Path(__file__).resolve().parents[1]
DEV_CLUSTER = REPO / "slurm" / "dev-cluster.sh"
pytestmark = pytest.mark.slurm


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


def test_up_is_idempotent_and_status_reports_all_nodes() -> None:
    require_slurm()
    again = subprocess.run([str(DEV_CLUSTER), "up"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    status = subprocess.run([str(DEV_CLUSTER), "status"], capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stdout + status.stderr
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True).stdout
    states = dict(line.split() for line in nodes.splitlines())
    assert len(states) >= 4, nodes
    assert set(states.values()) <= {"idle", "mixed", "allocated"}, nodes


def test_job_state_comes_from_the_controller(tmp_path: Path) -> None:
    require_slurm()
    ok = sbatch("--wrap", "true", "-o", "/dev/null", cwd=tmp_path)
    bad = sbatch("--wrap", "exit 3", "-o", "/dev/null", cwd=tmp_path)
    states = wait_finished([ok, bad], timeout_s=30)
    assert states[ok].state == "COMPLETED" and states[ok].exit_code == 0
    assert states[bad].state == "FAILED" and states[bad].exit_code == 3
    assert states[ok].source == "scontrol"
    assert query_states(["99999999"])["99999999"].state == "UNKNOWN"
