"""The coordinator's outer optimizers (crosscity/federation/outer.py) against hand-written steps."""

from __future__ import annotations

import numpy as np
import pytest

from crosscity.config import load_config
from crosscity.federation.outer import Adaptive, MomentumSGD, OuterOptimizer, make_outer

LR, B1, B2, TAU = 0.01, 0.9, 0.99, 1e-3


def reference(grads: list[np.ndarray], x: np.ndarray, yogi: bool) -> np.ndarray:
    """Reddi et al. 2021, Algorithm 2 (delta = -g), in float64, one coordinate at a time."""
    x = x.astype(np.float64).copy()
    m, v = np.zeros_like(x), np.full_like(x, TAU * TAU)
    for g in grads:
        for i, gi in enumerate(g.astype(np.float64)):
            m[i] = B1 * m[i] + (1 - B1) * (-gi)
            if yogi:
                v[i] = v[i] - (1 - B2) * gi * gi * np.sign(v[i] - gi * gi)
            else:
                v[i] = B2 * v[i] + (1 - B2) * gi * gi
            x[i] = x[i] + LR * m[i] / (np.sqrt(v[i]) + TAU)
    return x


def grads(steps: int, n: int = 7) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        (rng.standard_normal(n) * 10.0 ** rng.integers(-4, 1, n)).astype(np.float32) for _ in range(steps)
    ]


@pytest.mark.parametrize("yogi", [False, True], ids=["fedadam", "fedyogi"])
def test_adaptive_step_is_the_papers(yogi: bool) -> None:
    x0 = np.linspace(-1, 1, 7).astype(np.float32)
    params, opt = x0.copy(), Adaptive(LR, B1, B2, TAU, yogi)
    for g in grads(5):
        opt.step(0, params, g)
    np.testing.assert_allclose(params, reference(grads(5), x0, yogi), rtol=1e-5, atol=1e-7)
    assert params.dtype == np.float32


def test_yogi_keeps_a_larger_second_moment_than_adam_after_a_spike() -> None:
    """Yogi's v moves by at most (1 - b2) g^2 towards g^2: after one large pseudo-gradient and small
    ones it keeps a larger v, so smaller steps, than Adam's exponential average."""
    steps = [np.full(3, 1.0, np.float32)] + [np.full(3, 1e-3, np.float32)] * 20
    adam, yogi = Adaptive(LR, B1, B2, TAU, False), Adaptive(LR, B1, B2, TAU, True)
    for g in steps:
        adam.step(0, np.zeros(3, np.float32), g)
        yogi.step(0, np.zeros(3, np.float32), g)
    assert (yogi.state["v"][0] > 1.01 * adam.state["v"][0]).all()


@pytest.mark.parametrize(
    "make",
    [
        lambda: Adaptive(LR, B1, B2, TAU, False),
        lambda: Adaptive(LR, B1, B2, TAU, True),
        lambda: MomentumSGD(0.7, 0.9, True),
    ],
    ids=["fedadam", "fedyogi", "nesterov"],
)
def test_state_dict_continues_the_same_trajectory(make) -> None:
    """What the coordinator persists in its state npz is all a restarted one needs: the same bits."""
    gs = grads(4)
    whole, p_whole = make(), np.ones(7, np.float32)
    for g in gs:
        whole.step(0, p_whole, g)
    first, p = make(), np.ones(7, np.float32)
    for g in gs[:2]:
        first.step(0, p, g)
    second: OuterOptimizer = make()
    second.load_state_dict(dict(first.state_dict()))
    for g in gs[2:]:
        second.step(0, p, g)
    assert np.array_equal(p, p_whole)
    assert set(first.state_dict()) == {f"{slot}0" for slot in first.slots}


def test_make_outer_follows_the_config() -> None:
    def outer(*overrides: str) -> OuterOptimizer:
        return make_outer(load_config(None, list(overrides)).wan)

    assert type(outer("wan.algorithm=average")) is OuterOptimizer  # FedAvg: no state
    assert isinstance(outer("wan.algorithm=diloco"), MomentumSGD)
    yogi = outer(
        "wan.algorithm=streaming", "wan.outer_optimizer=yogi", "wan.outer_lr=0.02", "wan.outer_eps=0.01"
    )
    assert (
        isinstance(yogi, Adaptive)
        and yogi.yogi
        and yogi.lr == np.float32(0.02)
        and yogi.tau == np.float32(0.01)
    )
