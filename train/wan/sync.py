"""The interface every inter-city algorithm implements, and what all of them share.

The trainer is algorithm-agnostic: after each backward pass it asks the sync to sum the step's
gradients (`sum_gradients`: over the city's LAN, or over every rank for the flat baseline), after
each optimizer step it calls `after_step`, and it checkpoints, votes to stop and evaluates on the
sync's one `clock`. Everything that crosses the WAN, and its byte accounting, lives behind this.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from crosscity.config import WanConfig
from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology
from crosscity.train.lan.allreduce import LanReducer, TorchReducer, allreduce_gradients, open_reducer
from crosscity.train.wan.clock import RoundClock


@dataclass
class WanRound:
    round: int
    bytes_sent: int
    bytes_recv: int
    seconds: float
    participants: list[int]
    fragment: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class InterCitySync(ABC):
    """Called by the trainer every step; owns everything that crosses the WAN."""

    # Which link the step's gradient sum travels: the city's LAN, or (flat) the WAN itself.
    gradient_link: ClassVar[Literal["lan", "wan"]] = "lan"
    # True for the baselines that need one torch.distributed world over every city (flat, PyTorch's
    # averager): plaintext gloo across the WAN, and one city's failure stops all (docs/security.md).
    spans_world: ClassVar[bool] = False

    def __init__(
        self,
        cfg: WanConfig,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        topo: Topology,
        groups: Groups,
        reducer: LanReducer | None = None,
        grad_dtype: str = "fp32",
    ):
        self.cfg, self.model, self.optimizer, self.topo, self.groups = cfg, model, optimizer, topo, groups
        self.reducer = reducer or TorchReducer(groups.city)
        self.grad_dtype = grad_dtype
        self.clock = self.make_clock(cfg)
        self.rounds = 0
        self.gradient_seconds = 0.0  # the last sum_gradients call
        self.log_event: Callable[..., None] = lambda **fields: None  # the trainer routes it to the metrics

    @classmethod
    def make_clock(cls, cfg: WanConfig) -> RoundClock:
        return RoundClock(cfg.sync_every, cfg.warmup_steps)

    @classmethod
    def make_reducer(cls, backend: str, topo: Topology, groups: Groups, device: torch.device) -> LanReducer:
        """Who sums this algorithm's gradients: the city (`lan.backend`'s reducer)."""
        return open_reducer(backend, topo, groups, device)

    # ------------------------------------------------------------------ every step

    def sum_gradients(self, words: list[float]) -> list[float]:
        """Average the step's gradients over the reducer's ranks; `words` (small integer votes) and
        the sync's own `city_votes` ride along. Returns the summed `words`."""
        start = time.perf_counter()
        sums = allreduce_gradients(self.model, self.reducer, self.grad_dtype, [*words, *self.city_votes()])
        self.take_city_votes(sums[len(words) :])
        self.gradient_seconds = time.perf_counter() - start
        return sums[: len(words)]

    def gradient_correction(self) -> torch.Tensor | None:
        """After the step's gradient sum, before the optimizer step: a flat vector to add to the
        gradients (SCAFFOLD's c - c_i), or None. Called once per inner step."""
        return None

    @abstractmethod
    def after_step(self, step: int, samples: int) -> WanRound | None:
        """After each inner optimizer step: start, merge or run this algorithm's rounds."""

    def agree_to_stop(self, city_votes: float, mine: bool, step: int) -> tuple[bool, bool]:
        """(stop now?, is my city the one leaving?): the same answer on every rank of the city.

        `city_votes` is the city's sum of stop flags from this step's gradient sum: a preempted city
        checkpoints and leaves on its own; the others never wait for it."""
        return city_votes > 0, city_votes > 0

    def join(self, fresh: bool, step: int) -> None:  # noqa: B027 - only the federated algorithms join
        """Before the first step: take part in the run (register, heal from the global model)."""

    def take_skip_to(self) -> int | None:
        """A step this city should jump ahead to, once (catching up with the others after an outage)."""
        return None

    def finish(self) -> WanRound | None:
        """End of training: the final round, so every city ends with the same parameters."""
        return None

    def report_validation(self, step: int, sums: dict[str, float]) -> None:  # noqa: B027 - federated only
        """Local rank 0: this city's validation pass, for the coordinator's early stopping."""

    def finish_early(self) -> bool:
        """Has the run's early stopping (the coordinator's, train.patience) ended training? The same
        answer on every rank of the city."""
        return False

    def holds_global_model(self) -> bool:
        """May this city write the run's final model? The baselines end equal everywhere: city 0 does."""
        return self.topo.city == 0

    def report_final(self, result: dict[str, Any]) -> None:  # noqa: B027 - only the federated algorithms
        """Hand the city's final result to the run's coordinator (local rank 0)."""

    def leave(self, reason: str) -> None:  # noqa: B027 - only the federated algorithms
        """This city stops: "finished", or "preempted" (it will be back)."""

    def city_votes(self) -> list[float]:
        """Control words to sum over the city with this step's gradients (streaming: landed results)."""
        return []

    def take_city_votes(self, sums: list[float]) -> None:  # noqa: B027 - optional hook
        """The city-wide sums of `city_votes()`, before this step's after_step."""

    def global_params(self) -> torch.Tensor:
        """This city's copy of the global model at its last round, as one flat vector (read-only): what
        FedProx keeps the inner steps close to (`wan.prox_mu`) and what validation scores. Here the
        parameters themselves; the federated algorithms return the global model they merged last."""
        return self._flat_params()

    def close(self) -> None:
        """Release what the sync holds (exchange threads, connections, the reducer) when the rank stops."""
        self.reducer.close()

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict[str, Any]:
        return {"rounds": self.rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds = state["rounds"]

    # ------------------------------------------------------------------ helpers

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _flat_params(self) -> torch.Tensor:
        return parameters_to_vector(self.model.parameters()).detach().clone()

    def _set_params(self, flat: torch.Tensor) -> None:
        with torch.no_grad():
            vector_to_parameters(flat, self.model.parameters())
