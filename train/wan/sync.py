"""The interface every inter-city algorithm implements, and what all of them share.

The trainer is algorithm-agnostic: after each backward pass it asks the sync to sum the step's
gradients (`sum_gradients`: over the city's LAN, or over every rank for the flat baseline), after
each optimizer step it calls `after_step`, and it checkpoints, votes to stop and evaluates on the
sync's one `clock`. Everything that crosses the WAN, and its byte accounting, lives behind this.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from crosscity.config.schema import WanConfig
from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology
from crosscity.train.lan.allreduce import LanReducer, TorchReducer, allreduce_gradients, open_reducer
from crosscity.train.wan.clock import RoundClock
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


class InterCitySync(ABC):
    """Called by the trainer every step; owns everything that crosses the WAN."""

    # Which link the step's gradient sum travels: the city's LAN, or (flat) the WAN itself.
    gradient_link: ClassVar[Literal["lan", "wan"]] = "lan"

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
        self.codec = make_codec(cfg.codec)
        self.feedback = ErrorFeedback() if cfg.error_feedback else None
        self.rounds = 0
        self.samples_since_round = 0
        self.gradient_seconds = 0.0  # the last sum_gradients call
        self._pending_vote: tuple[Any, torch.Tensor, bool] | None = None  # (work, world sum, mine)

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

    def after_step(self, step: int, samples: int) -> WanRound | None:
        """Count the samples; run a round when the clock says so (the periodic algorithms)."""
        self.samples_since_round += samples
        return self._round() if self.clock.is_round(step) else None

    def agree_to_stop(self, city_votes: float, mine: bool, step: int) -> tuple[bool, bool]:
        """(stop now?, is my city the one leaving?): the same answer on every rank at the same step.

        `city_votes` is the city's sum of stop flags from this step's gradient sum. Cities vote at
        each round boundary with a background all-reduce and act on the result at the next one:
        the vote never blocks training on a WAN round trip, and a preemption notice (minutes ahead)
        easily covers one period.
        """
        if not self.clock.is_round(step):
            return False, False
        if self._pending_vote is not None:
            work, flag, mine_then = self._pending_vote
            work.wait()
            self._pending_vote = None
            if flag.item() > 0:
                return True, mine_then
        flag = torch.tensor([float(city_votes > 0)], device=self._device())
        work = dist.all_reduce(flag, group=self.groups.world, async_op=True)
        self._pending_vote = (work, flag, city_votes > 0)
        return False, False

    def finish(self) -> WanRound | None:
        """End of training: settle a vote still in flight, then the final round so every city ends
        with the same parameters."""
        if self._pending_vote is not None:
            self._pending_vote[0].wait()  # training is over: a late vote changes nothing
            self._pending_vote = None
        return self._final_round()

    def _final_round(self) -> WanRound | None:
        return self._round() if self.samples_since_round else None

    def city_votes(self) -> list[float]:
        """Control words to sum over the city with this step's gradients (streaming: landed results)."""
        return []

    def take_city_votes(self, sums: list[float]) -> None:  # noqa: B027 - optional hook
        """The city-wide sums of `city_votes()`, before this step's after_step."""

    def global_params(self) -> torch.Tensor:
        """This city's copy of the global model at its last round, as one flat vector (read-only): what
        FedProx keeps the inner steps close to (`wan.prox_mu`) and what validation scores. Here the
        parameters themselves; the periodic algorithms return the copy they keep between rounds."""
        return self._flat_params()

    def close(self) -> None:
        """Release what the sync holds (streaming's exchange thread, the reducer) when the rank stops."""
        self.reducer.close()

    # ------------------------------------------------------------------ checkpoints

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

    # ------------------------------------------------------------------ helpers of the periodic algorithms

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

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
