"""A resumable stream of batches over one rank's share of its city's training windows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from crosscity.train.data.windows import RankSampler


class BatchStream:
    """Endless batches; the position (epoch, batch in epoch) is all a resume needs."""

    def __init__(
        self, dataset: Dataset, rank: int, world: int, batch_size: int, seed: int, num_workers: int = 0
    ):
        self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers
        self.sampler = RankSampler(len(dataset), rank, world, seed)
        self.batches_per_epoch = len(self.sampler) // batch_size
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"rank {rank} gets {len(self.sampler)} training windows, fewer than one batch of {batch_size}"
            )
        self.epoch, self.position = 0, 0
        self._iter: Iterator[Any] | None = None

    def _epoch_batches(self) -> list[list[int]]:
        self.sampler.set_epoch(self.epoch)
        order = list(self.sampler)
        return [order[i * self.batch_size : (i + 1) * self.batch_size] for i in range(self.batches_per_epoch)]

    def _start_epoch(self) -> None:
        batches = self._epoch_batches()[self.position :]
        if self.num_workers > 0:
            loader = DataLoader(
                self.dataset, batch_sampler=batches, num_workers=self.num_workers, persistent_workers=False
            )
            self._iter = iter(loader)
        else:
            self._iter = (self._collate(b) for b in batches)

    def _collate(self, indexes: list[int]) -> tuple[torch.Tensor, ...]:
        items = [self.dataset[i] for i in indexes]
        return tuple(torch.stack(parts) for parts in zip(*items, strict=True))

    def next(self) -> tuple[torch.Tensor, ...]:
        if self._iter is None:
            self._start_epoch()
        assert self._iter is not None
        try:
            batch = next(self._iter)
        except StopIteration:
            self.epoch, self.position = self.epoch + 1, 0
            self._start_epoch()
            batch = next(self._iter)
        self.position += 1
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self._iter = None
