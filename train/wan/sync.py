"""Inter-city synchronisation: how and when the cities' models meet across the WAN.

Every algorithm is an `InterCitySync` that the trainer calls after each inner optimizer step.
`average` is local SGD with FedAvg weights (samples each city processed since the last round);
`diloco` treats (params at last round - params now) as a pseudo-gradient, averages it across
cities and applies it with an outer Nesterov SGD. `flat` is the data-parallel baseline: gradients
cross the WAN every step, so the sync itself does nothing but count those bytes.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from crosscity.config.schema import ConfigError, WanConfig
from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology
from crosscity.train.wan.codecs import ErrorFeedback, make_codec
from crosscity.train.wan.collectives import WanBytes, average_across_cities


@dataclass
class WanRound:
    round: int
    bytes_sent: int
    bytes_recv: int
    seconds: float
    participants: list[int]
    fragment: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SyncSchedule:
    """One step clock for warm-up and rounds: step s (1-based) syncs when s <= W or (s - W) % H == 0."""

    every: int
    warmup: int = 0

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ConfigError(f"wan.sync_every={self.every}: must be >= 1")
        if self.warmup < 0:
            raise ConfigError(f"wan.warmup_steps={self.warmup}: must be >= 0")

    def is_round(self, step: int) -> bool:
        return step <= self.warmup or (step - self.warmup) % self.every == 0


class InterCitySync(ABC):
    """Called by the trainer after each inner step; owns everything that crosses the WAN."""

    def __init__(
        self,
        cfg: WanConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        topo: Topology,
        groups: Groups,
    ):
        self.cfg, self.model, self.optimizer, self.topo, self.groups = cfg, model, optimizer, topo, groups
        self.schedule = SyncSchedule(cfg.sync_every, cfg.warmup_steps)
        self.codec = make_codec(cfg.codec)
        self.feedback = ErrorFeedback() if cfg.error_feedback else None
        self.rounds = 0
        self.samples_since_round = 0

    def after_step(self, step: int, samples: int) -> WanRound | None:
        """Count the samples; run a round when the schedule says so (the periodic algorithms)."""
        self.samples_since_round += samples
        return self._round() if self.schedule.is_round(step) else None

    def finish(self) -> WanRound | None:
        """Final full round so every city ends with the same parameters."""
        return self._round() if self.samples_since_round else None

    def city_votes(self) -> list[float]:
        """Control words to sum over the city with this step's gradients (streaming: landed results)."""
        return []

    def take_city_votes(self, sums: list[float]) -> None:  # noqa: B027 - optional hook
        """The city-wide sums of `city_votes()`, before this step's after_step."""

    def close(self) -> None:  # noqa: B027 - optional hook, most algorithms hold nothing
        """Release background resources (streaming's exchange thread); called when the rank stops."""

    def state_dict(self) -> dict[str, Any]:
        feedback = self.feedback.state_dict() if self.feedback else None
        return {"rounds": self.rounds, "samples_since_round": self.samples_since_round, "feedback": feedback}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds = state["rounds"]
        self.samples_since_round = state["samples_since_round"]
        if self.feedback is not None and state.get("feedback") is not None:
            self.feedback.load_state_dict(state["feedback"])

    @abstractmethod
    def _round(self) -> WanRound: ...

    # ---- helpers shared by the periodic algorithms

    def _flat_params(self) -> torch.Tensor:
        return parameters_to_vector(self.model.parameters()).detach().clone()

    def _set_params(self, flat: torch.Tensor) -> None:
        with torch.no_grad():
            vector_to_parameters(flat, self.model.parameters())

    def _city_weight(self) -> float:
        """FedAvg weight: samples the whole city processed since the last round (equal per rank)."""
        return float(self.samples_since_round * self.topo.ranks_per_city)

    def _mean(self, flat: torch.Tensor, weight: float, key: str) -> tuple[torch.Tensor, WanBytes]:
        return average_across_cities(flat, weight, self.groups, self.topo, self.codec, self.feedback, key)

    def _sync_optimizer_state(self, weight: float) -> WanBytes:
        """Apply the optimizer-state policy at a round: keep local, average across cities, or reset."""
        policy = self.cfg.optimizer_state
        if policy == "reset":
            self.optimizer.state.clear()
            return WanBytes()
        moved = WanBytes()
        if policy == "average":
            for i, (_, state) in enumerate(sorted(self.optimizer.state.items(), key=lambda kv: id(kv[0]))):
                for name in sorted(state):
                    tensor = state[name]
                    if torch.is_tensor(tensor) and tensor.is_floating_point() and tensor.dim() > 0:
                        mean, b = self._mean(tensor.flatten(), weight, key=f"opt{i}.{name}")
                        tensor.copy_(mean.view_as(tensor))
                        moved = moved + b
        return moved

    def _record(self, moved: WanBytes, seconds: float, **extra: Any) -> WanRound:
        self.rounds += 1
        self.samples_since_round = 0
        return WanRound(
            self.rounds, moved.sent, moved.recv, seconds, list(range(self.topo.num_cities)), extra=extra
        )


class FlatSync(InterCitySync):
    """Flat data parallel: gradients cross the WAN every step inside the trainer's world all-reduce."""

    def after_step(self, step: int, samples: int) -> WanRound | None:
        return None

    def finish(self) -> WanRound | None:
        return None

    def _round(self) -> WanRound:  # pragma: no cover - flat has no rounds
        raise NotImplementedError


class AverageSync(InterCitySync):
    """Local SGD: every H steps replace each city's model by the sample-weighted mean of all cities.

    The exchange carries each city's move since the last consensus (params - consensus), not raw
    parameters: the same mean for codec none, and small, well-scaled values for lossy codecs.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.consensus = self._flat_params()  # every city starts from the same initial model

    def _round(self) -> WanRound:
        start = time.perf_counter()
        weight = self._city_weight()
        mean_move, moved = self._mean(self._flat_params() - self.consensus, weight, key="params")
        self.consensus = self.consensus + mean_move
        self._set_params(self.consensus.clone())
        moved = moved + self._sync_optimizer_state(weight)
        return self._record(moved, time.perf_counter() - start)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "consensus": self.consensus.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.consensus = state["consensus"].to(self.consensus.device)


class DiLoCoSync(InterCitySync):
    """DiLoCo: average the pseudo-gradient (anchor - params) and take an outer Nesterov SGD step."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
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


def build_sync(
    cfg: WanConfig, model: nn.Module, optimizer: torch.optim.Optimizer, topo: Topology, groups: Groups
) -> InterCitySync:
    """The configured algorithm; streaming and the PyTorch baseline live in their own modules."""
    if cfg.algorithm == "flat":
        return FlatSync(cfg, model, optimizer, topo, groups)
    if cfg.algorithm == "average":
        return AverageSync(cfg, model, optimizer, topo, groups)
    if cfg.algorithm == "diloco":
        return DiLoCoSync(cfg, model, optimizer, topo, groups)
    if cfg.algorithm == "streaming":
        from crosscity.train.wan.streaming import StreamingSync

        return StreamingSync(cfg, model, optimizer, topo, groups)
    from crosscity.train.wan.torch_hierarchical import TorchHierarchicalSync

    return TorchHierarchicalSync(cfg, model, optimizer, topo, groups)
