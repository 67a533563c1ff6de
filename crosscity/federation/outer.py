"""The outer (server) optimizer the coordinator applies to the averaged pseudo-gradient of a round.

A city sends g_c = (global it started from) - (its parameters now); the coordinator averages them
into g and moves the global model with one step of:
- `average` (FedAvg / local SGD): global <- global - g, i.e. the weighted mean of the cities' models;
- `diloco` / `streaming` with `wan.outer_optimizer=sgd`: SGD with Nesterov momentum (DiLoCo's outer
  step; FedAvgM without Nesterov): buf <- mu buf + g (buf <- g at the first step),
  global <- global - lr (g + mu buf), as torch.optim.SGD;
- `adam` / `yogi`: FedAdam / FedYogi (Reddi et al., "Adaptive Federated Optimization", 2021,
  Algorithm 2, no bias correction): m <- b1 m + (1 - b1) g, and v <- b2 v + (1 - b2) g^2 (Adam)
  or v <- v - (1 - b2) g^2 sign(v - g^2) (Yogi), from m = 0 and v = tau^2;
  global <- global - lr m / (sqrt(v) + tau).
  Each coordinate moves by about lr per round whatever the scale of g: a per-coordinate step size.
float32 throughout, so every city that applies the same broadcast reconstructs the same bits.
"""

from __future__ import annotations

import re
from typing import ClassVar

import numpy as np

from crosscity.config import WanConfig


class OuterOptimizer:
    """Holds its state arrays (`slots`) per fragment; `step` updates the fragment's global in place."""

    slots: ClassVar[tuple[str, ...]] = ()

    def __init__(self, lr: float) -> None:
        self.lr = np.float32(lr)
        self.state: dict[str, dict[int, np.ndarray]] = {slot: {} for slot in self.slots}

    def step(self, fragment: int, params: np.ndarray, grad: np.ndarray) -> None:
        params -= self.lr * grad.astype(np.float32, copy=False)

    def state_dict(self) -> dict[str, np.ndarray]:
        """`{slot}{fragment}` -> array: what the coordinator's state npz holds (as `outer_...`)."""
        return {f"{slot}{f}": a for slot, arrays in self.state.items() for f, a in arrays.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.state = {slot: {} for slot in self.slots}
        for key, array in state.items():
            found = re.fullmatch(r"([a-z]+)(\d+)", key)
            if found and found.group(1) in self.state:
                self.state[found.group(1)][int(found.group(2))] = np.asarray(array, np.float32).copy()


class MomentumSGD(OuterOptimizer):
    """DiLoCo's outer step (FedAvgM): SGD with (Nesterov) momentum, as torch.optim.SGD."""

    slots = ("buf",)

    def __init__(self, lr: float, momentum: float, nesterov: bool) -> None:
        super().__init__(lr)
        self.momentum, self.nesterov = np.float32(momentum), nesterov

    def step(self, fragment: int, params: np.ndarray, grad: np.ndarray) -> None:
        update = grad.astype(np.float32, copy=True)
        if self.momentum:
            buffers = self.state["buf"]
            buf = buffers.get(fragment)
            if buf is None:
                buf = update.copy()
            else:
                buf *= self.momentum
                buf += update
            buffers[fragment] = buf
            update = update + self.momentum * buf if self.nesterov else buf.copy()
        params -= self.lr * update


class Adaptive(OuterOptimizer):
    """FedAdam / FedYogi: first and second moments of the pseudo-gradient, per coordinate."""

    slots = ("m", "v")

    def __init__(self, lr: float, beta1: float, beta2: float, tau: float, yogi: bool) -> None:
        super().__init__(lr)
        self.beta1, self.beta2, self.tau = np.float32(beta1), np.float32(beta2), np.float32(tau)
        self.yogi = yogi

    def step(self, fragment: int, params: np.ndarray, grad: np.ndarray) -> None:
        g = grad.astype(np.float32, copy=False)
        m = self.state["m"].setdefault(fragment, np.zeros_like(g))
        v = self.state["v"].setdefault(fragment, np.full_like(g, self.tau * self.tau))
        m *= self.beta1
        m += (1 - self.beta1) * g
        g2 = g * g
        if self.yogi:
            v -= (1 - self.beta2) * g2 * np.sign(v - g2)
        else:
            v *= self.beta2
            v += (1 - self.beta2) * g2
        params -= self.lr * m / (np.sqrt(v) + self.tau)


def make_outer(cfg: WanConfig) -> OuterOptimizer:
    if cfg.algorithm == "average":
        return OuterOptimizer(lr=1.0)  # FedAvg: the mean of the cities' models (rule adaptive_outer_...)
    if cfg.outer_optimizer == "sgd":
        return MomentumSGD(cfg.outer_lr, cfg.outer_momentum, cfg.nesterov and cfg.outer_momentum > 0)
    yogi = cfg.outer_optimizer == "yogi"
    return Adaptive(cfg.outer_lr, cfg.outer_beta1, cfg.outer_beta2, cfg.outer_eps, yogi)
