"""The chaos benchmark's faults: a seeded plan, and an injector that carries it out on a live run.

Why a plan fixed up front: the same seed gives the same faults (kind, target, planned time,
duration), so two chaos runs differ only by what the system did with them. The plan keeps at
least `cities - max_down` cities healthy at every moment and leaves each faulted city (and the
coordinator) time to recover before it is hit again; at run time the injector additionally holds a
fault until its target is back in a committed round after its previous fault (a slow restart on a
loaded host must not turn two faults into one), and records when each one really happened.

Fault kinds (what a WAN deployment sees): SIGKILL of every rank of a city, SIGKILL of one rank,
SIGSTOP of a city for a while then SIGCONT (a hung site), the city's WAN link down for a while
(its bridge port: nothing in or out, the ranks keep running), SIGKILL of the coordinator (the
launcher restarts it), and the requeue signal to a city's ranks (preemption).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosscity.bench.wan.emulator import WanEmulator
from crosscity.core.rank_pids import rank_pids

KILL_CITY, KILL_RANK, STOP_CITY, CUT_LINK, KILL_COORDINATOR, PREEMPT = (
    "kill_city",
    "kill_rank",
    "stop_city",
    "cut_link",
    "kill_coordinator",
    "preempt",
)
KINDS = (KILL_CITY, KILL_RANK, STOP_CITY, CUT_LINK, KILL_COORDINATOR, PREEMPT)
OUTAGES = (STOP_CITY, CUT_LINK)  # last `duration_s`, then restored
EVENTS = Path("coordinator") / "events.jsonl"


@dataclass
class Fault:
    kind: str
    at_s: float  # planned: seconds after the run's start gate opened
    city: int | None = None  # None: the coordinator
    rank: int | None = None  # kill_rank: which local rank
    duration_s: float = 0.0  # stop_city, cut_link
    injected: float | None = None  # epoch seconds, when it really happened
    restored: float | None = None  # outages: when it ended (SIGCONT, link up)
    note: str = ""

    def describe(self) -> str:
        target = "coordinator" if self.city is None else f"city {self.city}"
        if self.kind == KILL_RANK:
            target += f" rank {self.rank}"
        return f"{self.kind} {target}" + (f" for {self.duration_s:.0f} s" if self.kind in OUTAGES else "")


@dataclass(frozen=True)
class PlanShape:
    """How the seeded plan spreads its faults (seconds after the start gate)."""

    faults: int = 24
    start_s: float = 45.0  # first fault not before (every city trained a few rounds)
    span_s: float = 660.0  # planned times spread over [start_s, span_s] (later if cities are busy)
    outage_s: tuple[float, float] = (30.0, 90.0)  # SIGSTOP and link-cut durations
    recovery_s: float = 45.0  # a faulted city is left alone this long after its fault ended
    max_down: int = 2  # cities under a fault at once


def plan_faults(seed: int, cities: int, ranks: int, shape: PlanShape = PlanShape()) -> list[Fault]:
    """Every kind equally often (shuffled), at seeded times, on seeded targets, within `shape`."""
    if cities <= shape.max_down:
        raise ValueError(
            f"cities={cities}: need more than max_down={shape.max_down} (someone must stay healthy)"
        )
    rng = random.Random(seed)
    kinds = [KINDS[i % len(KINDS)] for i in range(shape.faults)]
    rng.shuffle(kinds)
    gap = (shape.span_s - shape.start_s) / max(shape.faults - 1, 1)
    busy = [0.0] * cities  # until when each city is under a fault (plus its recovery)
    coordinator_busy, t, plan = 0.0, shape.start_s, []
    for kind in kinds:
        if kind == KILL_COORDINATOR:
            t = max(t, coordinator_busy)
            plan.append(Fault(kind, round(t, 1)))
            coordinator_busy = t + shape.recovery_s
        else:
            # not before a city is free and at most max_down - 1 others are under a fault
            t = max(t, sorted(busy)[cities - shape.max_down])
            city = rng.choice([c for c in range(cities) if busy[c] <= t])
            duration = round(rng.uniform(*shape.outage_s), 1) if kind in OUTAGES else 0.0
            rank = rng.randrange(ranks) if kind == KILL_RANK else None
            plan.append(Fault(kind, round(t, 1), city, rank, duration))
            busy[city] = t + duration + shape.recovery_s
        t += rng.uniform(0.5 * gap, 1.5 * gap)
    return plan


# ------------------------------------------------------------------ finding the run's processes


def coordinator_pid(run_dir: Path) -> int | None:
    try:
        return int(json.loads((Path(run_dir) / "coordinator.json").read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # between two coordinators


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """The coordinator's events (join, leave, silent, live, round, round_skipped, restored, ...)."""
    path = Path(run_dir) / EVENTS
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


