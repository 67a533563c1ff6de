"""Deterministic partition of a city's windows across its ranks, with exact mid-epoch resume."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


class RankSampler(torch.utils.data.Sampler[int]):
    """Indexes 0..n-1 shuffled per epoch by (seed, epoch), dealt round-robin to `world` ranks.

    Every rank gets n // world indexes (the remainder is dropped so all ranks step together).
    `state_dict()` records the epoch and how many indexes this rank has consumed; after
    `load_state_dict()` the next iteration resumes at exactly that position. With a DataLoader that
    prefetches, pass the number of samples actually trained on: `state_dict(consumed=k)`.
    """

    def __init__(self, n: int, rank: int, world: int, seed: int, shuffle: bool = True):
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"RankSampler: rank {rank} outside 0..{world - 1}")
        if n < world:
            raise ValueError(f"RankSampler: {n} windows cannot feed {world} ranks (need at least one each)")
        self.n, self.rank, self.world, self.seed, self.shuffle = n, rank, world, seed, shuffle
        self.epoch = 0
        self.position = 0  # indexes yielded in the current epoch
        self._resume_at = 0

    def __len__(self) -> int:
        return self.n // self.world

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position, self._resume_at = epoch, 0, 0

    def indexes(self) -> np.ndarray:
        """This rank's indexes for the current epoch, in order."""
        if self.shuffle:
            order = np.random.Generator(np.random.PCG64([self.seed, self.epoch])).permutation(self.n)
        else:
            order = np.arange(self.n)
        return order[: len(self) * self.world][self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        idx = self.indexes()
        start, self._resume_at = self._resume_at, 0
        for k in range(start, len(idx)):
            self.position = k + 1
            yield int(idx[k])

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        return {
            "n": self.n,
            "world": self.world,
            "rank": self.rank,
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position if consumed is None else consumed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        same = {k: state[k] for k in ("n", "world", "rank", "seed")} == {
            "n": self.n,
            "world": self.world,
            "rank": self.rank,
            "seed": self.seed,
        }
        if not same:
            raise ValueError(
                f"RankSampler state {state} does not match this sampler "
                f"(n={self.n}, world={self.world}, rank={self.rank}, seed={self.seed})"
            )
        self.epoch = int(state["epoch"])
        self.position = self._resume_at = int(state["position"])
