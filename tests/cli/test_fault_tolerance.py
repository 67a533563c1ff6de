"""Each kind of fault on the local launcher, with real processes: the other city keeps stepping
through the outage, the faulted city (or the coordinator) comes back and takes part in rounds again,
and the run exits 0. (A link cut needs network namespaces: tests/netns/test_chaos.py.)"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from crosscity.core.rank_pids import rank_pids
from tests.helpers.runs import (
    CONFIG,
    QUICK,
    crosscity,
    final_params,
    start_crosscity,
    wait_for_step,
)

STEPS = 300
FAULT_AT = 40
TIMING = ["wan.heartbeat_s=0.2", "wan.dead_after_s=1.0", "wan.round_timeout_s=3.0"]
RESTARTS = ("kill_city", "kill_rank", "preempt")


def records(run_dir: Path, rank: int) -> list[dict]:
    path = run_dir / "metrics" / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def steps_during(run_dir: Path, rank: int, start: float, end: float) -> int:
    steps = [r["step"] for r in records(run_dir, rank) if r["kind"] == "train" and start <= r["time"] <= end]
    return max(steps) - min(steps) if steps else 0


def committed_with(run_dir: Path, rank: int, city: int, after: float) -> list[dict]:
    return [
        r
        for r in records(run_dir, rank)
        if r["kind"] == "wan" and r["time"] > after and city in r["participants"]
    ]


def city_pids(run_dir: Path, city: int) -> list[int]:
    return [pid for (c, _), pid in rank_pids(run_dir).items() if c == city]


def signal_city(run_dir: Path, city: int, sig: signal.Signals) -> None:
    for pid in city_pids(run_dir, city):
        os.kill(pid, sig)


def wait_until(condition, timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return time.time()


def coordinator_pid(run_dir: Path) -> int | None:
    try:
        return json.loads((run_dir / "coordinator.json").read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None  # between two coordinators


def resumed_after(run_dir: Path, rank: int, t: float) -> bool:
    return any(
        r["kind"] == "event" and r.get("event") == "resume" and r["time"] > t for r in records(run_dir, rank)
    )


def all_new(pids: list[int], before: list[int]) -> bool:
    """Every rank of the city wrote its pid file again: the restarted city's processes all exist."""
    return len(pids) == len(before) and not set(pids) & set(before)


def city_1_back(run_dir: Path, before: list[int], resumed) -> float:
    """A restart is a fork of the city's fork server, back in seconds; a long outage leaves the city
    far behind one still training, and it must catch up. So the new city 1 is held (SIGSTOP) from its
    first moment until city 0 has trained 60 steps past the fault; then city 0 is held until city 1 is
    back (city 0 alone would finish a run this short first)."""
    wait_until(lambda: all_new(city_pids(run_dir, 1), before), 120, "city 1 restarted")
    signal_city(run_dir, 1, signal.SIGSTOP)
    wait_for_step(run_dir, rank=0, step=FAULT_AT + 60)
    signal_city(run_dir, 0, signal.SIGSTOP)
    signal_city(run_dir, 1, signal.SIGCONT)
    try:
        return wait_until(resumed, 120, "city 1 back")
    finally:
        signal_city(run_dir, 0, signal.SIGCONT)


@pytest.mark.parametrize("fault", ["kill_city", "kill_rank", "stop_city", "preempt", "kill_coordinator"])
def test_the_others_train_on_and_the_faulted_part_comes_back(
    small_dataset: Path, tmp_path: Path, fault: str
) -> None:
    run_dir = tmp_path / "run"
    args = [
        f"data.dir={small_dataset}",
        "data.cities=north,east",
        "topology.cities=2",
        "wan.algorithm=diloco",
        "wan.sync_every=5",
        "train.checkpoint_every=10",
        f"train.steps={STEPS}",
        *TIMING,
        *QUICK,
        f"train.run_dir={run_dir}",
    ]
    launcher = start_crosscity("run", str(CONFIG), *args)
    try:
        wait_for_step(run_dir, rank=2, step=FAULT_AT)
        t0, before = time.time(), city_pids(run_dir, 1)
        if fault == "kill_city":
            signal_city(run_dir, 1, signal.SIGKILL)
            back = city_1_back(run_dir, before, lambda: resumed_after(run_dir, 2, t0))
        elif fault == "kill_rank":
            os.kill(rank_pids(run_dir)[(1, 1)], signal.SIGKILL)
            back = city_1_back(run_dir, before, lambda: resumed_after(run_dir, 3, t0))
        elif fault == "stop_city":
            signal_city(run_dir, 1, signal.SIGSTOP)
            time.sleep(4.0)  # well past wan.dead_after_s: the coordinator stops waiting for it
            signal_city(run_dir, 1, signal.SIGCONT)
            back = time.time()
        elif fault == "preempt":
            signal_city(run_dir, 1, signal.SIGUSR2)
            back = city_1_back(run_dir, before, lambda: resumed_after(run_dir, 2, t0))
        else:
            pid = coordinator_pid(run_dir)
            os.kill(pid, signal.SIGKILL)
            back = wait_until(
                lambda: coordinator_pid(run_dir) not in (None, pid), 60, "the coordinator restarted"
            )
        out, err = launcher.communicate(timeout=600)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, err[-3000:]
    assert steps_during(run_dir, 0, t0, back) >= 10, "city 0 did not keep training through the outage"
    faulted_rank = 0 if fault == "kill_coordinator" else 2
    again = committed_with(run_dir, faulted_rank, 0 if fault == "kill_coordinator" else 1, back)
    assert again, f"no committed round after the {fault} came back"
    assert (
        any(1 in r["participants"] and 0 in r["participants"] for r in again) or fault != "kill_coordinator"
    )
    if fault in RESTARTS:
        events = [r for r in records(run_dir, 2) if r["kind"] == "event" and r["time"] > t0]
        assert any(e["event"] == "heal" for e in events), (
            "the restarted city did not heal from the global model"
        )
        caught_up = [e for e in events if e["event"] == "catch_up"]
        ahead = max(r["step"] for r in records(run_dir, 0) if r["kind"] == "train" and r["time"] <= back)
        assert caught_up and caught_up[0]["skipped"] > 0, "the restarted city did not catch up"
        assert caught_up[0]["to_step"] >= ahead - 20, "it caught up to less than city 0's step"
    assert final_params(run_dir)  # the run's final model exists: the run ended normally


def test_a_run_directory_belongs_to_one_config(small_dataset: Path, tmp_path: Path) -> None:
    base = [
        f"data.dir={small_dataset}",
        "data.cities=north,east",
        "topology.cities=2",
        "train.steps=5",
        *QUICK,
        f"train.run_dir={tmp_path}",
    ]
    assert crosscity("run", str(CONFIG), *base).returncode == 0
    again = crosscity("run", str(CONFIG), *base)  # the same config: an explicit resume, nothing to do
    assert again.returncode == 0, again.stderr[-2000:]
    other = crosscity("run", str(CONFIG), *base, "wan.sync_every=7")
    assert other.returncode == 2 and other.stderr.strip().count("\n") == 0
    assert "wan.sync_every" in other.stderr and str(tmp_path) in other.stderr
