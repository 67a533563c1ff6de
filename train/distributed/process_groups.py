"""The process groups a rank belongs to, built from the topology.

Normally (the federated algorithms) each city is a torch.distributed world of its own: `city` is
all there is, and nothing of torch.distributed crosses the WAN (the cities meet through the
coordinator, crosscity.federation). The two baselines that need one world over every city (flat,
PyTorch's averager) get three kinds of group:
- world:  every rank (flat sums its gradients here; PyTorch's averager averages here)
- city:   the ranks of my city; gradients are all-reduced here every step (LAN)
- stripe: local rank k of every city (unused by the baselines, kept for the layout)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from crosscity.train.distributed.topology import Topology


@dataclass
class Groups:
    world: dist.ProcessGroup
    city: dist.ProcessGroup
    stripe: dist.ProcessGroup | None
    city_ranks: list[int]  # ranks of my city in the default world, in local-rank order
    stripe_ranks: list[int]  # ranks of my stripe, in city order (empty in a city's own world)


def pick_device(requested: str, local_rank: int) -> torch.device:
    """One GPU per rank (local rank modulo the visible GPUs), or the CPU."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but torch sees no CUDA device")
    device = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def pick_backend(requested: str, device: torch.device) -> str:
    """NCCL for GPU tensors, gloo for CPU tensors, unless the config names one."""
    if requested in ("gloo", "nccl"):
        return requested
    return "nccl" if device.type == "cuda" else "gloo"


def init_groups(topo: Topology, store: dist.Store, backend: str, timeout_s: float = 600.0) -> Groups:
    """Join the world through `store` and create every city and stripe group (collective call)."""
    timeout = timedelta(seconds=timeout_s)
    dist.init_process_group(
        backend, store=store, rank=topo.global_rank, world_size=topo.world_size, timeout=timeout
    )
    city_group = stripe_group = None
    city_ranks: list[int] = []
    stripe_ranks: list[int] = []
    # new_group is collective over the world: every rank creates every group, in the same order.
    for c in range(topo.num_cities):
        ranks = topo.city_ranks(c)
        group = dist.new_group(ranks, timeout=timeout)
        if c == topo.city:
            city_group, city_ranks = group, ranks
    for k in range(topo.ranks_per_city):
        ranks = [topo.rank_of(c, k) for c in range(topo.num_cities)]
        group = dist.new_group(ranks, timeout=timeout)
        if k == topo.local_rank:
            stripe_group, stripe_ranks = group, ranks
    assert city_group is not None and stripe_group is not None
    return Groups(dist.group.WORLD, city_group, stripe_group, city_ranks, stripe_ranks)


def init_city_groups(topo: Topology, store: dist.Store, backend: str, timeout_s: float) -> Groups:
    """This city's own world: its R ranks, local rank = rank (a failure elsewhere cannot reach it)."""
    dist.init_process_group(
        backend,
        store=store,
        rank=topo.local_rank,
        world_size=topo.ranks_per_city,
        timeout=timedelta(seconds=timeout_s),
    )
    world = dist.group.WORLD
    return Groups(world, world, None, list(range(topo.ranks_per_city)), [])


def destroy_groups() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
