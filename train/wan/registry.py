"""`wan.algorithm` -> the InterCitySync that implements it (the one place that knows them all)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from crosscity.config import Config
from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology
from crosscity.train.wan import federated
from crosscity.train.wan.flat import FlatSync
from crosscity.train.wan.sync import InterCitySync
from crosscity.train.wan.torch_hierarchical import TorchHierarchicalSync

# average and diloco differ only in the coordinator's outer optimizer (federation/outer.py);
# streaming adds fragments on staggered clocks and overlap.
SYNCS: dict[str, type[InterCitySync]] = {
    "flat": FlatSync,
    "average": federated.FederatedSync,
    "diloco": federated.FederatedSync,
    "streaming": federated.FederatedSync,
    "torch_hierarchical": TorchHierarchicalSync,
}


def build_sync(
    cfg: Config,
    run_dir: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    topo: Topology,
    groups: Groups,
    device: torch.device,
    city_name: str,
) -> InterCitySync:
    """The configured algorithm with its gradient reducer (the city's LAN, or every rank for flat) and,
    for the federated algorithms, this rank's link to the coordinator."""
    cls = SYNCS[cfg.wan.algorithm]
    reducer = cls.make_reducer(cfg.lan.backend, topo, groups, device)
    args = (cfg.wan, model, optimizer, topo, groups, reducer, cfg.lan.grad_dtype)
    if cls.spans_world:
        return cls(*args)
    n_params = sum(p.numel() for p in model.parameters())
    link, agent = federated.connect(run_dir, cfg, topo, city_name, n_params)
    return federated.FederatedSync(*args, link=link, agent=agent)
