"""crosscity submit / status against the real dev cluster, and the scripts it generates."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import crosscity as crosscity_api
from crosscity.launch.slurm.plan import write_jobs
from crosscity.launch.slurm.status import query_states
from tests.helpers.launchers import require_mpiexec
from tests.helpers.runs import CONFIG, REPO, crosscity, wait_for_step
from tests.helpers.slurm import (
    DEV_CLUSTER,
    FAULT_AT,
    SLURM_QUICK,
    assert_city_came_back,
    fault_run_overrides,
    max_array_size,
    require_slurm,
    sbatch,
    wait_coordinator_job,
    wait_finished,
    wait_for_event,
)


def test_dry_run_prints_scripts_and_submits_nothing(tmp_path: Path) -> None:
    require_slurm()
    n = max_array_size() + 2
    run_dir = tmp_path / "dry"
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    done = crosscity("submit", str(CONFIG), f"topology.cities={n}", f"train.run_dir={run_dir}", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("#!/bin/bash") == 3  # coordinator + two array chunks
    assert (
        f"#SBATCH --array=0-{max_array_size() - 1}\n" in done.stdout
        and "#SBATCH --array=0-1\n" in done.stdout
    )
    via = crosscity(
        "submit",
        str(CONFIG),
        f"topology.cities={n}",
        f"train.run_dir={run_dir}",
        "--dry-run",
        "--via",
        "submitit",
    )
    assert via.returncode == 0, via.stderr
    assert via.stdout.count("#!/bin/bash") == 3 and "update_parameters(" in via.stdout
    size = max_array_size()
    assert f"#SBATCH --array=0-{size - 1}%{size}\n" in via.stdout and "#SBATCH --array=0-1%2\n" in via.stdout
    assert not run_dir.exists()
    after = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    assert set(after.split()) <= set(before.split())  # nothing new (an earlier test's job may have ended)


def test_cancelled_job_shows_as_cancelled_within_30s_without_accounting(tmp_path: Path) -> None:
    require_slurm()
    switch = subprocess.run(
        [str(DEV_CLUSTER), "accounting", "off"], capture_output=True, text=True, timeout=60
    )
    assert switch.returncode == 0, switch.stdout + switch.stderr
    try:
        assert subprocess.run(["sacct", "-n", "-X"], capture_output=True, timeout=10).returncode != 0
        job = sbatch("--wrap", "sleep 300", "-o", str(tmp_path / "job.out"), cwd=tmp_path)
        entry = {
            "name": "city0",
            "job": job,
            "run_dir": str(tmp_path),
            "ranks": [0],
            "log": str(tmp_path / "job.out"),
        }
        write_jobs(tmp_path, {"kind": "run", "arrays": [job], "entries": [entry]})
        subprocess.run(["scancel", job], check=True, timeout=10)
        start = time.monotonic()
        while True:
            done = crosscity("status", str(tmp_path), "--json", timeout=30)
            rows = json.loads(done.stdout)
            if rows[0]["state"] == "CANCELLED":
                break
            assert time.monotonic() - start < 30, rows
            time.sleep(0.5)
        assert done.returncode == 1  # a city that did not complete
        assert time.monotonic() - start < 30
    finally:
        subprocess.run([str(DEV_CLUSTER), "accounting", "on"], capture_output=True, timeout=60, check=True)


@pytest.mark.parametrize(
    ("template", "extra"),
    [
        ("city.sbatch", ""),
        ("city-mpi.sbatch", " lan.backend=gloo"),
    ],  # Horovod is optional: MPI start, gloo LAN
)
def test_city_template_trains_one_city_of_two_tasks(
    small_dataset: Path, tmp_path: Path, template: str, extra: str
) -> None:
    require_slurm()
    if template == "city-mpi.sbatch":
        require_mpiexec()
    run_dir = tmp_path / "city"
    overrides = f"data.dir={small_dataset} data.cities=north train.steps=8 {' '.join(SLURM_QUICK)}{extra}"
    env = f"ALL,CONFIG={CONFIG},RUN_DIR={run_dir},OVERRIDES={overrides},PYTHON={sys.executable}"
    out = tmp_path / "city.out"
    job = sbatch(
        "-N2",
        "--ntasks-per-node=1",
        f"--export={env}",
        "-o",
        str(out),
        str(REPO / "slurm" / template),
        cwd=REPO,
    )
    state = wait_finished([job], timeout_s=90)[job]
    assert state.state == "COMPLETED", out.read_text()[-3000:]
    assert (run_dir / "summary.json").is_file() and (run_dir / "final" / "model.pt").is_file()
    assert {p.name for p in (run_dir / "metrics").glob("rank*.jsonl")} == {"rank0.jsonl", "rank1.jsonl"}


def test_submit_two_cities_of_two_tasks(small_dataset: Path, tmp_path: Path) -> None:
    """Through the public API; the coordinator job writes the report once the cities finished."""
    require_slurm()
    common = [
        f"data.dir={small_dataset}",
        "data.cities=north,east",
        "topology.cities=2",
        "topology.ranks_per_city=2",
    ]
    overrides = [*common, "train.steps=8", *SLURM_QUICK, f"train.run_dir={tmp_path / 'run'}"]
    run_dir, jobs = crosscity_api.submit(CONFIG, overrides)
    assert run_dir == (tmp_path / "run").resolve() and (run_dir / "config.yaml").is_file()
    states = wait_finished([e["job"] for e in jobs["entries"]], timeout_s=90)
    assert {s.state for s in states.values()} == {"COMPLETED"}, states
    assert [e["name"] for e in jobs["entries"]] == ["city0", "city1"]
    ranks = {
        json.loads(line)["global_rank"]
        for p in (run_dir / "metrics").glob("rank*.jsonl")
        for line in p.read_text().splitlines()
    }
    assert ranks == {0, 1, 2, 3}
    cities = {
        json.loads(line)["city"]
        for p in (run_dir / "metrics").glob("rank*.jsonl")
        for line in p.read_text().splitlines()
    }
    assert cities == {0, 1}
    assert wait_finished([jobs["coordinator"]], timeout_s=60)[jobs["coordinator"]].state == "COMPLETED"
    assert (run_dir / "report.md").is_file() and (run_dir / "plots" / "loss.png").is_file()
    coordinator_log = next((run_dir / "logs" / "slurm").glob("coordinator-*.out")).read_text()
    assert f"wrote {run_dir / 'report.md'}" in coordinator_log, coordinator_log[-2000:]


def test_requeue_signal_requeues_only_that_city_which_resumes_heals_and_rejoins(
    small_dataset: Path, tmp_path: Path
) -> None:
    """The requeue signal to city 1: it checkpoints and leaves, only its task is requeued while city 0
    trains on; back, it resumes from exactly that checkpoint, heals from the global model that moved
    on without it and takes part in rounds again; the run completes."""
    require_slurm()
    run_dir = tmp_path / "pre"
    done = crosscity("submit", str(CONFIG), *fault_run_overrides(small_dataset), f"train.run_dir={run_dir}")
    assert done.returncode == 0, done.stderr
    jobs = json.loads((run_dir / "slurm" / "jobs.json").read_text())
    city0, city1 = (e["job"] for e in jobs["entries"])
    wait_for_step(run_dir, rank=2, step=FAULT_AT, timeout=240)  # city 1, local rank 0
    signalled = time.time()
    subprocess.run(["scancel", "--signal=USR2", city1], check=True, timeout=10)  # what --signal=USR2@T sends
    left = wait_for_event(run_dir, 2, "preempt", signalled, timeout_s=120)
    resumed = wait_for_event(run_dir, 2, "resume", signalled, timeout_s=240)
    assert resumed["step"] == left["step"], (left, resumed)  # exactly where it checkpointed
    coordinator = wait_coordinator_job(jobs, timeout_s=300)
    assert coordinator.state == "COMPLETED", coordinator
    states = query_states([city0, city1])
    assert {s.state for s in states.values()} == {"COMPLETED"}, states
    assert states[city1].restarts == 1 and states[city0].restarts == 0
    assert f"requeueing {city1} only" in Path(jobs["entries"][1]["log"]).read_text()
    again = assert_city_came_back(run_dir, left["time"], resumed["time"])
    assert wait_for_event(run_dir, 2, "heal", signalled, timeout_s=0)["time"] < again[0]["time"]
    assert {p.name for p in (run_dir / "final").glob("city*.json")} == {"city0.json", "city1.json"}
