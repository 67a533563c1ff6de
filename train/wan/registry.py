"""`wan.algorithm` -> the InterCitySync that implements it (the one place that knows them all)."""

from __future__ import annotations

import torch
from torch import nn

from crosscity.config.schema import Config
from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology
from crosscity.train.wan.average import AverageSync
from crosscity.train.wan.diloco import DiLoCoSync
from crosscity.train.wan.flat import FlatSync
from crosscity.train.wan.streaming import StreamingSync
from crosscity.train.wan.sync import InterCitySync
from crosscity.train.wan.torch_hierarchical import TorchHierarchicalSync

SYNCS: dict[str, type[InterCitySync]] = {
    "flat": FlatSync,
    "average": AverageSync,
    "diloco": DiLoCoSync,
    "streaming": StreamingSync,
    "torch_hierarchical": TorchHierarchicalSync,
}


def build_sync(
    cfg: Config,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    topo: Topology,
    groups: Groups,
    device: torch.device,
) -> InterCitySync:
    """The configured algorithm with its gradient reducer (the city's LAN, or every rank for flat)."""
    cls = SYNCS[cfg.wan.algorithm]
    reducer = cls.make_reducer(cfg.lan.backend, topo, groups, device)
    return cls(cfg.wan, model, optimizer, topo, groups, reducer, cfg.lan.grad_dtype)
