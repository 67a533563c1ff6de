"""SCAFFOLD's city side (Karimireddy et al. 2020, option II): control variates against client drift.

A city keeps c_i, its estimate of its own gradient, and its copy of c, the coordinator's estimate of
the global one. Every inner step's gradient (after the city's all-reduce) gets + (c - c_i), so a city
whose data pulls away from the others' is steered back towards the global direction. At a round the
city uploads, next to its pseudo-gradient x - y, delta c_i = (x - y) / sum(lr) - c (x: the global
model the round started from, y: the city's parameters, sum(lr): the inner learning rates of the
steps since its last round), i.e. c_i+ = c_i - c + (x - y) / sum(lr). When the round commits, c_i
moves by delta c_i as the coordinator decoded it and c becomes the coordinator's new c
(crosscity/federation/coordinator.py `_move_control`). A round that did not take changes neither and
its learning rates count towards the next one, like its steps. Whole-model rounds only (average,
diloco: rule scaffold_needs_whole_model_rounds). Exact for plain SGD, where (x - y) / sum(lr) is the
mean corrected gradient; with AdamW it is the mean normalised step (docs/model_quality.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from crosscity.federation.codecs import Codec
from crosscity.federation.layout import stripe_bounds


class Scaffold:
    def __init__(self, numel: int, codec: Codec, ranks: int, rank: int) -> None:
        self.codec, self.ranks, self.rank = codec, ranks, rank
        self.mine = np.zeros(numel, np.float32)  # c_i
        self.server = np.zeros(numel, np.float32)  # c, as of this city's last committed round
        self.lr_sum = 0.0  # inner learning rates since the last round started
        self.pending: dict[int, tuple[np.ndarray, float]] = {}  # fragment -> (delta c_i as sent, lr_sum)
        self._correction: torch.Tensor | None = None

    def correction(self, lr: float, device: torch.device) -> torch.Tensor:
        """c - c_i for the inner step about to be taken with learning rate `lr`."""
        self.lr_sum += lr
        if self._correction is None:
            self._correction = torch.from_numpy(self.server - self.mine).to(device)
        return self._correction

    def propose(self, fragment: int, start: np.ndarray, now: np.ndarray) -> list[np.ndarray]:
        """This rank's codec payload of delta c_i for the round starting now. Every rank of the city
        holds the same vectors, so each decodes every stripe as the coordinator will, without the LAN."""
        drift = (start - now) / np.float32(self.lr_sum) if self.lr_sum > 0 else np.zeros_like(now)
        delta = (drift - self.server).astype(np.float32)
        payloads = [self.codec.encode(delta[a:b]) for a, b in self._stripes()]
        sent = [self.codec.decode(pl, b - a) for pl, (a, b) in zip(payloads, self._stripes(), strict=True)]
        self.pending[fragment] = (np.concatenate(sent), self.lr_sum)
        self.lr_sum = 0.0
        return payloads[self.rank]

    def commit(
        self,
        fragment: int,
        server_stripe: list[np.ndarray] | None,
        gather: Callable[[np.ndarray], np.ndarray],
    ) -> None:
        """The round counted: c_i += delta c_i, and c = the coordinator's (None: its reply was lost; the
        next committed round brings it)."""
        delta, _ = self.pending.pop(fragment)
        self.mine += delta
        if server_stripe is not None:
            a, b = self._stripes()[self.rank]
            self.server = gather(self.codec.decode(server_stripe, b - a).astype(np.float32))
        self._correction = None

    def give_back(self, fragment: int) -> None:
        """The round did not take: its learning rates count towards the next one."""
        self.lr_sum += self.pending.pop(fragment)[1]

    def restart(self, fragment: int) -> None:
        """The city took the global model (heal): nothing trained since, nothing in flight."""
        self.pending.pop(fragment, None)
        self.lr_sum = 0.0

    def _stripes(self) -> list[tuple[int, int]]:
        return [stripe_bounds(self.mine.size, self.ranks, k) for k in range(self.ranks)]

    def state_dict(self) -> dict[str, Any]:
        return {
            "mine": torch.from_numpy(self.mine.copy()),
            "server": torch.from_numpy(self.server.copy()),
            "lr_sum": self.lr_sum,
            "pending": {
                f: {"delta": torch.from_numpy(d.copy()), "lr_sum": s} for f, (d, s) in self.pending.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.mine = state["mine"].numpy().astype(np.float32, copy=True)
        self.server = state["server"].numpy().astype(np.float32, copy=True)
        self.lr_sum = state["lr_sum"]
        self.pending = {int(f): (p["delta"].numpy().copy(), p["lr_sum"]) for f, p in state["pending"].items()}
        self._correction = None
