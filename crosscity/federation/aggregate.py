"""Bounded influence: check each city's update, clip outliers, and combine them robustly (numpy only).

An *update* is what a city moved the round's global model by (its pseudo-gradient, or one stripe
of it), decoded to a float32 array of the expected shape. The coordinator calls `aggregate` once per
round (or per stripe); everything is accumulated in float64 in city-id order, so the result is a
function of the inputs alone.

- `check_update`: wrong dtype or shape, or any NaN/inf, rejects the update with a reason: it is
  never averaged (the caller logs and audits the reason).
- `clip`: an update whose L2 norm exceeds `clip_factor` x the round's median norm is scaled down to
  that bound. The median is the *lower* median, so with an even count, half of the cities cannot
  raise the bound. After clipping, every update and so any weighted mean has norm <= B =
  clip_factor x median; a city with weight share s moves the weighted mean away from the mean of
  the others by at most s x (B + |mean of the others|). Clipping needs 3+ cities to mean anything
  (with 2, the median is one of them).
- `mean` (weighted), `trimmed_mean` (per coordinate: drop the k lowest and k highest values by
  count, then the weighted mean of the rest with their cities' weights), `median` (per
  coordinate, unweighted: a weight is not a vote on a coordinate's value). With k = f, trimmed
  mean and median tolerate up to f arbitrary updates among 2f+1 or more.
- `city_weight`: a city's weight comes from what the coordinator knows (steps since the city last
  took part x samples per step from the config, capped); a number in a message can only lower it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Method = Literal["mean", "trimmed_mean", "median"]
METHODS: tuple[str, ...] = ("mean", "trimmed_mean", "median")
CityId = int | str


class EmptyRound(ValueError):
    """No update of the round passed the checks: the round fails, the global model stays."""


@dataclass(frozen=True)
class Clip:
    norm: float  # L2 norm of the update as received
    clipped: bool
    scale: float  # 1.0, or bound / norm when clipped


@dataclass
class Aggregate:
    value: np.ndarray  # float64, the expected shape
    method: str
    accepted: list[CityId]  # city-id order
    rejected: dict[CityId, str] = field(default_factory=dict)  # city -> reason
    clips: dict[CityId, Clip] = field(default_factory=dict)
    bound: float | None = None  # clip_factor x median norm (None: clipping off)
    trim: int = 0  # k actually trimmed from each end (trimmed_mean)


def check_update(update: object, shape: tuple[int, ...], dtype: np.dtype | type = np.float32) -> str | None:
    """Why `update` must not be aggregated, or None if it may: the caller's typed decode is not trusted."""
    if not isinstance(update, np.ndarray):
        return f"not an array ({type(update).__name__})"
    if update.dtype != np.dtype(dtype):
        return f"dtype {update.dtype}, expected {np.dtype(dtype)}"
    if update.shape != tuple(shape):
        return f"shape {update.shape}, expected {tuple(shape)}"
    bad = int(np.count_nonzero(~np.isfinite(update)))
    if bad:
        return f"{bad} non-finite values (NaN/inf) of {update.size}"
    return None


def l2_norm(update: np.ndarray) -> float:
    """In float64: float32 squares of a large update would overflow or lose the outlier's size."""
    x = update.astype(np.float64, copy=False).ravel()
    return float(np.sqrt(np.dot(x, x)))


