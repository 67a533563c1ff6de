"""A miniature of the trainer's loop over real gloo groups: toy model, deterministic batches, a sync."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from crosscity.config import WanConfig, load_config
from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology
from crosscity.train.lan.allreduce import TorchReducer, allreduce_gradients
from crosscity.train.wan.federated import FederatedSync, connect
from crosscity.train.wan.registry import SYNCS
from crosscity.train.wan.sync import InterCitySync, WanRound

INNER_LR = 0.05


def make_model() -> nn.Module:
    torch.manual_seed(0)  # the same initial model in every city
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2))


def batch_size(city: int) -> int:
    return 4 + 4 * city  # unequal cities: FedAvg weights matter


def batch(city: int, local_rank: int, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10_000 * city + 100 * local_rank + step)
    x = torch.randn(size, 6, generator=g)
    return x, torch.sin(x[:, :2] * (1 + city)) + 0.1 * torch.randn(size, 2, generator=g)


def inner_step(
    model: nn.Module, opt: torch.optim.Optimizer, city: int, local_rank: int, step: int, size: int
) -> None:
    """Forward and backward on this rank's batch (the caller all-reduces and steps)."""
    x, y = batch(city, local_rank, step, size)
    opt.zero_grad()
    ((model(x) - y) ** 2).mean().backward()


SyncFactory = Callable[[nn.Module, torch.optim.Optimizer, Topology, Groups], InterCitySync]


def run_steps(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    sync: InterCitySync,
    topo: Topology,
    groups: Groups,
    steps: range,
    stall: dict[int, float] | None = None,
    sizes: Callable[[int], int] = batch_size,
) -> tuple[list[WanRound | None], list[float]]:
    """The trainer's loop in miniature; `stall[step]` sleeps this long (a slow city) before after_step."""
    rounds, call_s = [], []
    for step in steps:
        inner_step(model, opt, topo.city, topo.local_rank, step, sizes(topo.city))
        ours = isinstance(sync, InterCitySync)  # test_torch_averager passes PyTorch's averager in a shim
        words = sync.city_votes() if ours else []
        sums = allreduce_gradients(model, TorchReducer(groups.city), "fp32", words)
        if ours:
            sync.take_city_votes(sums)
        opt.step()
        time.sleep((stall or {}).get(step, 0.0))
        start = time.perf_counter()
        rounds.append(sync.after_step(step, sizes(topo.city)))
        call_s.append(time.perf_counter() - start)
    return rounds, call_s


Source = SyncFactory | WanConfig | Path  # a factory, a world-spanning baseline, or a federated run dir


def fresh(
    topo: Topology, groups: Groups, make_sync: Source, join: bool = True
) -> tuple[nn.Module, torch.optim.Optimizer, InterCitySync]:
    """A new model, optimizer and sync. A Path is a run directory served by a coordinator of the test
    (tests/helpers/distributed.py): the sync is the federated one, joined unless `join=False`."""
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    if isinstance(make_sync, Path):
        return model, opt, federated_sync(make_sync, model, opt, topo, groups, join)
    if isinstance(make_sync, WanConfig):
        return model, opt, SYNCS[make_sync.algorithm](make_sync, model, opt, topo, groups)
    return model, opt, make_sync(model, opt, topo, groups)


def federated_sync(
    run_dir: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    topo: Topology,
    groups: Groups,
    join: bool = True,
) -> FederatedSync:
    cfg = load_config(run_dir / "config.yaml")
    n_params = sum(p.numel() for p in model.parameters())
    link, agent = connect(run_dir, cfg, topo, f"city{topo.city}", n_params)
    sync = FederatedSync(
        cfg.wan, model, opt, topo, groups, TorchReducer(groups.city), "fp32", link=link, agent=agent
    )
    if join:
        sync.join(fresh=True, step=0)
    return sync


def train(
    topo: Topology,
    groups: Groups,
    make_sync: Source,
    steps: int,
    stall: dict[int, float] | None = None,
    sizes: Callable[[int], int] = batch_size,
) -> tuple[torch.Tensor, list[WanRound | None], list[float]]:
    """`steps` inner steps and the final sync; final parameters, each step's round, after_step times."""
    model, opt, sync = fresh(topo, groups, make_sync)
    rounds, call_s = run_steps(model, opt, sync, topo, groups, range(1, steps + 1), stall, sizes)
    rounds.append(sync.finish())
    return parameters_to_vector(model.parameters()).detach(), rounds, call_s


def by_rank(results: dict[int, Any]) -> list[Any]:
    return [results[rank] for rank in sorted(results)]
