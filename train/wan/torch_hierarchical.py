"""PyTorch's own post-local SGD averager, unchanged, behind our interface: the baseline to beat.

`HierarchicalModelAverager` with {H: world} all-reduces the full fp32 parameters over ALL ranks
every H steps (plus, optionally, {h: R} over groups of R ranks every h steps). Its behaviour is
kept as PyTorch has it, on purpose, because that is what a user of it gets:
- groups are contiguous blocks of global ranks (`dist.new_subgroups`), not sites: the optional
  intra level matches our cities only because our launchers number ranks city-major;
- its step counter starts at 0 and it averages when counter % H == 0, so it averages after inner
  steps 1, H+1, 2H+1, ... (our schedule: H, 2H, ...); with warmup_steps=W it skips the first W
  calls and has no synchronous warm-up of its own (in PyTorch that is the DDP comm hook's job);
- equal weights (no FedAvg), no compression, no overlap, optimizer state never averaged.

WAN bytes: the world all-reduce is gloo's ring, where each rank sends 2 (W-1)/W * 4 n bytes to
rank-1. With city-major numbering only a city's local rank 0 sends across the WAN (to the previous
city's last rank), and only local rank R-1 receives from it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch.distributed.algorithms.model_averaging.hierarchical_model_averager import HierarchicalModelAverager
from torch.distributed.algorithms.model_averaging.utils import average_parameters

from crosscity.config import WanConfig
from crosscity.train.wan.clock import PytorchAveragerClock, RoundClock
from crosscity.train.wan.collectives import world_ring_bytes
from crosscity.train.wan.sync import InterCitySync, WanRound


class TorchHierarchicalSync(InterCitySync):
    """Calls `HierarchicalModelAverager.average_parameters` after every inner step, as PyTorch documents."""

    spans_world: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        every, world = self.cfg.sync_every, self.topo.world_size
        intra = self.cfg.torch_intra_every  # 0 = no intra-city level
        levels: OrderedDict[int, int] = OrderedDict()
        if intra:
            levels[intra] = self.topo.ranks_per_city
        levels[every] = world
        self.averager = HierarchicalModelAverager(levels, warmup_steps=self.cfg.warmup_steps)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self._pending_vote: tuple[Any, torch.Tensor, bool] | None = None  # (work, world sum, mine)

    @classmethod
    def make_clock(cls, cfg: WanConfig) -> RoundClock:
        return PytorchAveragerClock(cfg.sync_every, cfg.warmup_steps)

    def after_step(self, step: int, samples: int) -> WanRound | None:
        """The averager keeps its own counter and decides; our clock mirrors it (stop votes, logs)."""
        start = time.perf_counter()
        self.averager.average_parameters(self.model.parameters())
        if not self.clock.is_round(step):
            return None
        return self._record(time.perf_counter() - start)

    def agree_to_stop(self, city_votes: float, mine: bool, step: int) -> tuple[bool, bool]:
        """Every city stops at one step (the world averager needs all of them): cities vote at each
        round boundary with a background all-reduce and act on it at the next one, so the vote never
        blocks training on a WAN round trip; a preemption notice (minutes ahead) covers one period."""
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
        """One more world average so every city ends equal (PyTorch has no final sync of its own)."""
        if self._pending_vote is not None:
            self._pending_vote[0].wait()  # training is over: a late vote changes nothing
            self._pending_vote = None
        if self.clock.is_round(self.averager.step):
            return None
        start = time.perf_counter()
        average_parameters(iter(self.model.parameters()), self.groups.world)
        return self._record(time.perf_counter() - start)

    def _record(self, seconds: float) -> WanRound:
        self.rounds += 1
        moved = world_ring_bytes(4 * self.n_params, self.topo)
        return WanRound(self.rounds, moved.sent, moved.recv, seconds, list(range(self.topo.num_cities)))

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "averager_step": self.averager.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.averager.step = state["averager_step"]