def lower_median(values: list[float]) -> float:
    """The lower of the two middle values: half of the cities cannot raise it."""
    return sorted(values)[(len(values) - 1) // 2]


def clip(
    updates: Mapping[CityId, np.ndarray], clip_factor: float
) -> tuple[dict[CityId, np.ndarray], dict[CityId, Clip], float]:
    """Each update scaled to norm <= clip_factor x the lower median norm: (updates, report, bound)."""
    if not clip_factor > 0 or not math.isfinite(clip_factor):
        raise ValueError(f"clip_factor={clip_factor}: must be a finite number > 0")
    norms = {city: l2_norm(updates[city]) for city in sorted(updates)}
    bound = clip_factor * lower_median(list(norms.values()))
    out, report = {}, {}
    for city, norm in norms.items():
        if norm > bound:
            scale = bound / norm
            out[city] = updates[city].astype(np.float64) * scale
            report[city] = Clip(norm, True, scale)
        else:
            out[city] = updates[city]
            report[city] = Clip(norm, False, 1.0)
    return out, report, bound


def _stack(updates: Mapping[CityId, np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(updates[c], dtype=np.float64) for c in sorted(updates)])


def _weights(updates: Mapping[CityId, np.ndarray], weights: Mapping[CityId, float]) -> np.ndarray:
    w = np.array([float(weights[c]) for c in sorted(updates)], dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError(
            f"weights {dict(zip(sorted(updates), w.tolist(), strict=True))}: each must be finite and > 0"
        )
    return w


def mean(updates: Mapping[CityId, np.ndarray], weights: Mapping[CityId, float]) -> np.ndarray:
    """Weighted mean, summed in float64 in city-id order."""
    w = _weights(updates, weights)
    total = np.zeros(np.shape(next(iter(updates.values()))), dtype=np.float64)
    for wi, city in zip(w, sorted(updates), strict=True):
        total += wi * np.asarray(updates[city], dtype=np.float64)
    return total / w.sum()


def trimmed_mean(
    updates: Mapping[CityId, np.ndarray], weights: Mapping[CityId, float], trim: int
) -> np.ndarray:
    """Per coordinate: drop `trim` values at each end (by count), the weighted mean of the rest.

    `trim` must leave at least one value: 2 x trim < number of updates (see `usable_trim`).
    """
    n = len(updates)
    if trim < 0 or 2 * trim >= n:
        raise ValueError(f"trim={trim}: must be >= 0 and leave a value of {n} updates (2 x trim < {n})")
    w = _weights(updates, weights)
    x = _stack(updates)
    order = np.argsort(x, axis=0, kind="stable")[trim : n - trim]
    kept = np.take_along_axis(x, order, axis=0)
    kept_w = w[order]
    return (kept * kept_w).sum(axis=0) / kept_w.sum(axis=0)


def median(updates: Mapping[CityId, np.ndarray]) -> np.ndarray:
    """Per-coordinate median (mean of the two middle values for an even count); weights play no part."""
    return np.median(_stack(updates), axis=0)


def usable_trim(trim: int, n: int) -> int:
    """`trim`, lowered so a round of n updates keeps a value: at most (n - 1) // 2 (then the median)."""
    return max(0, min(trim, (n - 1) // 2))


def aggregate(
    updates: Mapping[CityId, object],
    weights: Mapping[CityId, float],
    shape: tuple[int, ...],
    *,
    method: Method = "mean",
    clip_factor: float | None = None,
    trim: int = 1,
    dtype: np.dtype | type = np.float32,
) -> Aggregate:
    """Check every update, clip (when `clip_factor`), combine with `method`; EmptyRound if none passes.

    `weights` come from the coordinator (`city_weight`), never from the message. `trim` is lowered to
    `usable_trim` for small rounds and the value used is reported.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r}: allowed {', '.join(METHODS)}")
    rejected = {
        c: why for c in sorted(updates) if (why := check_update(updates[c], shape, dtype)) is not None
    }
    good: dict[CityId, np.ndarray] = {c: updates[c] for c in sorted(updates) if c not in rejected}  # type: ignore[misc]
    if not good:
        raise EmptyRound(f"no valid update among {len(updates)}: {rejected}")
    clips: dict[CityId, Clip] = {}
    bound = None
    if clip_factor is not None:
        good, clips, bound = clip(good, clip_factor)
    used_trim = 0
    if method == "mean":
        value = mean(good, weights)
    elif method == "trimmed_mean":
        used_trim = usable_trim(trim, len(good))
        value = trimmed_mean(good, weights, used_trim)
    else:
        value = median(good)
    return Aggregate(value, method, sorted(good), rejected, clips, bound, used_trim)


def city_weight(
    steps_since: int, samples_per_step: int, max_steps: int, claimed: float | None = None
) -> float:
    """A city's weight for the round: min(steps since it last took part, max_steps) x samples per step.

    The coordinator counts the steps (rounds x wan.sync_every) and takes samples per step from the
    config (batch size x ranks per city); `claimed`, a city's own figure, can only lower the weight.
    """
    if steps_since < 0 or samples_per_step < 1 or max_steps < 1:
        raise ValueError(
            f"steps_since={steps_since}, samples_per_step={samples_per_step}, max_steps={max_steps}: "
            "need steps_since >= 0, samples_per_step >= 1, max_steps >= 1"
        )
    known = float(min(steps_since, max_steps) * samples_per_step)
    if claimed is not None and math.isfinite(claimed) and claimed >= 0:
        return min(known, float(claimed))
    return known
