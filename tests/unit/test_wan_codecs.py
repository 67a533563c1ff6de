"""Every WAN codec round-trips within its stated bound, and error feedback keeps sums on track."""

from __future__ import annotations

import pytest
import torch

from crosscity.train.wan.codecs import CHUNK, CODECS, ErrorFeedback, make_codec

LOSSY = [name for name in CODECS if name != "none"]


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    spike = torch.randn(3 * CHUNK + 5, generator=g) * 1e-3
    spike[CHUNK + 7] = 1e6
    return {
        "random": torch.randn(10_000, generator=g),
        "odd_length": torch.randn(CHUNK + 1, generator=g),
        "single_value": torch.tensor([0.3]),
        "zeros": torch.zeros(2 * CHUNK),
        "huge": torch.tensor([3.0e38, -3.3e38, 1.0, 7e37] * 300),
        "tiny_subnormal": torch.tensor([1e-45, -3e-42, 0.0, 1e-39]),
        "spike": spike,
        "mixed_scales": torch.randn(4 * CHUNK, generator=g) * torch.logspace(-20, 20, 4 * CHUNK),
    }


@pytest.mark.parametrize("name", list(CODECS))
@pytest.mark.parametrize("case", list(_inputs()))
def test_round_trip_within_bound(name: str, case: str) -> None:
    codec, x = make_codec(name), _inputs()[case]
    payload = codec.encode(x)
    y = codec.decode(payload, x.numel())
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert torch.isfinite(y).all()
    err = float((y.double() - x.double()).abs().max())
    assert err <= codec.error_bound(x), f"{name}/{case}: error {err} > bound {codec.error_bound(x)}"
    assert sum(t.numel() * t.element_size() for t in payload) == codec.payload_bytes(x.numel())
    if case == "spike":  # the spike coarsens only its own chunk: other chunks keep their precision
        far = slice(2 * CHUNK, None)
        assert float((y[far] - x[far]).abs().max()) <= codec.error_bound(x[far])


@pytest.mark.parametrize("name", list(CODECS))
def test_payload_shape_depends_only_on_numel(name: str) -> None:
    codec = make_codec(name)
    a, b = codec.encode(torch.randn(777)), codec.encode(torch.randn(777) * 1e9)
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
    x = torch.ones(CHUNK)
    assert make_codec("none").error_bound(x) == 0
    assert make_codec("fp16").error_bound(x) < 1e-3
    assert make_codec("bf16").error_bound(x) < 5e-3
    assert make_codec("int8").error_bound(x) < 1 / 250
    assert make_codec("int4").error_bound(x) < 1 / 13


def test_bad_input_is_rejected_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        make_codec("int8").encode(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="flat"):
        make_codec("fp16").encode(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="allowed values are none, fp16, bf16, int8, int4"):
        make_codec("int2")


def _accumulated_error(codec_name: str, updates: torch.Tensor, feedback: bool) -> list[float]:
    codec, ef = make_codec(codec_name), ErrorFeedback()
    width = updates.shape[1]  # sums in float64 so that only the codec's error shows
    true_sum, decoded_sum, errors = (
        torch.zeros(width, dtype=torch.float64),
        torch.zeros(width, dtype=torch.float64),
        [],
    )
    for u in updates:
        payload = ef.encode(codec, u, "w") if feedback else codec.encode(u)
        decoded_sum += codec.decode(payload, u.numel()).double()
        true_sum += u.double()
        errors.append(float((decoded_sum - true_sum).abs().max()))
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
    update = torch.full((CHUNK,), value)
    update[0] = largest
    updates = update.repeat(steps, 1)
    with_fb = _accumulated_error(name, updates, feedback=True)
    without = _accumulated_error(name, updates, feedback=False)
    one_round = make_codec(name).error_bound(update)
    assert max(with_fb) <= one_round  # at every step within ONE round's error: it cannot grow
    assert without[-1] > 50 * one_round and without[-1] > 9 * without[steps // 10 - 1]  # grows with steps


def test_error_feedback_keeps_one_residual_per_key() -> None:
    codec, ef = make_codec("int4"), ErrorFeedback()
    ef.encode(codec, torch.randn(100), "fragment0")
    ef.encode(codec, torch.randn(50), "fragment1")
    assert ef.residuals["fragment0"].numel() == 100 and ef.residuals["fragment1"].numel() == 50
    restored = ErrorFeedback()
    restored.load_state_dict(ef.state_dict())
    assert torch.equal(restored.residuals["fragment0"], ef.residuals["fragment0"])
    with pytest.raises(ValueError, match="fragment1"):
        ef.encode(codec, torch.randn(100), "fragment1")
