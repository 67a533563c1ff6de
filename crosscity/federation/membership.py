"""Who is in the run right now: registered cities, their heartbeats, and whether they count for a quorum.

A city is *live* while its heartbeats arrive (the last one at most `dead_after_s` ago) and it has not
left. Only live cities are waited for when a round forms, so a city that crashed, hangs (SIGSTOP) or
lost its link stops holding the others back `dead_after_s` after its last heartbeat. Each
(re)registration starts a new membership epoch of that city, recorded for the report and the audit.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class CityRecord:
    city: int
    name: str
    epoch: int  # the run-wide membership epoch at this city's latest registration
    last_seen: float  # monotonic time of the last heartbeat or request
    step: int = 0
    state: str = "training"  # training | healing | left | finished
    last_round: dict[int, int] = field(default_factory=dict)  # fragment -> last round it took part in


class Membership:
    def __init__(self, dead_after_s: float) -> None:
        self.dead_after_s = dead_after_s
        self.cities: dict[int, CityRecord] = {}
        self.epoch = 0

    def register(self, city: int, name: str, now: float) -> CityRecord:
        self.epoch += 1
        old = self.cities.get(city)
        record = CityRecord(city, name, self.epoch, now, last_round=dict(old.last_round) if old else {})
        self.cities[city] = record
        return record

    def seen(self, city: int, now: float, step: int | None = None, state: str | None = None) -> None:
        record = self.cities.get(city)
        if record is None:
            return
        record.last_seen = now
        if step is not None:
            record.step = step
        if state is not None and record.state not in ("left", "finished"):
            record.state = state

    def leave(self, city: int, finished: bool) -> None:
        if city in self.cities:
            self.cities[city].state = "finished" if finished else "left"

    def live(self, now: float) -> list[int]:
        """Cities a forming round waits for: training, heartbeating."""
        return sorted(
            c
            for c, r in self.cities.items()
            if r.state == "training" and now - r.last_seen <= self.dead_after_s
        )

    def is_live(self, city: int, now: float) -> bool:
        return city in self.live(now)
