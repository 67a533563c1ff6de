"""The outer (server) optimizer the coordinator applies to the averaged pseudo-gradient of a round.

A city sends g_c = (global it started from) - (its parameters now); the coordinator averages them
into g and moves the global model with one step of:
- `average` (FedAvg / local SGD): global <- global - g, i.e. the weighted mean of the cities' models;
- `diloco` / `streaming`: SGD with Nesterov momentum (DiLoCo's outer step; FedAvgM without Nesterov):
  buf <- mu buf + g (buf <- g at the first step), global <- global - lr (g + mu buf), as torch.optim.SGD.
float32 throughout, so every city that applies the same broadcast reconstructs the same bits.
"""

from __future__ import annotations

import numpy as np

from crosscity.config import WanConfig


class OuterOptimizer:
    """Holds one momentum buffer per fragment; `step` updates the fragment's global in place."""

    def __init__(self, lr: float, momentum: float, nesterov: bool) -> None:
        self.lr, self.momentum, self.nesterov = np.float32(lr), np.float32(momentum), nesterov
        self.buffers: dict[int, np.ndarray] = {}

    def step(self, fragment: int, params: np.ndarray, grad: np.ndarray) -> None:
        update = grad.astype(np.float32, copy=True)
        if self.momentum:
            buf = self.buffers.get(fragment)
            if buf is None:
                buf = update.copy()
            else:
                buf *= self.momentum
                buf += update
            self.buffers[fragment] = buf
            update = update + self.momentum * buf if self.nesterov else buf.copy()
        params -= self.lr * update

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"buf{f}": b for f, b in self.buffers.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.buffers = {int(k[3:]): np.asarray(v, np.float32).copy() for k, v in state.items()}


def make_outer(cfg: WanConfig) -> OuterOptimizer:
    if cfg.algorithm == "average":
        return OuterOptimizer(lr=1.0, momentum=0.0, nesterov=False)
    return OuterOptimizer(cfg.outer_lr, cfg.outer_momentum, cfg.nesterov and cfg.outer_momentum > 0)
