"""A city's task lost mid-run on the real dev cluster: the coordinator job brings it back while the
other city trains on (launch/slurm/supervise.py), and `crosscity status` tells the story."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from crosscity.launch.slurm.plan import write_jobs
from crosscity.launch.slurm.status import query_states
from crosscity.launch.slurm.supervise import bring_back
from tests.helpers.runs import CONFIG, crosscity, wait_for_step
from tests.helpers.slurm import (
    FAULT_AT,
    assert_city_came_back,
    fault_run_overrides,
    require_slurm,
    wait_coordinator_job,
    wait_finished,
    wait_for_event,
)


def test_a_cancelled_city_task_comes_back_and_rejoins_while_the_other_trains_on(
    small_dataset: Path, tmp_path: Path
) -> None:
    require_slurm()
    run_dir = tmp_path / "run"
    done = crosscity("submit", str(CONFIG), *fault_run_overrides(small_dataset), f"train.run_dir={run_dir}")
    assert done.returncode == 0, done.stderr
    jobs = json.loads((run_dir / "slurm" / "jobs.json").read_text())
    city1 = jobs["entries"][1]["job"]
    wait_for_step(run_dir, rank=2, step=FAULT_AT, timeout=240)  # city 1, local rank 0
    cancelled = time.time()
    subprocess.run(["scancel", city1], check=True, timeout=10)
    back = wait_for_event(run_dir, 2, "resume", cancelled, timeout_s=240)["time"]
    coordinator = wait_coordinator_job(jobs, timeout_s=300)
    log = next((run_dir / "logs" / "slurm").glob("coordinator-*.out")).read_text()
    assert coordinator.state == "COMPLETED", log[-3000:]
    states = query_states(e["job"] for e in jobs["entries"])
    assert {s.state for s in states.values()} == {"COMPLETED"}, states
    assert states[city1].restarts == 1, "city 1 came back as its own task, requeued"
    assert f"city 1: requeued {city1}" in log and "every city finished" in log

    again = assert_city_came_back(run_dir, cancelled, back)
    assert wait_for_event(run_dir, 2, "heal", cancelled, timeout_s=0)["time"] < again[0]["time"]
    assert {p.name for p in (run_dir / "final").glob("city*.json")} == {"city0.json", "city1.json"}
    assert (run_dir / "summary.json").is_file(), "the coordinator job's crosscity report wrote no summary"

    status = crosscity("status", str(run_dir), timeout=30)
    assert status.returncode == 0, status.stdout + status.stderr
    rows = {r["name"]: r for r in json.loads(crosscity("status", str(run_dir), "--json", timeout=30).stdout)}
    # the outage that began with the cancel (a loaded machine may add a blip of silence before it)
    n, outage = next((i, o) for i, o in enumerate(rows["city1"]["outages"], 1) if o["start"] > cancelled)
    assert outage["cause"] == "silent" and outage["start"] < outage["back"] < outage["rejoined"], outage
    line = next(x for x in status.stdout.splitlines() if x.startswith("city1: "))
    told = (f"outage {n}: silent", "rejoined in round", "requeued ", f"({city1} was CANCELLED)")
    assert all(said in line for said in told), status.stdout
    assert [r["action"] for r in rows["city1"]["supervisor"]] == ["requeue"]
    assert not rows["city0"]["supervisor"], "city 0 never left the queue"
    print(
        f"\n{status.stdout}\n[measured] scancel -> silent {outage['start'] - cancelled:.1f} s, -> requeued "
        f"{rows['city1']['supervisor'][0]['time'] - cancelled:.1f} s, -> back (registered) "
        f"{outage['back'] - cancelled:.1f} s, -> rejoined round {outage['round']} "
        f"{outage['rejoined'] - cancelled:.1f} s"
    )


def wait_for_text(path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not (path.exists() and text in path.read_text()):
        assert time.monotonic() < deadline, f"no {text!r} in {path} after {timeout_s} s"
        time.sleep(0.5)


def test_a_task_slurm_will_not_requeue_is_resubmitted_alone(tmp_path: Path) -> None:
    """--no-requeue: `scontrol requeue` is refused, so the task's script is submitted again for that
    one array index, held until its submitit-style pickle is copied; jobs.json follows the new job."""
    require_slurm()
    script = tmp_path / "cities.sbatch"
    script.write_text(
        "#!/bin/bash\n#SBATCH --array=0-1\n#SBATCH --no-requeue\n"
        f"#SBATCH --output={tmp_path}/city-%A_%a.out\n"
        'echo "task $SLURM_ARRAY_TASK_ID"; sleep 300\n'
    )
    array = subprocess.run(
        ["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    job = f"{array}_1"
    pickle = tmp_path / f"{job}_submitted.pkl"
    pickle.write_bytes(b"the task's arguments")
    entry = {
        "name": "city1",
        "job": job,
        "run_dir": str(tmp_path),
        "ranks": [2, 3],
        "log": str(tmp_path / f"city-{job}.out"),
        "script": str(script),
        "pickle": str(pickle),
    }
    write_jobs(tmp_path, {"kind": "run", "coordinator": None, "arrays": [array], "entries": [entry]})
    new = job
    try:
        wait_for_text(Path(entry["log"]), "task 1", timeout_s=60)  # running: a pending task just vanishes
        subprocess.run(["scancel", job], check=True, timeout=10)
        state = wait_finished([job], timeout_s=30)[job]
        assert state.state == "CANCELLED"
        new = bring_back(tmp_path, entry, state)
        assert new != job and new.endswith("_1"), new
        recorded = json.loads((tmp_path / "slurm" / "jobs.json").read_text())
        moved = recorded["entries"][0]
        assert moved["job"] == new and moved["log"] == str(tmp_path / f"city-{new}.out")
        assert recorded["arrays"] == [array, new.split("_")[0]]
        assert [r["action"] for r in moved["supervisor"]] == ["resubmit"]
        assert "disabled" in moved["supervisor"][0]["reason"]  # why Slurm refused the requeue
        assert Path(moved["pickle"]).read_bytes() == pickle.read_bytes()
        wait_for_text(Path(moved["log"]), "task 1", timeout_s=60)  # released, the same array index
    finally:
        subprocess.run(["scancel", array, new.split("_")[0]], timeout=10)
