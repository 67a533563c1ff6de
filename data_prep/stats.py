"""Sufficient statistics (count, sum, sum of squares, min, max, missing) per feature.

They combine by addition, so per-city and global normalisation are built from these numbers
alone: no raw row ever leaves its city.
"""

from __future__ import annotations

import math

import numpy as np

SUFFICIENT_KEYS = ("count", "sum", "sumsq", "min", "max", "missing")


def sufficient(values: np.ndarray, mask: np.ndarray, names: list[str]) -> dict[str, dict[str, float]]:
    """Per-feature sufficient statistics of the observed cells of `values` [n, F] (mask 1 = observed)."""
    out = {}
    observed = mask.astype(bool)
    v = values.astype(np.float64)
    for j, name in enumerate(names):
        col = v[observed[:, j], j]
        out[name] = {
            "count": int(col.size),
            "sum": float(col.sum()),
            "sumsq": float(np.square(col).sum()),
            "min": float(col.min()) if col.size else math.inf,
            "max": float(col.max()) if col.size else -math.inf,
            "missing": int(observed.shape[0] - col.size),
        }
    return out


def combine(parts: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Add sufficient statistics of disjoint row sets (shards, stations or cities)."""
    out: dict[str, dict[str, float]] = {}
    for part in parts:
        for name, s in part.items():
            acc = out.setdefault(
                name, {"count": 0, "sum": 0.0, "sumsq": 0.0, "min": math.inf, "max": -math.inf, "missing": 0}
            )
            for key in ("count", "sum", "sumsq", "missing"):
                acc[key] += s[key]
            acc["min"] = min(acc["min"], s["min"])
            acc["max"] = max(acc["max"], s["max"])
    return out


def finalize(suff: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Add mean and (population) std; std is floored at 1e-6 so normalising never divides by zero."""
    out = {}
    for name, s in suff.items():
        n = s["count"]
        mean = s["sum"] / n if n else 0.0
        var = max(s["sumsq"] / n - mean * mean, 0.0) if n else 1.0
        out[name] = {**{k: s[k] for k in SUFFICIENT_KEYS}, "mean": mean, "std": max(math.sqrt(var), 1e-6)}
    return out


def json_safe(stats: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """JSON has no infinities: an all-missing feature's min/max become null."""
    return {
        n: {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in s.items()}
        for n, s in stats.items()
    }


def from_json(stats: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float]]:
    """Inverse of json_safe."""
    out = {}
    for name, s in stats.items():
        out[name] = dict(s)
        if s["min"] is None:
            out[name]["min"], out[name]["max"] = math.inf, -math.inf
    return out  # type: ignore[return-value]
