"""One inter-city round of one fragment at the coordinator, and when its quorum forms.

    forming --(every live city arrived, or the deadline passed with >= min_cities)--> closed
    forming --(deadline passed with fewer)--> skipped
    closed  --(every quorum member's stripes arrived)--> committed
    closed  --(members died or missed the stripe deadline, fewer than min_cities left)--> skipped

A round opens when the first city arrives (its first stripe) and forms until every live city has
arrived or `round_timeout_s` has passed (wait-after-minimum: a straggler misses the round instead
of stalling everyone). A city arriving after the round closed is told it missed it and keeps
training. Once closed, the quorum's remaining stripes (the other ranks of the same cities, moments
later) have until the stripe deadline; a member that dies meanwhile is dropped and the round still
commits with the rest if at least `min_cities` remain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from crosscity.federation.wire import Message

FORMING, CLOSED, COMMITTED, SKIPPED = "forming", "closed", "committed", "skipped"


@dataclass
class Upload:
    arrays: list[np.ndarray]
    base_version: int
    steps: int
    attempt: int
    nbytes: int = 0  # payload bytes as received (the audit trail records them)


@dataclass
class Round:
    id: int
    fragment: int
    opened_at: float
    deadline: float  # the quorum forms at the latest here
    status: str = FORMING
    uploads: dict[int, dict[int, Upload]] = field(default_factory=dict)  # city -> stripe -> upload
    quorum: list[int] = field(default_factory=list)
    stripe_deadline: float = 0.0
    reason: str = ""
    replies: dict[tuple[int, int], Message] = field(default_factory=dict)  # (city, stripe) -> reply

    @property
    def resolved(self) -> bool:
        return self.status in (COMMITTED, SKIPPED)

    def arrived(self) -> list[int]:
        return sorted(self.uploads)

    def complete(self, city: int, stripes: int) -> bool:
        return len(self.uploads.get(city, {})) == stripes

    def advance(self, now: float, live: list[int], min_cities: int, stripes: int, transfer_s: float) -> bool:
        """Move the state machine on; True when the round is ready to commit (quorum complete)."""
        if self.status == FORMING:
            arrived = [c for c in self.arrived() if c in live]
            if arrived and set(live) <= set(arrived):
                self._close(arrived, now, transfer_s)
            elif now >= self.deadline:
                if len(arrived) >= min_cities:
                    self._close(arrived, now, transfer_s)
                else:
                    self._skip(f"no quorum: {len(arrived)} of the needed {min_cities} cities arrived in time")
        if self.status == CLOSED:
            late = now >= self.stripe_deadline
            self.quorum = [c for c in self.quorum if c in live and (self.complete(c, stripes) or not late)]
            if len(self.quorum) < min_cities:
                self._skip(f"quorum lost: {len(self.quorum)} of the needed {min_cities} cities completed")
            elif all(self.complete(c, stripes) for c in self.quorum):
                return True
        return False

    def _close(self, quorum: list[int], now: float, transfer_s: float) -> None:
        self.status, self.quorum, self.stripe_deadline = CLOSED, quorum, now + transfer_s

    def _skip(self, reason: str) -> None:
        self.status, self.reason = SKIPPED, reason
