"""Aggregation: exact on hand-computed rounds, robust to one bad city of four, deterministic."""

from __future__ import annotations

import re

import numpy as np
import pytest

from crosscity.federation import aggregate as agg


def f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def test_weighted_mean_exact():
    updates = {0: f32(1, 2), 1: f32(3, 6)}
    out = agg.aggregate(updates, {0: 1.0, 1: 3.0}, (2,))
    np.testing.assert_array_equal(out.value, [2.5, 5.0])  # (1*1 + 3*3)/4, (2 + 18)/4
    assert out.value.dtype == np.float64 and out.accepted == [0, 1] and out.clips == {}


def test_trimmed_mean_exact_and_weights_apply_to_what_is_kept():
    updates = {0: f32(0, 10), 1: f32(1, 20), 2: f32(2, 30), 3: f32(100, -5)}
    weights = {0: 1.0, 1: 1.0, 2: 3.0, 3: 1.0}
    out = agg.aggregate(updates, weights, (2,), method="trimmed_mean", trim=1)
    # coordinate 0 keeps cities 1, 2 (values 1, 2; weights 1, 3): 7/4
    # coordinate 1 keeps cities 0, 1 (values 10, 20; weights 1, 1): 15
    np.testing.assert_array_equal(out.value, [1.75, 15.0])
    assert out.trim == 1


def test_median_exact_odd_and_even():
    odd = {0: f32(1, 9), 1: f32(5, 2), 2: f32(3, 4)}
    np.testing.assert_array_equal(
        agg.aggregate(odd, dict.fromkeys(odd, 1.0), (2,), method="median").value, [3, 4]
    )
    even = {**odd, 3: f32(100, 100)}
    np.testing.assert_array_equal(
        agg.aggregate(even, dict.fromkeys(even, 1.0), (2,), method="median").value, [4, 6.5]
    )


def test_trim_is_lowered_for_small_rounds():
    updates = {0: f32(1), 1: f32(2), 2: f32(30)}
    out = agg.aggregate(updates, dict.fromkeys(updates, 1.0), (1,), method="trimmed_mean", trim=3)
    assert out.trim == 1 and out.value.tolist() == [2.0]  # trim (n-1)//2 = the median
    assert agg.usable_trim(2, 2) == 0 and agg.usable_trim(1, 5) == 1
    with pytest.raises(ValueError, match="2 x trim"):
        agg.trimmed_mean(updates, dict.fromkeys(updates, 1.0), 2)


def test_clipping_exact():
    updates = {"a": f32(3, 4), "b": f32(0, 1), "c": f32(0, 2), "d": f32(30, 40)}  # norms 5, 1, 2, 50
    clipped, report, bound = agg.clip(updates, clip_factor=2.0)
    assert bound == 4.0  # 2 x lower median of (1, 2, 5, 50) = 2 x 2
    assert report["d"] == agg.Clip(50.0, True, 4.0 / 50.0) and report["a"] == agg.Clip(5.0, True, 0.8)
    assert report["b"] == agg.Clip(1.0, False, 1.0)
    np.testing.assert_allclose(clipped["d"], [2.4, 3.2])
    assert clipped["b"] is updates["b"]


@pytest.mark.parametrize(
    ("update", "reason"),
    [
        (f32(1, np.nan, np.inf), "2 non-finite values"),
        (np.zeros(3, dtype=np.float64), "dtype float64, expected float32"),
        (np.zeros(4, dtype=np.float32), r"shape \(4,\), expected \(3,\)"),
        (np.zeros((3, 1), dtype=np.float32), "shape"),
        ([1.0, 2.0, 3.0], "not an array"),
    ],
)
def test_bad_updates_are_rejected_with_a_reason_never_averaged(update, reason):
    updates = {0: f32(1, 1, 1), 1: update, 2: f32(3, 3, 3)}
    out = agg.aggregate(updates, dict.fromkeys(updates, 1.0), (3,), clip_factor=3.0)
    assert out.accepted == [0, 2] and list(out.rejected) == [1]
    assert pytest.approx(out.value.tolist()) == [2.0, 2.0, 2.0]
    assert re.search(reason, out.rejected[1])
    assert 1 not in out.clips


def test_a_round_with_nothing_valid_fails():
    with pytest.raises(agg.EmptyRound, match="no valid update among 2"):
        agg.aggregate({0: f32(np.nan), 1: f32(1, 2)}, {0: 1.0, 1: 1.0}, (1,))


