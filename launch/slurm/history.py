"""What happened to each city of a run, for `crosscity status`: when it was last live, the last round
it took part in, whether it is in the current quorum, and its outages - when it went away, when it
came back, the first committed round it took part in again.

Read from the coordinator's events (RUN_DIR/coordinator/events.jsonl: join, leave, silent, live,
round; JSON lines, appended as they happen) and the supervisor's records in jobs.json: no sacct,
no torch, nothing but files in the run folder.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

EVENTS = Path("coordinator") / "events.jsonl"


@dataclass
class Outage:
    start: float  # it fell silent, or left without finishing
    cause: str  # "silent" or "left: <reason>" (preempted, ...)
    back: float | None = None  # registered again, or heard from again
    rejoined: float | None = None  # ... and took part in a committed round again
    round: int | None = None  # that round


@dataclass
class CityHistory:
    live: bool | None = None  # None: the coordinator never saw it
    since: float | None = None  # live (or not) since
    finished: bool = False
    last_round: int | None = None
    last_round_time: float | None = None
    in_quorum: bool = False  # a participant of the latest committed round
    outages: list[Outage] = field(default_factory=list)

    def open_outage(self) -> Outage | None:
        return self.outages[-1] if self.outages and self.outages[-1].rejoined is None else None

    def went_away(self, t: float, cause: str) -> None:
        if self.open_outage() is None:  # one outage until it is back in a round
            self.outages.append(Outage(t, cause))

    def as_row(self) -> dict:
        row = asdict(self)
        row["outages"] = [asdict(o) for o in self.outages]
        return row


def read_events(run_dir: Path) -> list[dict]:
    """The coordinator's events, oldest first; a line being written right now is skipped."""
    try:
        lines = (Path(run_dir) / EVENTS).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def city_histories(events: list[dict], cities: list[int]) -> dict[int, CityHistory]:
    found = {c: CityHistory() for c in cities}
    quorum: set[int] = set()
    for e in events:
        kind, t, city = e.get("event"), e.get("time", 0.0), e.get("city")
        h = found.get(city) if isinstance(city, int) else None
        if kind == "round":
            quorum = set(e.get("participants", []))
            for c in quorum & found.keys():
                h = found[c]
                h.last_round, h.last_round_time = e.get("round"), t
                gone = h.open_outage()
                if gone is not None and gone.back is not None:
                    gone.rejoined, gone.round = t, e.get("round")
        elif h is None:
            continue
        elif kind in ("join", "live"):  # registered again (restarted), or heard from again (it was slow)
            gone = h.open_outage()
            if gone is not None and gone.back is None:
                gone.back = t
            if kind == "live":
                h.live, h.since = True, t
        elif kind == "silent":
            h.live, h.since = False, t
            h.went_away(t, "silent")
        elif kind == "leave":
            h.live, h.since = False, t
            if e.get("reason") == "finished":
                h.finished = True
            else:
                h.went_away(t, f"left: {e.get('reason')}")
    for c, h in found.items():
        h.in_quorum = c in quorum
    return found


def clock(t: float | None) -> str:
    return "?" if t is None else time.strftime("%H:%M:%S", time.localtime(t))


def describe(name: str, h: CityHistory, supervisor: list[dict]) -> str:
    """One line: where the city stands with the coordinator, its outages and what brought it back."""
    if h.finished:
        parts = [f"finished {clock(h.since)}"]
    elif h.live is None:
        parts = ["not seen by the coordinator yet"]
    else:
        parts = [f"{'live' if h.live else 'not live'} since {clock(h.since)}"]
    if h.last_round is not None:
        quorum = "" if h.finished else " (in the current quorum)" if h.in_quorum else " (not in the quorum)"
        parts.append(f"last round {h.last_round} at {clock(h.last_round_time)}{quorum}")
    for i, o in enumerate(h.outages, 1):
        text = f"outage {i}: {o.cause} {clock(o.start)}"
        if o.back is not None:
            text += f", back {clock(o.back)}"
        if o.rejoined is not None:
            away = o.rejoined - o.start
            text += f", rejoined in round {o.round} at {clock(o.rejoined)} ({away:.1f} s away)"
        else:
            text += ", not in a round again yet"
        parts.append(text)
    for r in supervisor:
        action = {"requeue": "requeued", "resubmit": "resubmitted"}.get(r["action"], r["action"])
        what = f"{action} {clock(r['time'])} ({r.get('was', '')} was {r.get('state', '?')}"
        parts.append(what + (f", now {r['job']})" if r.get("job") not in (None, r.get("was")) else ")"))
    return f"{name}: " + "; ".join(parts)
