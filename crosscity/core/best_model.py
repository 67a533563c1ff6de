"""Validation-based model selection and early stopping: which evaluation's model the run keeps, and
when further training stops paying off.

Pure decision logic, fed one pooled validation RMSE per evaluation step: in every rank of the
world-spanning baselines (the trainer pools the cities' sums over the world first, so every rank takes
the same decision at the same step), and in the coordinator for the federated algorithms (it pools the
sums the cities report and tells them in a round's reply).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Decision:
    improved: bool  # this evaluation's model is the best so far: keep it
    stop: bool  # `patience` evaluations in a row did not improve by `min_delta`: stop training


@dataclass
class BestModel:
    patience: int = 0  # evaluations without improvement before stopping; 0 = never stop early
    min_delta: float = 0.0  # an RMSE must be this much below the best to count as an improvement
    best_rmse: float = math.inf
    best_step: int = -1
    since_best: int = 0  # evaluations since the best one

    def update(self, step: int, rmse: float) -> Decision:
        """A NaN RMSE never improves (and counts towards patience)."""
        improved = rmse < self.best_rmse - self.min_delta  # the first finite RMSE always improves on inf
        if improved:
            self.best_rmse, self.best_step, self.since_best = rmse, step, 0
        else:
            self.since_best += 1
        return Decision(improved, self.patience > 0 and self.since_best >= self.patience)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)
