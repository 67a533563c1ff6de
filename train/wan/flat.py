"""`wan.algorithm=flat`: data parallel over every rank of every city, the baseline to beat.

Each step's gradients are summed over all ranks, so they cross the WAN every step; there is no model
averaging round. Its "round" is that gradient sum: one WanRound per step with the ring's WAN bytes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from crosscity.config import WanConfig
from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology
from crosscity.train.lan.allreduce import GRAD_BYTES, LanReducer, TorchReducer
from crosscity.train.wan.clock import RoundClock
from crosscity.train.wan.collectives import world_ring_bytes
from crosscity.train.wan.sync import InterCitySync, WanRound


class FlatSync(InterCitySync):
    gradient_link: ClassVar[Literal["lan", "wan"]] = "wan"
    spans_world: ClassVar[bool] = True

    @classmethod
    def make_clock(cls, cfg: WanConfig) -> RoundClock:
        return RoundClock(every=1)  # gradients cross the WAN after every step

    @classmethod
    def make_reducer(cls, backend: str, topo: Topology, groups: Groups, device: torch.device) -> LanReducer:
        return TorchReducer(groups.world)  # the config rejects Horovod (one world per city) with flat

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        words = sum(p.numel() for p in self.model.parameters()) + 1  # gradients + the stop flag
        self.step_bytes = world_ring_bytes(words * GRAD_BYTES[self.grad_dtype], self.topo)

    def after_step(self, step: int, samples: int) -> WanRound | None:
        if not (self.step_bytes.sent or self.step_bytes.recv):
            return None
        sent, recv = self.step_bytes.sent, self.step_bytes.recv
        return WanRound(step, sent, recv, self.gradient_seconds, list(range(self.topo.num_cities)))

    def agree_to_stop(self, city_votes: float, mine: bool, step: int) -> tuple[bool, bool]:
        """The world gradient sum already carried every rank's stop flag: all ranks see the same sum
        and stop together (the world cannot go on without a city)."""
        return city_votes > 0, mine
