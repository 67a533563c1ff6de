"""The inner optimizer's schedule and FedProx's proximal term (train/optim.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from crosscity.config import OptimConfig
from crosscity.train.optim import build_optimizer, build_schedule, lr_factor, proximal_term


def test_warmup_is_linear_then_cosine_reaches_the_floor_at_the_last_step() -> None:
    factors = [lr_factor(i, 100, "cosine", 10, 0.1) for i in range(100)]
    assert factors[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert factors[10] == pytest.approx(1.0)
    assert factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))  # decays monotonically
    assert factors[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=0.02)  # halfway down
    assert [lr_factor(i, 100, "constant", 4, 0.1) for i in (0, 3, 4, 99)] == [0.25, 1.0, 1.0, 1.0]


def _lrs(opt: torch.optim.Optimizer, schedule, model: nn.Module, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        model(torch.ones(1, 3)).sum().backward()
        opt.step()
        schedule.step()
    return out


def test_schedule_resumes_from_its_state_dict_at_the_same_step() -> None:
    cfg = OptimConfig(lr=0.01, schedule="cosine", warmup_steps=3, min_lr_ratio=0.2)
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = build_optimizer(cfg, model)
    sched = build_schedule(cfg, opt, 12)
    straight = _lrs(opt, sched, model, 12)
    assert straight[0] == pytest.approx(0.01 / 3) and straight[-1] == pytest.approx(0.002)

    model = nn.Linear(3, 1)
    opt = build_optimizer(cfg, model)
    sched = build_schedule(cfg, opt, 12)
    first = _lrs(opt, sched, model, 5)
    saved = {"optimizer": opt.state_dict(), "schedule": sched.state_dict()}
    opt = build_optimizer(cfg, model)
    sched = build_schedule(cfg, opt, 12)
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["schedule"])
    assert first + _lrs(opt, sched, model, 7) == pytest.approx(straight, rel=1e-12)


def test_proximal_term_gradient_is_mu_times_the_drift_from_the_round_model() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    reference = parameters_to_vector(model.parameters()).detach() + torch.randn(10)
    proximal_term(model, reference, mu=0.3).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters()])
    drift = parameters_to_vector(model.parameters()).detach() - reference
    torch.testing.assert_close(grad, 0.3 * drift)
    model.zero_grad()
    assert float(proximal_term(model, reference, mu=0.0).detach()) == 0.0
