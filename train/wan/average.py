"""`wan.algorithm=average`: local SGD with FedAvg weights (samples each city trained since the last round)."""

from __future__ import annotations

import time
from typing import Any

import torch

from crosscity.train.wan.sync import InterCitySync, WanRound


class AverageSync(InterCitySync):
    """Local SGD: every H steps replace each city's model by the sample-weighted mean of all cities.

    The exchange carries each city's move since the last consensus (params - consensus), not raw
    parameters: the same mean for codec none, and small, well-scaled values for lossy codecs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.consensus = self._flat_params()  # every city starts from the same initial model

    def _round(self) -> WanRound:
        start = time.perf_counter()
        weight = self._city_weight()
        mean_move, moved = self._mean(self._flat_params() - self.consensus, weight, key="params")
        self.consensus = self.consensus + mean_move
        self._set_params(self.consensus.clone())
        moved = moved + self._sync_optimizer_state(weight)
        return self._record(moved, time.perf_counter() - start)

    def global_params(self) -> torch.Tensor:
        return self.consensus

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "consensus": self.consensus.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.consensus = state["consensus"].to(self.consensus.device)
