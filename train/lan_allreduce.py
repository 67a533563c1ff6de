"""Data parallel inside a city: one coalesced ring all-reduce of all gradients per step.

Done by hand rather than with DDP so the LAN time is measurable on its own, gradients can be
sent in bf16/fp16, and a control word (the city's stop flag) rides along for free.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def allreduce_gradients(model: nn.Module, group: dist.ProcessGroup, grad_dtype: str, flag: float) -> float:
    """Average gradients over `group`; returns the sum of every member's `flag`."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads] + [torch.tensor([flag], device=grads[0].device)])
    wire = flat.to(_DTYPES[grad_dtype]) if grad_dtype != "fp32" else flat
    dist.all_reduce(wire, group=group)
    size = dist.get_world_size(group)
    flat = wire.float()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g) / size)
        offset += g.numel()
    return float(flat[-1])
