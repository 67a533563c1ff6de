"""How a station's hourly span splits into train / val / test: the reader's windows and the
launcher's check that a window fits (torch-free, so `crosscity submit` can check it too)."""

from __future__ import annotations

FRACTIONS = (0.8, 0.1, 0.1)  # train / val / test share of each station's span


def split_ranges(hours: int, gap: int, fractions: tuple[float, float, float]) -> dict[str, tuple[int, int]]:
    """Hour ranges [lo, hi) of each split inside a station's span; splits are `gap` hours apart."""
    b1 = round(hours * fractions[0])
    b2 = round(hours * (fractions[0] + fractions[1]))
    return {"train": (0, b1), "val": (b1 + gap, b2), "test": (b2 + gap, hours)}


def window_starts(hours: int, span: int, fractions: tuple[float, float, float], split: str) -> range:
    """Start hours of the windows of `span` hours that lie entirely inside one split."""
    lo, hi = split_ranges(hours, span, fractions)[split]
    return range(lo, max(hi - span + 1, lo))
