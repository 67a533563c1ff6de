"""Early stopping of a federated run: the coordinator pools the cities' validation passes per step.

Why here: stopping is one decision for every city, from every city's validation, and the cities of a
federated run share nothing but the coordinator. Each city reports the sums of its pass at step s
(`validation`); once every city of the run has reported s, the pooled RMSE goes to the same
`BestModel` the world-spanning baselines use, and after `train.patience` passes without improvement
the coordinator tells the cities in the reply of their next committed round (`finish`): each ends
there as at its last step, so they stop within a round of each other. A step that some city never
reports (it skipped it catching up, or gave up) is dropped once a later step is complete.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from crosscity.core.best_model import BestModel, Decision
from crosscity.core.forecast_scores import pool_metrics

# What a city's validation pass sums up (train/evaluate.py; pooled by core/forecast_scores.py).
SUM_KEYS = ("ae", "count", "n_windows", "p_ae", "p_se", "se")


def check_sums(sums: dict[str, Any]) -> dict[str, float]:
    """A peer's sums, or ValueError naming what is wrong: exactly SUM_KEYS, finite numbers >= 0."""
    if sorted(sums) != list(SUM_KEYS):
        raise ValueError(f"validation sums have keys {sorted(sums)}; expected {list(SUM_KEYS)}")
    for key, value in sums.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"validation sum {key}={value!r}: expected a finite number")
        if value < 0:
            raise ValueError(f"validation sum {key}={value!r}: expected >= 0")
    return {key: float(value) for key, value in sums.items()}


@dataclass
class EarlyStop:
    cities: int
    best: BestModel
    decided: int = -1  # the last step decided
    stop_step: int | None = None  # the step whose pass ended the run
    reports: dict[int, dict[int, dict[str, float]]] = field(default_factory=dict)  # step -> city -> sums

    def report(self, city: int, step: int, sums: dict[str, float]) -> list[tuple[int, float, Decision]]:
        """Records one city's pass; returns (step, pooled RMSE, decision) of every step it completed."""
        if step <= self.decided or self.stop_step is not None:
            return []
        self.reports.setdefault(step, {})[city] = sums
        out = []
        for s in sorted(self.reports):
            if len(self.reports[s]) < self.cities:
                continue
            rmse = pool_metrics(list(self.reports[s].values()))["rmse"]
            decision = self.best.update(s, rmse)
            out.append((s, rmse, decision))
            self.decided = s
            self.reports = {k: v for k, v in self.reports.items() if k > s}
            if decision.stop:
                self.stop_step = s
                break
        return out

    def state_dict(self) -> dict[str, Any]:
        """What a restarted coordinator continues from; passes not yet complete are dropped (the next
        complete step decides)."""
        return {"best": self.best.state_dict(), "decided": self.decided, "stop_step": self.stop_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best.load_state_dict(state["best"])
        self.decided, self.stop_step = state["decided"], state["stop_step"]
