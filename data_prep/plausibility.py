"""Plausibility of the values one prep/append read: per feature min, p1, p50, p99, max, share missing,
and flags for sentinel-like values that would wreck the normalisation (-9999 read as a number).

Memory is bounded: percentiles come from a deterministic stride sample, and only the most extreme
distinct values of each feature are counted exactly (a sentinel is always among them). A value is
flagged when it is isolated outside the rest: far from its nearest other value compared with how
far that value is from the bulk (p1..p99 of the rest). A heavy but continuous tail (rain) is not
isolated; a point mass at -9999 is. Typical missing codes (-999, -9999, 9999, 99990..) need less.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

SAMPLE_CAP = 1 << 16
EXTREMES = 16  # distinct values kept (with exact counts) at each end of each feature
# Typical missing codes: -999, -9999, ... (3+ nines), 9999, 99999, ... (4+ nines), each also with one
# more digit (-9990, 99990, 999990).
CODES = np.array(
    sorted(
        sign * (nines * 10 + d if d >= 0 else nines)
        for sign, least in ((-1, 3), (1, 4))
        for nines in (10**n - 1 for n in range(least, 12))
        for d in range(-1, 10)
    ),
    dtype=np.float64,
)
CODE_SET = frozenset(CODES.tolist())
ISOLATED_REPEATED = 3.0
ISOLATED_CODE = 1.0
MIN_DISTINCT = 5


class FeatureTally:
    """Streaming summary of one feature's observed values."""

    def __init__(self) -> None:
        self.rows = 0
        self.observed = 0
        self.stride = 1
        self.sample: list[np.ndarray] = []
        self.sampled = 0
        self.ends: dict[float, list[int]] = {}  # value -> [count, first src], lowest and highest only

    def add(self, values: np.ndarray, rows: int, src: np.ndarray) -> None:
        """`values`: the observed cells of `rows` rows (float), `src` their (file, line) codes."""
        self.rows += rows
        if values.size == 0:
            return
        index = np.arange(self.observed, self.observed + values.size)
        self.observed += values.size
        picked = values[index % self.stride == 0].astype(np.float64)
        self.sample.append(picked)
        self.sampled += picked.size
        while self.sampled > SAMPLE_CAP:  # keep every other sampled value: still every stride-th one
            merged = np.concatenate(self.sample)[::2]
            self.sample, self.sampled, self.stride = [merged], merged.size, self.stride * 2
        keys = sorted(self.ends)
        if len(keys) >= 2 * EXTREMES:  # only values at or beyond the kept ends can change them
            at_ends = (values <= keys[EXTREMES - 1]) | (values >= keys[-EXTREMES])
            values, src = values[at_ends], src[at_ends]
        unique, first, counts = np.unique(values, return_index=True, return_counts=True)
        pick = np.r_[0 : min(EXTREMES, unique.size), max(unique.size - EXTREMES, 0) : unique.size]
        for k in np.unique(pick):
            entry = self.ends.setdefault(float(unique[k]), [0, int(src[first[k]])])
            entry[0] += int(counts[k])
        if len(self.ends) > 2 * EXTREMES:
            keys = sorted(self.ends)
            self.ends = {k: self.ends[k] for k in keys[:EXTREMES] + keys[-EXTREMES:]}

    def summary(self, where: Callable[[int], str]) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.rows, "observed": self.observed}
        out["missing_share"] = 1 - self.observed / self.rows if self.rows else 1.0
        if not self.observed:
            return {**out, "min": None, "p1": None, "p50": None, "p99": None, "max": None, "flags": []}
        sample = np.concatenate(self.sample)
        keys = sorted(self.ends)
        p1, p50, p99 = (float(p) for p in np.percentile(sample, [1, 50, 99]))
        out.update(min=keys[0], p1=p1, p50=p50, p99=p99, max=keys[-1])
        plain = sample[~np.isin(sample, CODES)]
        out["flags"] = [self._flag(v, keys, plain, where) for v in self._candidates(keys)]
        out["flags"] = [f for f in out["flags"] if f is not None]
        return out

    def _candidates(self, keys: list[float]) -> list[float]:
        ends = keys[:3] + keys[-3:] + [k for k in keys if _is_code(k)]
        return sorted(set(ends))

    def _flag(
        self, v: float, keys: list[float], plain: np.ndarray, where: Callable[[int], str]
    ) -> dict[str, Any] | None:
        """`plain`: the sample without typical missing codes."""
        rest = plain[plain != v]
        if rest.size == 0 or len(keys) < 2:
            return None
        p1, p99 = np.percentile(rest, [1, 99])
        if p1 <= v <= p99:
            return None
        i = keys.index(v)
        nearest = keys[i + 1] if v < p1 else keys[i - 1]
        edge = p1 if v < p1 else p99
        spread = abs(nearest - edge) + (p99 - p1)
        isolation = abs(v - nearest) / spread if spread > 0 else math.inf
        count, src = self.ends[v]
        code = _is_code(v)
        # a repeated value stands out only against a many-valued rest (never in a 0/1 or one-hot column)
        repeated = count >= 2 and len(keys) - 1 >= MIN_DISTINCT and isolation >= ISOLATED_REPEATED
        if not (repeated or (code and isolation >= ISOLATED_CODE)):
            return None
        why = "a typical missing-value code" if code else f"one value repeated {count} times"
        return {
            "value": v,
            "count": count,
            "first": where(src),
            "reason": f"{why}, isolated outside the rest (p1..p99 = {p1:.4g}..{p99:.4g})",
        }


def _is_code(v: float) -> bool:
    return v in CODE_SET


class Plausibility:
    """One FeatureTally per stored feature name (a city-only extra is tallied under its own name)."""

    def __init__(self) -> None:
        self.tallies: dict[str, FeatureTally] = {}

    def add(self, names: list[str], values: np.ndarray, mask: np.ndarray, src: np.ndarray) -> None:
        for j, name in enumerate(names):
            seen = mask[:, j]
            self.tallies.setdefault(name, FeatureTally()).add(values[seen, j], len(values), src[seen])

    def report(self, where: Callable[[int], str]) -> dict[str, dict[str, Any]]:
        return {name: t.summary(where) for name, t in self.tallies.items()}


def flag_lines(report: dict[str, dict[str, Any]]) -> list[str]:
    """One line per flag: the feature, the value, how often, where first, and what to do."""
    return [
        f"{name}: value {f['value']:g} appears {f['count']} times (first at {f['first']}): {f['reason']}; "
        "a sentinel? declare it in the column's missing_tokens or valid_range"
        for name, r in report.items()
        for f in r["flags"]
    ]


def table(report: dict[str, dict[str, Any]]) -> str:
    """The per-feature plausibility table prep prints."""

    def num(x: float | None) -> str:
        return "-" if x is None else f"{x:.4g}"

    rows = [f"{'feature':<16}{'min':>10}{'p1':>10}{'p50':>10}{'p99':>10}{'max':>10}{'missing':>9}  flags"]
    for name, r in report.items():
        cells = "".join(f"{num(r[k]):>10}" for k in ("min", "p1", "p50", "p99", "max"))
        rows.append(f"{name:<16}{cells}{100 * r['missing_share']:>8.1f}%  {len(r['flags']) or ''}")
    return "\n".join(rows)
