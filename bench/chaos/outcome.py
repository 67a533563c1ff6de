"""What a chaos run did with its faults, read back from its run directory.

Why a module of its own: the chaos benchmark's numbers are defined here, once (RESULTS.md quotes
them). Times come from two clocks of the same host: the coordinator's events
(RUN_DIR/coordinator/events.jsonl: join, leave, silent, round with its participants, restored)
and the ranks' metrics (a `train` record per step, `lan` when a rank process starts, `heal`
events with their bytes). Per fault, from the moment it was injected:

- detect: the coordinator's first event for the city: `silent` (its heartbeats stopped: killed,
  stopped, cut off), `leave` (preempted) or `join` (restarted, it registered again before it was
  silent for `wan.dead_after_s`); for the coordinator itself the first round a city could not finish
  (a `wan` record with a status other than committed);
- trains again: the city's next `train` record from a process that can train - after its restart
  (kills, preemption: the first step after a new `lan` record), after SIGCONT (stopped), at once
  for a link cut (the city trains on alone); none for the coordinator (nobody stops);
- back in quorum: its first committed round (coordinator `round` event) with itself in
  `participants` once it trains again (a cut: once its link is back); for the coordinator, the
  first round committed after it was `restored`.

A city is *under a fault* from the injection until it is back in a quorum. The longest healthy
pause is the largest gap between two consecutive steps (validation passes subtracted) of a city not
under a fault at that time. Goodput: the samples the run trained (each rank's count in its final
state: work redone after a kill counts once, steps skipped by catch-up not at all) over the wall
time from the first step to the last.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosscity.bench.chaos.faults import (
    CUT_LINK,
    KILL_COORDINATOR,
    STOP_CITY,
    Fault,
    read_events,
)
from crosscity.train.observe.metrics_log import read_records


@dataclass
class FaultResult:
    fault: Fault
    detect_s: float | None = None
    train_again_s: float | None = None
    back_s: float | None = None  # back in a committed round
    longest_gap_s: float = 0.0  # the faulted city's (any city's, for the coordinator) longest step gap

    @property
    def survived(self) -> bool:
        return self.fault.injected is not None and self.back_s is not None


@dataclass
class Pause:
    seconds: float = 0.0
    city: int = -1
    at: float = 0.0  # epoch seconds when it began
    step: int = 0


@dataclass
class RunStats:
    wall_s: float  # first step to last step
    trained_samples: int  # in every rank's final state: steps skipped by catch-up not, redone ones once
    computed_samples: int  # every step computed, also those redone after a kill
    final_rmse: float | None
    wan_bytes: int  # accounted: bytes_sent of every rank's wan records
    heal_bytes: int  # the heal events' bytes (fetching the global model after a restart)
    heals: int
    rounds: int  # committed at the coordinator (all fragments)
    skipped: int
    longest_pause: Pause = field(default_factory=Pause)  # of a city not under a fault
    median_compute_s: float = 0.0  # median t_compute of every step: how fast the host was in this run

    @property
    def goodput(self) -> float:
        return self.trained_samples / max(self.wall_s, 1e-9)


@dataclass
class CityTimeline:
    """One city's steps, seen through its local rank 0."""

    steps: list[tuple[float, int, int]] = field(default_factory=list)  # (time, step, process number)
    starts: list[float] = field(default_factory=list)  # when each of its rank-0 processes started
    evals: list[tuple[float, float]] = field(default_factory=list)  # (time, seconds)

    def eval_between(self, a: float, b: float) -> float:
        return sum(s for t, s in self.evals if a < t <= b)

    def first_step_after(self, t: float, new_process: bool = False) -> float | None:
        if new_process:
            t = next((s for s in self.starts if s > t), math.inf)
        return next((when for when, _, _ in self.steps if when > t), None)

    def gaps(self) -> list[tuple[float, float, int]]:
        """(start, seconds, step) between consecutive steps of one process, validation excluded."""
        out = []
        for (a, step, pa), (b, _, pb) in zip(self.steps, self.steps[1:], strict=False):
            if pa == pb:
                out.append((a, b - a - self.eval_between(a, b), step))
        return out


def timelines(records: list[dict[str, Any]]) -> dict[int, CityTimeline]:
    out: dict[int, CityTimeline] = defaultdict(CityTimeline)
    for r in sorted((r for r in records if r["local_rank"] == 0), key=lambda r: r["time"]):
        line = out[r["city"]]
        if r["kind"] == "lan":
            line.starts.append(r["time"])
        elif r["kind"] == "train":
            line.steps.append((r["time"], r["step"], len(line.starts)))
        elif r["kind"] == "eval":
            line.evals.append((r["time"], r.get("seconds", 0.0)))
    return out


def _first_event(
    events: list[dict[str, Any]], after: float, kind: str, city: int | None = None
) -> float | None:
    return next(
        (
            e["time"]
            for e in events
            if e["event"] == kind and e["time"] > after and (city is None or e.get("city") == city)
        ),
        None,
    )


def _first_round(events: list[dict[str, Any]], after: float | None, city: int | None) -> float | None:
    if after is None:
        return None
    return next(
        (
            e["time"]
            for e in events
            if e["event"] == "round" and e["time"] > after and (city is None or city in e["participants"])
        ),
        None,
    )


