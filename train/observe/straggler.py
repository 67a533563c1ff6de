"""Straggler detection: which rank of a city is slow, and for how long.

Feed it the *busy* time of each rank (data wait + compute, not t_step): inside a city the LAN
all-reduce makes every rank wait for the slowest, so total step times come out equal and only the
time before the collective tells who is slow. Each rank is compared with the median of the OTHER
ranks of its city, so a two-rank city works too (with the city-wide median, factor 2 could never
be exceeded by one of two ranks). The same detector compares cities when fed one time per city.
"""

from __future__ import annotations

import math
import statistics
from typing import Any


class StragglerDetector:
    """Warns once per episode when a rank stays above `factor` x its peers' median for `consecutive` steps."""

    def __init__(self, factor: float, consecutive: int) -> None:
        if factor <= 1.0:
            raise ValueError(f"straggler factor={factor}: must be > 1 (a rank slower than its peers)")
        if consecutive < 1:
            raise ValueError(f"straggler consecutive steps={consecutive}: must be >= 1")
        self.factor = factor
        self.consecutive = consecutive
        self._run: dict[int, int] = {}  # rank -> consecutive slow steps so far
        self._ratios: dict[int, list[float]] = {}  # rank -> ratios of the current slow run
        self._first: dict[int, int] = {}  # rank -> step at which the current slow run began
        self.episodes = 0

    @classmethod
    def per_check(cls, factor: float, steps: int, check_every: int) -> StragglerDetector:
        """A detector fed every `check_every` steps that still waits about `steps` steps."""
        return cls(factor, max(1, math.ceil(steps / max(1, check_every))))

    def update(self, step: int, times: dict[int, float]) -> list[dict[str, Any]]:
        """Times (seconds) of this check by rank; returns `kind="event"` dicts for new episodes."""
        events = []
        for rank, (ratio, reference) in sorted(peer_ratios(times).items()):
            if ratio <= self.factor:
                for state in (self._run, self._ratios, self._first):
                    state.pop(rank, None)
                continue
            self._run[rank] = self._run.get(rank, 0) + 1
            self._ratios.setdefault(rank, []).append(ratio)
            self._first.setdefault(rank, step)
            if self._run[rank] == self.consecutive:
                self.episodes += 1
                median_ratio = statistics.median(self._ratios[rank])
                events.append(
                    {
                        "kind": "event",
                        "event": "straggler",
                        "message": (
                            f"rank {rank} slower than {self.factor:g}x its peers' median in "
                            f"{self.consecutive} consecutive checks (median ratio {median_ratio:.2f}x, steps "
                            f"{self._first[rank]}..{step})"
                        ),
                        "rank": rank,
                        "step": step,
                        "first_step": self._first[rank],
                        "ratio": round(median_ratio, 3),
                        "peer_median_s": round(reference, 6),
                        "time_s": round(times[rank], 6),
                    }
                )
        return events


def peer_ratios(times: dict[int, float]) -> dict[int, tuple[float, float]]:
    """rank -> (time / median of the other ranks' times, that median); ranks without peers are left out."""
    out = {}
    for rank, t in times.items():
        peers = [v for r, v in times.items() if r != rank]
        if peers and (reference := statistics.median(peers)) > 0:
            out[rank] = (t / reference, reference)
    return out
