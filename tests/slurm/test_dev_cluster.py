"""The dev cluster itself, plus the helpers every Slurm test uses (imported by tests/test_slurm_*.py).

These tests talk to the real one-host cluster (`slurm/dev-cluster.sh up`, or `.ci/slurm-setup.sh`
in CI). Outside CI they skip when Slurm is not installed or the cluster is not up; in CI they fail.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from crosscity.launch.slurm.status import query_states
from tests.helpers.slurm import DEV_CLUSTER, require_slurm, sbatch, wait_finished


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
