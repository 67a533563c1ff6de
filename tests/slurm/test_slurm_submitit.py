"""The submitit path (launch/submitit_jobs.py) and per-city resources, against the real dev cluster."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch

from crosscity.launch.slurm.submitit_jobs import submit_run
from tests.helpers.runs import CONFIG, REPO, crosscity, final_params
from tests.helpers.slurm import (
    requeue_run_overrides,
    require_slurm,
    wait_finished,
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


def test_submitit_runs_complete_and_a_requeued_city_resumes_exactly(
    small_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two runs through the Python API, side by side (one run's worth of waiting):
    `ref` gives city 1 its own resources (two jobs with different CPUs and memory) and runs through;
    `pre` is one array whose city 1 gets the requeue signal mid-run: only that task is requeued,
    and the final parameters equal those of `ref` bit for bit."""
    require_slurm()
    monkeypatch.chdir(REPO)  # the jobs unpickle launch.submitit_jobs from their working directory
    common = requeue_run_overrides(small_dataset)
    ref = submit_run(
        CONFIG,
        [
            *common,
            "train.run_dir=" + str(tmp_path / "ref"),
            "slurm.per_city={east: {cpus_per_task: 2, mem: 1G}}",
        ],
    )
    pre = submit_run(CONFIG, [*common, "train.run_dir=" + str(tmp_path / "pre")])
    assert len(ref.record["arrays"]) == 2 and len(pre.record["arrays"]) == 1
    city0, city1 = (job.job_id for job in pre.cities)
    assert (city0, city1) == (f"{pre.record['arrays'][0]}_0", f"{pre.record['arrays'][0]}_1")
    metrics = pre.run_dir / "metrics" / "rank2.jsonl"  # city 1, local rank 0
    deadline = time.monotonic() + 90
    while not (metrics.exists() and '"step": 6,' in metrics.read_text()):
        assert time.monotonic() < deadline, "city 1 never reached step 6"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", city1], check=True, timeout=10)  # what --signal=USR2@T sends
    entries = ref.record["entries"] + pre.record["entries"]
    states = wait_finished([e["job"] for e in entries], timeout_s=150)
    logs = "\n".join(Path(e["log"]).read_text()[-1500:] for e in entries if Path(e["log"]).exists())
    assert {s.state for s in states.values()} == {"COMPLETED"}, logs
    assert states[city1].restarts == 1 and states[city0].restarts == 0
    assert f"requeueing {city1} only" in Path(pre.record["entries"][1]["log"]).read_text()
    assert all(job.paths.result_pickle.exists() for job in pre.cities)  # submitit saw them finish

    # `crosscity status` reads the jobs.json that submit_run wrote
    done = crosscity("status", str(ref.run_dir), "--json", timeout=30)
    rows = json.loads(done.stdout)
    assert done.returncode == 0 and [r["name"] for r in rows] == ["city0", "city1"], done.stdout
    assert {r["state"] for r in rows} == {"COMPLETED"} and {r["step"] for r in rows} == {300}
    cities = {
        json.loads(line)["city"] for p in (ref.run_dir / "metrics").glob("rank*.jsonl") for line in p.open()
    }
    assert cities == {0, 1}

    # per-city resources reached Slurm
    north, east = (allocated(job.job_id) for job in ref.cities)
    assert (north["cpus"], east["cpus"]) == ("2", "4") and east["mem"] == "1G" and north["mem"] != "1G"

    want, got = final_params(ref.run_dir), final_params(pre.run_dir)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