def test_weights_must_come_positive_and_finite():
    with pytest.raises(ValueError, match="finite and > 0"):
        agg.aggregate({0: f32(1), 1: f32(2)}, {0: 1.0, 1: float("nan")}, (1,))
    with pytest.raises(ValueError, match="method="):
        agg.aggregate({0: f32(1)}, {0: 1.0}, (1,), method="mode")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------- robustness

D = 1000


def honest_round(seed: int = 0) -> dict[int, np.ndarray]:
    """Three honest cities: a shared direction plus a little noise (norm ~ 1 each)."""
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(D) / np.sqrt(D)
    return {c: (direction + 0.1 * rng.standard_normal(D) / np.sqrt(D)).astype(np.float32) for c in (0, 1, 2)}


ATTACKS = {
    "huge": lambda h: (h[0] * 1e6).astype(np.float32),
    "constant": lambda h: np.full(D, 1e3, dtype=np.float32),
    "nan": lambda h: np.full(D, np.nan, dtype=np.float32),
    "flipped": lambda h: (-50 * h[0]).astype(np.float32),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("method", ["trimmed_mean", "median"])
def test_one_bad_city_of_four_barely_moves_robust_methods(attack, method):
    honest = honest_round()
    truth = agg.mean(honest, dict.fromkeys(honest, 1.0))
    updates = {**honest, 3: ATTACKS[attack](honest)}
    weights = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1e12 if attack != "nan" else 1.0}  # a huge weight buys nothing here
    out = agg.aggregate(updates, weights, (D,), method=method, trim=1)
    spread = max(np.linalg.norm(h - truth) for h in honest.values())
    assert np.linalg.norm(out.value - truth) <= spread, attack  # within the honest cities' own spread
    assert np.linalg.norm(out.value - truth) < 0.2 * np.linalg.norm(truth)


@pytest.mark.parametrize("attack", ["huge", "constant", "flipped"])
def test_clipping_bounds_the_move_of_a_bad_city(attack):
    honest = honest_round(1)
    factor = 2.0
    updates = {**honest, 3: ATTACKS[attack](honest)}
    weights = {c: 1.0 for c in updates}
    out = agg.aggregate(updates, weights, (D,), method="mean", clip_factor=factor)
    assert out.clips[3].clipped and not any(out.clips[c].clipped for c in honest)
    assert out.bound == pytest.approx(factor * sorted(agg.l2_norm(u) for u in updates.values())[1])
    others = agg.mean(honest, dict.fromkeys(honest, 1.0))
    share = weights[3] / sum(weights.values())
    move = np.linalg.norm(out.value - others)
    assert move <= share * (out.bound + np.linalg.norm(others)) + 1e-9  # the bound in the module docstring
    assert np.linalg.norm(out.value) <= out.bound + 1e-9
    unclipped = agg.aggregate(updates, weights, (D,), method="mean")
    assert np.linalg.norm(unclipped.value - others) > 2 * move  # without clipping it would move far more


def test_deterministic_and_in_city_order():
    rng = np.random.default_rng(7)
    updates = {c: rng.standard_normal(257).astype(np.float32) for c in (3, 0, 2, 1)}
    weights = {c: float(c + 1) for c in updates}
    for method in agg.METHODS:
        first = agg.aggregate(updates, weights, (257,), method=method, clip_factor=1.5)
        shuffled = {c: updates[c].copy() for c in (1, 3, 0, 2)}
        again = agg.aggregate(
            shuffled, dict(reversed(weights.items())), (257,), method=method, clip_factor=1.5
        )
        assert first.value.tobytes() == again.value.tobytes(), method
        assert first.accepted == [0, 1, 2, 3] == list(first.clips)


def test_city_weight_comes_from_the_coordinator():
    assert agg.city_weight(steps_since=30, samples_per_step=128, max_steps=60) == 3840.0
    assert agg.city_weight(steps_since=600, samples_per_step=128, max_steps=60) == 60 * 128  # capped
    assert agg.city_weight(30, 128, 60, claimed=1e12) == 3840.0  # a claim cannot raise it
    assert agg.city_weight(30, 128, 60, claimed=100.0) == 100.0  # only lower it
    assert agg.city_weight(30, 128, 60, claimed=float("nan")) == 3840.0
    with pytest.raises(ValueError, match="samples_per_step"):
        agg.city_weight(3, 0, 60)
