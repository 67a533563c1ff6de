"""The inner optimizer and its learning-rate schedule, and FedProx's proximal term on the inner loss."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector

from crosscity.config import OptimConfig


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(index: int, total: int, schedule: str, warmup: int, floor: float) -> float:
    """Multiplier of optim.lr for the inner step with 0-based `index` of `total`: linear warm-up over
    the first `warmup` steps (a warm-up longer than the run just never reaches lr), then constant or
    a half cosine from 1 down to `floor` at the last step."""
    if index < warmup:
        return (index + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min((index - warmup) / max(total - warmup - 1, 1), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(
    cfg: OptimConfig, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per inner step; its state_dict (the step count) goes into the checkpoint."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: lr_factor(i, total_steps, cfg.schedule, cfg.warmup_steps, cfg.min_lr_ratio)
    )


def proximal_term(model: nn.Module, reference: torch.Tensor, mu: float) -> torch.Tensor:
    """FedProx (Li et al. 2020): mu/2 ||w - w_round||^2, which keeps a city's inner steps near the
    global model of its last round; its gradient is mu (w - w_round)."""
    drift = parameters_to_vector(model.parameters()) - reference
    return 0.5 * mu * drift.pow(2).sum()


def add_to_gradients(model: nn.Module, flat: torch.Tensor) -> None:
    """grad += the matching slice of `flat` (the parameters in parameters_to_vector's order)."""
    at = 0
    for param in model.parameters():
        n = param.numel()
        param.grad.add_(flat[at : at + n].view_as(param))
        at += n
