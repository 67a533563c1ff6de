"""Data parallel inside a city: one coalesced ring all-reduce of all gradients per step.

Done by hand rather than with DDP so the LAN time is measurable on its own, gradients can be
sent in bf16/fp16, and control words (the city's stop flag, streaming's "landed" votes) ride along
for free. The sum itself is a `LanReducer`: torch.distributed's city group here, or the city's own
Horovod world (train/lan_horovod.py, `lan.backend=horovod`); packing, compression and the flags
are shared.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn

from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GRAD_BYTES = {name: torch.empty((), dtype=dtype).element_size() for name, dtype in _DTYPES.items()}


class LanReducer(Protocol):
    """Sums one flat tensor over the ranks that share gradients (the city, or the world for flat)."""

    rank: int  # my place among them (logged once per generation, with `size`)
    size: int

    def sum_(self, wire: torch.Tensor) -> None:
        """In place: `wire` becomes the sum of every member's `wire`."""

    def close(self) -> None:
        """Release what the reducer holds; called once when the rank's groups are torn down."""


class TorchReducer:
    """A torch.distributed group (gloo or NCCL); the group itself is destroyed with the others."""

    def __init__(self, group: dist.ProcessGroup) -> None:
        self.group = group
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)

    def sum_(self, wire: torch.Tensor) -> None:
        dist.all_reduce(wire, group=self.group)

    def close(self) -> None:
        pass


def open_reducer(backend: str, topo: Topology, groups: Groups, device: torch.device) -> LanReducer:
    """The reducer `lan.backend` names over the city."""
    if backend == "horovod":
        from crosscity.train.lan.horovod import HorovodReducer

        return HorovodReducer(topo, groups.city, device)
    return TorchReducer(groups.city)


def allreduce_gradients(
    model: nn.Module, lan: LanReducer, grad_dtype: str, flags: Sequence[float]
) -> list[float]:
    """Average gradients over the reducer's ranks; returns the sum of every member's `flags`
    (small integer votes, e.g. the stop flag: exact in fp16/bf16 up to 256 ranks)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    words = torch.tensor(list(flags), dtype=torch.float32, device=grads[0].device)
    flat = torch.cat([g.flatten() for g in grads] + [words])
    wire = flat.to(_DTYPES[grad_dtype]) if grad_dtype != "fp32" else flat
    lan.sum_(wire)
    flat = wire.float()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g) / lan.size)
        offset += g.numel()
    return flat[offset:].tolist()