def analyse_fault(
    fault: Fault, events: list[dict[str, Any]], wan: list[dict[str, Any]], lines: dict[int, CityTimeline]
) -> FaultResult:
    result = FaultResult(fault)
    t0 = fault.injected
    if t0 is None:
        return result
    if fault.kind == KILL_COORDINATOR:
        failed = [r["time"] for r in wan if r["time"] > t0 and r.get("status", "committed") != "committed"]
        result.detect_s = min(failed) - t0 if failed else None
        restored = _first_event(events, t0, "restored")
        back = _first_round(events, restored, None)
        result.back_s = None if back is None else back - t0
        end = back or t0
        result.longest_gap_s = max(
            (s for line in lines.values() for a, s, _ in line.gaps() if a + s > t0 and a < end), default=0.0
        )
        return result
    assert fault.city is not None
    line = lines[fault.city]
    # silent, or it says it leaves (preempted), or a restarted city registers again before it went
    # silent for dead_after_s: whichever the coordinator learns first
    seen = [_first_event(events, t0, kind, fault.city) for kind in ("silent", "leave", "join")]
    detect = min((t for t in seen if t is not None), default=None)
    result.detect_s = None if detect is None else detect - t0
    if fault.kind == STOP_CITY:
        again = line.first_step_after(fault.restored or math.inf)
    elif fault.kind == CUT_LINK:
        again = line.first_step_after(t0)
    else:  # the city (re)starts: the first step of a process started after the fault
        again = line.first_step_after(t0, new_process=True)
    result.train_again_s = None if again is None else again - t0
    ready = fault.restored if fault.kind == CUT_LINK else again
    back = _first_round(events, ready, fault.city)
    result.back_s = None if back is None else back - t0
    end = back or math.inf
    result.longest_gap_s = max((s for a, s, _ in line.gaps() if a + s > t0 and a < end), default=0.0)
    return result


def fault_windows(results: list[FaultResult], end: float) -> dict[int, list[tuple[float, float]]]:
    """Per city, when it was under a fault: from the injection until it was back in a quorum."""
    out: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for r in results:
        if r.fault.city is not None and r.fault.injected is not None:
            back = r.fault.injected + r.back_s if r.back_s is not None else end
            out[r.fault.city].append((r.fault.injected, back))
    return out


def run_stats(run_dir: Path, results: list[FaultResult] | None = None) -> RunStats:
    """The whole run's numbers; with `results`, the longest pause is of cities not under a fault."""
    run_dir = Path(run_dir)
    records = read_records(run_dir)
    events = read_events(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    if not train:
        raise ValueError(f"{run_dir}: no train records (did the run start?)")
    first = min(r["time"] - r["t_step"] for r in train)
    last = max(r["time"] for r in train)
    final_samples: dict[int, int] = {}
    for r in train:
        final_samples[r["global_rank"]] = max(final_samples.get(r["global_rank"], 0), r["samples"])
    batch = train[0]["samples"] // max(train[0]["step"], 1)
    heals = [r for r in records if r["kind"] == "event" and r.get("event") == "heal"]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    lines = timelines(records)
    windows = fault_windows(results or [], last)
    pause = Pause()
    for city, line in lines.items():
        for a, seconds, step in line.gaps():
            if any(a < w1 and a + seconds > w0 for w0, w1 in windows.get(city, [])):
                continue
            if seconds > pause.seconds:
                pause = Pause(seconds, city, a, step)
    return RunStats(
        wall_s=last - first,
        trained_samples=sum(final_samples.values()),
        computed_samples=len(train) * batch,
        final_rmse=summary.get("overall", {}).get("val_rmse"),
        wan_bytes=sum(r["bytes_sent"] for r in records if r["kind"] == "wan"),
        heal_bytes=sum(r.get("bytes", 0) for r in heals),
        heals=len(heals),
        rounds=sum(e["event"] == "round" for e in events),
        skipped=sum(e["event"] == "round_skipped" for e in events),
        longest_pause=pause,
        median_compute_s=statistics.median(r["t_compute"] for r in train),
    )


def analyse(run_dir: Path, faults: list[Fault]) -> tuple[list[FaultResult], RunStats]:
    records = read_records(run_dir)
    events = read_events(run_dir)
    wan = [r for r in records if r["kind"] == "wan"]
    lines = timelines(records)
    results = [analyse_fault(f, events, wan, lines) for f in faults]
    return results, run_stats(run_dir, results)


def nearest_rank(values: list[float], q: float) -> float | None:
    """The q-quantile by nearest rank (with few samples p95 is the largest: no interpolation)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


@dataclass
class ChaosRun:
    label: str
    exit_code: int
    seconds: float  # the whole run, process start to exit
    faults: list[Fault] = field(default_factory=list)
    results: list[FaultResult] = field(default_factory=list)
    stats: RunStats | None = None
    wire_bytes: list[int] = field(default_factory=list)
    hub_bytes: int = 0
    started: float | None = None  # epoch seconds of the start gate: the plan's zero
    load: list[float] = field(default_factory=list)  # the host's 1-min load average, sampled
