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


FAULT_AT = 40  # city 1's step at which a test faults it (cancel, requeue signal)


def fault_run_overrides(small_dataset: Path) -> list[str]:
    """2 cities x 2 ranks of diloco, long enough that a fault lands mid-run even on an idle machine,
    with the fast timing of docs/fault_tolerance.md's hierarchy and checkpoints to resume from."""
    return [
        f"data.dir={small_dataset}",
        "data.cities=north,east",
        "topology.cities=2",
        "topology.ranks_per_city=2",
        "wan.algorithm=diloco",
        "train.steps=300",
        "wan.sync_every=5",
        "train.checkpoint_every=10",
        "wan.heartbeat_s=0.2",
        "wan.dead_after_s=1",
        "wan.round_timeout_s=3",
        *SLURM_QUICK,
    ]


def records(run_dir: Path, rank: int, kind: str) -> list[dict]:
    """The metrics records of one kind (train, wan, event) a global rank wrote, in order."""
    lines = (run_dir / "metrics" / f"rank{rank}.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, filter(str.strip, lines)) if r["kind"] == kind]


def event_after(run_dir: Path, rank: int, event: str, after: float) -> dict | None:
    found = (r for r in records(run_dir, rank, "event") if r["event"] == event and r["time"] > after)
    return next(found, None)


def wait_for_event(run_dir: Path, rank: int, event: str, after: float, timeout_s: float) -> dict:
    """Poll the rank's metrics until it logs `event` (resume, heal, preempt) later than `after`."""
    deadline = time.monotonic() + timeout_s
    while (found := event_after(run_dir, rank, event, after)) is None:
        assert time.monotonic() < deadline, f"rank {rank} logged no {event} event within {timeout_s} s"
        time.sleep(0.5)
    return found


def assert_city_came_back(run_dir: Path, away: float, back: float) -> list[dict]:
    """City 0 trained on and federated without city 1 while it was away (from `away` to `back`);
    city 1 took part in a committed round after its return. Returns those rounds (city 1's records)."""
    steps = [r["step"] for r in records(run_dir, 0, "train") if away <= r["time"] <= back]
    assert steps and max(steps) - min(steps) >= 10, f"city 0 did not keep training: {len(steps)} steps"
    alone = [r for r in records(run_dir, 0, "wan") if away < r["time"] < back and r["participants"] == [0]]
    assert alone, "no round committed with city 0 alone while city 1 was away"
    again = [r for r in records(run_dir, 2, "wan") if r["time"] > back and 1 in r["participants"]]
    assert again, "city 1 took part in no committed round after it came back"
    assert again[0]["version"] > alone[0]["version"], "city 1 came back to a global that had not moved"
    return again


def wait_coordinator_job(jobs: dict, timeout_s: float) -> JobState:
    """The coordinator job ends once every city finished (and it wrote the report): the run's end."""
    return wait_finished([jobs["coordinator"]], timeout_s=timeout_s)[jobs["coordinator"]]


def submit_and_wait(run_dir: Path, overrides: list[str], timeout_s: float = 90) -> dict:
    done = crosscity("submit", str(CONFIG), *overrides, f"train.run_dir={run_dir}")
    assert done.returncode == 0, done.stderr
    jobs = json.loads((run_dir / "slurm" / "jobs.json").read_text())
    states = wait_finished([e["job"] for e in jobs["entries"]], timeout_s=timeout_s)
    logs = "\n".join(Path(e["log"]).read_text()[-1500:] for e in jobs["entries"] if Path(e["log"]).exists())
    assert {s.state for s in states.values()} == {"COMPLETED"}, logs
    return jobs
