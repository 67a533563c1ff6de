"""Every WAN codec round-trips within its stated bound, and error feedback keeps sums on track."""

from __future__ import annotations

import numpy as np
import pytest

from crosscity.federation.codecs import CHUNK, CODECS, ErrorFeedback, make_codec

LOSSY = [name for name in CODECS if name != "none"]


def f32(values: object) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


def _inputs() -> dict[str, np.ndarray]:
    g = np.random.default_rng(0)
    spike = f32(g.standard_normal(3 * CHUNK + 5) * 1e-3)
    spike[CHUNK + 7] = 1e6
    return {
        "random": f32(g.standard_normal(10_000)),
        "odd_length": f32(g.standard_normal(CHUNK + 1)),
        "single_value": f32([0.3]),
        "zeros": np.zeros(2 * CHUNK, np.float32),
        "huge": f32([3.0e38, -3.3e38, 1.0, 7e37] * 300),
        "tiny_subnormal": f32([1e-45, -3e-42, 0.0, 1e-39]),
        "spike": spike,
        "mixed_scales": f32(g.standard_normal(4 * CHUNK) * np.logspace(-20, 20, 4 * CHUNK)),
    }


@pytest.mark.parametrize("name", list(CODECS))
@pytest.mark.parametrize("case", list(_inputs()))
def test_round_trip_within_bound(name: str, case: str) -> None:
    codec, x = make_codec(name), _inputs()[case]
    payload = codec.encode(x)
    y = codec.decode(payload, x.size)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.isfinite(y).all()
    err = float(np.abs(y.astype(np.float64) - x.astype(np.float64)).max())
    assert err <= codec.error_bound(x), f"{name}/{case}: error {err} > bound {codec.error_bound(x)}"
    assert sum(t.nbytes for t in payload) == codec.payload_bytes(x.size)
    assert [(t.shape, t.dtype) for t in payload] == codec.payload_shapes(x.size)
    if case == "spike":  # the spike coarsens only its own chunk: other chunks keep their precision
        far = slice(2 * CHUNK, None)
        assert float(np.abs(y[far] - x[far]).max()) <= codec.error_bound(x[far])


@pytest.mark.parametrize("name", list(CODECS))
def test_payload_shape_depends_only_on_numel(name: str) -> None:
    codec = make_codec(name)
    g = np.random.default_rng(1)
    a, b = codec.encode(f32(g.standard_normal(777))), codec.encode(f32(g.standard_normal(777) * 1e9))
    assert [t.shape for t in a] == [t.shape for t in b] and [t.dtype for t in a] == [t.dtype for t in b]


def test_compression_ratios() -> None:
    n = 1_000_000
    raw = 4 * n
    ratios = {name: raw / make_codec(name).payload_bytes(n) for name in CODECS}
    assert ratios["none"] == 1.0
    assert 1.99 < ratios["fp16"] < 2.0 and 1.99 < ratios["bf16"] < 2.0
    assert 3.98 < ratios["int8"] < 4.0
    assert 7.9 < ratios["int4"] < 8.0


def test_error_bounds_are_tight_enough_to_mean_something() -> None:
    """A bound that is always huge would pass any round trip; these are the documented precisions."""
    x = np.ones(CHUNK, np.float32)
    assert make_codec("none").error_bound(x) == 0
    assert make_codec("fp16").error_bound(x) < 1e-3
    assert make_codec("bf16").error_bound(x) < 5e-3
    assert make_codec("int8").error_bound(x) < 1 / 250
    assert make_codec("int4").error_bound(x) < 1 / 13


def test_bad_input_is_rejected_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        make_codec("int8").encode(f32([1.0, float("nan")]))
    with pytest.raises(ValueError, match="flat"):
        make_codec("fp16").encode(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="allowed values are none, fp16, bf16, int8, int4"):
        make_codec("int2")


def _accumulated_error(codec_name: str, updates: np.ndarray, feedback: bool) -> list[float]:
    codec, ef = make_codec(codec_name), ErrorFeedback()
    width = updates.shape[1]  # sums in float64 so that only the codec's error shows
    true_sum, decoded_sum, errors = np.zeros(width), np.zeros(width), []
    for u in updates:
        payload = ef.encode(codec, u, "w") if feedback else codec.encode(u)
        decoded_sum += codec.decode(payload, u.size)
        true_sum += u
        errors.append(float(np.abs(decoded_sum - true_sum).max()))
    return errors


# (value the codec rounds the same way every time, largest value of its chunk): 0.3 of a step off
SYSTEMATIC = {
    "fp16": (1 + 0.3 * 2**-10, 1.0),
    "bf16": (1 + 0.3 * 2**-7, 1.0),
    "int8": (0.3 / 127, 1.0),
    "int4": (0.3 / 7, 1.0),
}


@pytest.mark.parametrize("name", LOSSY)
def test_error_feedback_tracks_the_true_sum(name: str) -> None:
    """A value that always rounds the same way loses 0.3 step per round without feedback (error
    grows linearly); with feedback the residual carries it over (error stays within one round's)."""
    steps, (value, largest) = 200, SYSTEMATIC[name]
    update = np.full(CHUNK, value, np.float32)
    update[0] = largest
    updates = np.tile(update, (steps, 1))
    with_fb = _accumulated_error(name, updates, feedback=True)
    without = _accumulated_error(name, updates, feedback=False)
    one_round = make_codec(name).error_bound(update)
    assert max(with_fb) <= one_round  # at every step within ONE round's error: it cannot grow
    assert without[-1] > 50 * one_round and without[-1] > 9 * without[steps // 10 - 1]  # grows with steps


def test_error_feedback_keeps_one_residual_per_key() -> None:
    codec, ef = make_codec("int4"), ErrorFeedback()
    g = np.random.default_rng(2)
    ef.encode(codec, f32(g.standard_normal(100)), "fragment0")
    ef.encode(codec, f32(g.standard_normal(50)), "fragment1")
    assert ef.residuals["fragment0"].size == 100 and ef.residuals["fragment1"].size == 50
    restored = ErrorFeedback()
    restored.load_state_dict(ef.state_dict())
    assert np.array_equal(restored.residuals["fragment0"], ef.residuals["fragment0"])
    with pytest.raises(ValueError, match="fragment1"):
        ef.encode(codec, f32(g.standard_normal(100)), "fragment1")


def test_a_proposed_residual_takes_effect_only_when_committed() -> None:
    """A city whose round failed sent nothing: its residual must stay what it was."""
    codec, ef = make_codec("int8"), ErrorFeedback()
    x = f32(np.linspace(-1, 1, 300))
    ef.encode(codec, x, "k")
    before = ef.residuals["k"].copy()
    payload, residual = ef.propose(codec, x, "k")
    assert np.array_equal(ef.residuals["k"], before) and not np.array_equal(residual, before)
    ef.commit("k", residual)
    assert np.array_equal(ef.residuals["k"], residual)
    assert np.allclose(codec.decode(payload, x.size) + residual, x + before, atol=1e-6)
