"""`wan.algorithm=diloco`: (params at the last round - params now) is a pseudo-gradient; its FedAvg-weighted
mean across cities is applied with an outer Nesterov SGD (Douillard et al. 2023)."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from crosscity.train.wan.sync import InterCitySync, WanRound


class DiLoCoSync(InterCitySync):
    """DiLoCo: average the pseudo-gradient (anchor - params) and take an outer Nesterov SGD step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.anchor = nn.Parameter(self._flat_params(), requires_grad=False)
        self.outer = torch.optim.SGD(
            [self.anchor],
            lr=self.cfg.outer_lr,
            momentum=self.cfg.outer_momentum,
            nesterov=self.cfg.nesterov and self.cfg.outer_momentum > 0,
        )

    def _round(self) -> WanRound:
        start = time.perf_counter()
        weight = self._city_weight()
        pseudo_grad = self.anchor.detach() - self._flat_params()
        mean, moved = self._mean(pseudo_grad, weight, key="pseudo_grad")
        self.anchor.grad = mean
        self.outer.step()
        self.anchor.grad = None
        self._set_params(self.anchor.detach().clone())
        moved = moved + self._sync_optimizer_state(weight)
        return self._record(moved, time.perf_counter() - start, pseudo_grad_norm=float(mean.norm()))

    def global_params(self) -> torch.Tensor:
        return self.anchor.detach()

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "anchor": self.anchor.detach().clone(),
            "outer": self.outer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            self.anchor.copy_(state["anchor"])
        self.outer.load_state_dict(state["outer"])
