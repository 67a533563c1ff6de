"""The inter-city algorithms on real gloo process groups (2 cities x 2 ranks)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crosscity.config import WanConfig
from crosscity.train.wan.average import AverageSync
from crosscity.train.wan.diloco import DiLoCoSync
from tests.helpers.distributed import run_on_cities

CITY_SAMPLES = {0: 10, 1: 30}  # unequal: FedAvg weights must follow them exactly


def _moves(city: int) -> list[torch.Tensor]:
    """What city `city` learned since the last round: a different move per city."""
    torch.manual_seed(100 + city)
    return [torch.randn(3, 5), torch.randn(3)]


def _average_round(topo, groups):
    torch.manual_seed(7)  # every city starts from the same model
    model = nn.Linear(5, 3)
    sync = AverageSync(
        WanConfig(sync_every=1), model, torch.optim.SGD(model.parameters(), lr=0.1), topo, groups
    )
    with torch.no_grad():
        for p, move in zip(model.parameters(), _moves(topo.city), strict=True):
            p.add_(move)
    rnd = sync.after_step(1, CITY_SAMPLES[topo.city])
    return [p.detach().clone() for p in model.parameters()], rnd.bytes_sent, sync.rounds


def test_average_is_exact_sample_weighted_mean() -> None:
    results = run_on_cities(_average_round, 2, 2)
    torch.manual_seed(7)
    init = list(nn.Linear(5, 3).parameters())
    w = CITY_SAMPLES
    expected = [
        p.detach() + (w[0] * a + w[1] * b) / (w[0] + w[1])
        for p, a, b in zip(init, _moves(0), _moves(1), strict=True)
    ]
    for params, sent, rounds in results.values():
        assert rounds == 1 and sent > 0
        for got, want in zip(params, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def _diloco_round(topo, groups, cfg: WanConfig):
    torch.manual_seed(7)  # DiLoCo starts every city from the same anchor
    model = nn.Linear(5, 3)
    sync = DiLoCoSync(cfg, model, torch.optim.SGD(model.parameters(), lr=0.1), topo, groups)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * (topo.city + 1))  # city c took inner steps worth +0.5 (c + 1)
    sync.after_step(1, CITY_SAMPLES[topo.city])
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize(("outer_lr", "momentum", "factor"), [(1.0, 0.0, 1.0), (0.7, 0.9, 0.7 * 1.9)])
def test_diloco_outer_nesterov_step_on_weighted_pseudo_gradient(
    outer_lr: float, momentum: float, factor: float
) -> None:
    """pseudo-gradient g = -(weighted mean move); first Nesterov step moves the anchor by -lr (1 + mu) g."""
    cfg = WanConfig(algorithm="diloco", sync_every=1, outer_lr=outer_lr, outer_momentum=momentum)
    results = run_on_cities(_diloco_round, 2, 2, cfg)
    torch.manual_seed(7)
    init = list(nn.Linear(5, 3).parameters())
    w = CITY_SAMPLES
    mean_move = (w[0] * 0.5 + w[1] * 1.0) / (w[0] + w[1])
    for params in results.values():
        for got, p0 in zip(params, init, strict=True):
            torch.testing.assert_close(got, p0.detach() + factor * mean_move, rtol=1e-5, atol=1e-6)