# ------------------------------------------------------------------ carrying the plan out


@dataclass
class Injector:
    """Call `poll()` every fraction of a second while the run is alive; `close()` in a `finally`."""

    run_dir: Path
    wan: WanEmulator
    plan: list[Fault]
    ranks: int  # per city: a city is hit only when all of its ranks are up
    requeue_signal: str = "USR2"
    log: Callable[[str], None] = print
    started: float | None = None  # epoch seconds of the start gate (the plan's zero)
    _active: dict[int, list[int]] = field(default_factory=dict)  # outage (plan index) -> stopped pids
    _last: dict[int | None, float] = field(default_factory=dict)  # target -> when its last fault ended

    @property
    def pending(self) -> list[Fault]:
        return [f for f in self.plan if f.injected is None]

    def poll(self) -> None:
        now = time.time()
        events = read_events(self.run_dir)
        if self.started is None:
            self.started = next((e["time"] for e in events if e["event"] == "start"), None)
            if self.started is None:
                return
        for i in list(self._active):
            fault = self.plan[i]
            if now >= (fault.injected or now) + fault.duration_s:
                self._restore(i)
        due = [f for f in self.pending if now >= self.started + f.at_s]
        busy = {self.plan[i].city for i in self._active}
        if due and due[0].city not in busy and self._recovered(due[0].city, events):
            self._inject(due[0])  # one at a time, in plan order: each sees what the previous left

    def _recovered(self, target: int | None, events: list[dict[str, Any]]) -> bool:
        """The target took part in a committed round since its last fault ended (the coordinator:
        any round was committed since it was killed)."""
        since = self._last.get(target)
        if since is None:
            return True
        return any(
            e["event"] == "round" and e["time"] > since and (target is None or target in e["participants"])
            for e in events
        )

    def _inject(self, fault: Fault) -> None:
        index = self.plan.index(fault)
        pids = rank_pids(self.run_dir)
        city = [pid for (c, _), pid in sorted(pids.items()) if c == fault.city]
        if fault.kind == KILL_COORDINATOR:
            pid = coordinator_pid(self.run_dir)
            if pid is None:
                return  # between two coordinators: try again at the next poll
            _signal([pid], signal.SIGKILL)
        elif len(city) < self.ranks:
            return  # the city is (re)starting: try again at the next poll
        elif fault.kind == KILL_CITY:
            _signal(city, signal.SIGKILL)
        elif fault.kind == KILL_RANK:
            _signal([pids[(fault.city, fault.rank or 0)]], signal.SIGKILL)
        elif fault.kind == STOP_CITY:
            _signal(city, signal.SIGSTOP)
        elif fault.kind == CUT_LINK:
            assert fault.city is not None
            self.wan.set_link(fault.city, up=False)
        elif fault.kind == PREEMPT:
            _signal(city, getattr(signal, f"SIG{self.requeue_signal}"))
        fault.injected = time.time()
        late = fault.injected - (self.started or fault.injected) - fault.at_s
        if late > 5:
            fault.note = f"injected {late:.0f} s after its planned time: its target was still recovering"
        self.log(f"[chaos] fault {index + 1}/{len(self.plan)}: {fault.describe()}")
        if fault.kind in OUTAGES:
            self._active[index] = city
        else:
            self._last[fault.city] = fault.injected

    def _restore(self, index: int) -> None:
        fault, pids = self.plan[index], self._active.pop(index)
        if fault.kind == STOP_CITY:
            _signal(pids, signal.SIGCONT)
        else:
            assert fault.city is not None
            self.wan.set_link(fault.city, up=True)
        fault.restored = time.time()
        self._last[fault.city] = fault.restored
        self.log(f"[chaos] restored: {fault.describe()}")

    def close(self) -> None:
        """Whatever happens to the run, no city stays stopped or cut off."""
        for index in list(self._active):
            with contextlib.suppress(Exception):
                self._restore(index)


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
