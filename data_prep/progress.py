"""Periodic progress lines (rate and ETA) for long data work, on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    """Call update(done, rows) often; a line is printed at most every `every` seconds."""

    def __init__(self, label: str, total: float, enabled: bool = True, every: float = 2.0):
        self.label, self.total, self.enabled, self.every = label, total, enabled, every
        self.start = self.last = time.monotonic()

    def update(self, done: float, rows: int) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.start
        frac = done / self.total if self.total else 1.0
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        print(
            f"{self.label}: {rows} rows, {100 * frac:.0f}% of input, "
            f"{rows / elapsed:,.0f} rows/s, ETA {eta:.0f} s",
            file=sys.stderr,
            flush=True,
        )
