"""The submitit path (launch/submitit_jobs.py) and per-city resources, against the real dev cluster."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from crosscity.launch.slurm.submitit_jobs import submit_run
from tests.helpers.runs import CONFIG, REPO, crosscity, wait_for_step
from tests.helpers.slurm import (
    FAULT_AT,
    assert_city_came_back,
    fault_run_overrides,
    require_slurm,
    wait_coordinator_job,
    wait_finished,
    wait_for_event,
)


def allocated(job: str) -> dict[str, str]:
    """CPUs and memory Slurm gave a job (from accounting: it outlives the controller's memory)."""
    out = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", job, "-o", "AllocCPUS,ReqMem"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    cpus, mem = out.split("\n")[0].split("|")
    return {"cpus": cpus, "mem": mem}


def test_submitit_run_with_per_city_resources_and_a_requeued_city_that_rejoins(
    small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One run through the Python API: city 1 (east) gets its own resources, so two jobs with
    different CPUs and memory; city 1 gets the requeue signal mid-run: only its job is requeued (by
    the teardown of submitit's script), it resumes from its checkpoint and takes part in rounds
    again while city 0 trains on; submitit sees both finish; `crosscity status` reads its jobs.json."""
    require_slurm()
    monkeypatch.chdir(REPO)  # the jobs unpickle launch.submitit_jobs from their working directory
    overrides = [
        *fault_run_overrides(small_dataset),
        "train.run_dir=" + str(tmp_path / "pre"),
        "slurm.per_city={east: {cpus_per_task: 2, mem: 1G}}",
    ]
    pre = submit_run(CONFIG, overrides)
    assert len(pre.record["arrays"]) == 2
    city0, city1 = (job.job_id for job in pre.cities)
    wait_for_step(pre.run_dir, rank=2, step=FAULT_AT, timeout=240)  # city 1, local rank 0
    signalled = time.time()
    subprocess.run(["scancel", "--signal=USR2", city1], check=True, timeout=10)  # what --signal=USR2@T sends
    left = wait_for_event(pre.run_dir, 2, "preempt", signalled, timeout_s=120)
    resumed = wait_for_event(pre.run_dir, 2, "resume", signalled, timeout_s=240)
    assert resumed["step"] == left["step"], (left, resumed)
    assert wait_coordinator_job(pre.record, timeout_s=300).state == "COMPLETED"
    entries = pre.record["entries"]
    states = wait_finished([e["job"] for e in entries], timeout_s=30)
    logs = "\n".join(Path(e["log"]).read_text()[-1500:] for e in entries if Path(e["log"]).exists())
    assert {s.state for s in states.values()} == {"COMPLETED"}, logs
    assert states[city1].restarts == 1 and states[city0].restarts == 0
    assert f"requeueing {city1} only" in Path(entries[1]["log"]).read_text()
    assert all(job.paths.result_pickle.exists() for job in pre.cities)  # submitit saw them finish
    assert_city_came_back(pre.run_dir, left["time"], resumed["time"])

    # `crosscity status` reads the jobs.json that submit_run wrote
    done = crosscity("status", str(pre.run_dir), "--json", timeout=30)
    rows = json.loads(done.stdout)
    assert done.returncode == 0 and [r["name"] for r in rows] == ["city0", "city1"], done.stdout
    assert {r["state"] for r in rows} == {"COMPLETED"} and {r["step"] for r in rows} == {300}
    (outage,) = [o for o in rows[1]["outages"] if o["cause"] == "left: preempted"]
    assert outage["cause"] == "left: preempted" and outage["rejoined"] > outage["back"] > outage["start"]

    # per-city resources reached Slurm
    north, east = (allocated(job.job_id) for job in pre.cities)
    assert (north["cpus"], east["cpus"]) == ("2", "4") and east["mem"] == "1G" and north["mem"] != "1G"
