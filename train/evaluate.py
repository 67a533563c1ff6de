"""Validation in ug/m3: the model next to the persistence baseline on the very same windows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from crosscity.config import DataConfig
from crosscity.train.data.windows import CityWindows

KEYS = ("se", "ae", "p_se", "p_ae", "count")  # squared / absolute errors of model and persistence, count


def window_options(d: DataConfig) -> dict[str, object]:
    """The CityWindows arguments of a run's data section: training and scoring read windows alike."""
    return {
        "past": d.past_hours,
        "horizon": d.horizon_hours,
        "target": d.target,
        "max_missing": d.max_missing,
        "stats": d.stats,
        "fill_hours": None if d.fill_hours < 0 else d.fill_hours,
    }


@dataclass
class Scores:
    """Error sums per station and forecast hour: pooled exactly by adding, broken down by summing axes."""

    stations: list[str]
    sums: np.ndarray  # float64 [len(KEYS), stations, horizon]
    windows: np.ndarray  # float64 [stations]: windows scored

    def totals(self) -> dict[str, float]:
        """The flat sums that cities and ranks add up (`pool_metrics`)."""
        out = {k: float(self.sums[i].sum()) for i, k in enumerate(KEYS)}
        return {**out, "n_windows": float(self.windows.sum())}

    def by_station(self) -> dict[str, dict[str, float]]:
        return {
            name: {**{k: float(self.sums[i, s].sum()) for i, k in enumerate(KEYS)}, "n_windows": float(n)}
            for s, (name, n) in enumerate(zip(self.stations, self.windows, strict=True))
        }

    def by_hour(self) -> list[dict[str, float]]:
        """The sums of forecast hour 1, 2, ... (`pool_metrics` of them: that hour's RMSE); n_windows
        counts every window in each hour."""
        per_hour = self.sums.sum(axis=1)
        windows = float(self.windows.sum())
        return [
            {**{k: float(per_hour[i, h]) for i, k in enumerate(KEYS)}, "n_windows": windows}
            for h in range(per_hour.shape[1])
        ]

    def __add__(self, other: Scores) -> Scores:
        if other.stations != self.stations:
            raise ValueError(f"cannot add scores of stations {other.stations} to {self.stations}")
        return Scores(self.stations, self.sums + other.sums, self.windows + other.windows)


def spread_indexes(total: int, max_windows: int) -> list[int]:
    """All windows, or `max_windows` evenly spaced ones, so a quick run still covers the whole span."""
    n = total if max_windows <= 0 else min(total, max_windows)
    if n == total:
        return list(range(n))
    return [round(i * (total - 1) / max(n - 1, 1)) for i in range(n)]


@torch.no_grad()
def score(
    model: nn.Module,
    dataset: CityWindows,
    batch_size: int = 512,
    max_windows: int = 0,
    part: int = 0,
    parts: int = 1,
    windows: Sequence[int] | None = None,
) -> Scores:
    """Sums, not means, so cities can be pooled exactly later (`pool_metrics`), and so the ranks of a
    city can each score every `parts`-th window (`part` is the first) and add their sums up.
    `windows` restricts scoring to these dataset indexes (e.g. the windows on newly appended hours)."""
    was_training = model.training
    model.eval()
    chosen = list(windows) if windows is not None else spread_indexes(len(dataset), max_windows)
    indexes = chosen[part::parts]
    mean, std, target_index = dataset.target_mean, dataset.target_std, dataset.target_index
    n_stations = len(dataset.stations)
    sums = torch.zeros(len(KEYS), n_stations, dataset.horizon, dtype=torch.float64)
    counted = np.zeros(n_stations)
    device = next(model.parameters(), torch.empty(0)).device
    for start in range(0, len(indexes), batch_size):
        batch = indexes[start : start + batch_size]
        station = torch.as_tensor(dataset.index[batch, 0])
        x, y, mask = (torch.stack(p).to(device) for p in zip(*(dataset[i] for i in batch), strict=True))
        pred = model(x) * std + mean
        truth = y * std + mean
        persistence = (x[:, -1, target_index] * std + mean).unsqueeze(1).expand_as(truth)
        err, p_err = (pred - truth) * mask, (persistence - truth) * mask
        for i, value in enumerate((err**2, err.abs(), p_err**2, p_err.abs(), mask)):
            sums[i].index_add_(0, station, value.double().cpu())
        counted += np.bincount(station.numpy(), minlength=n_stations)
    model.train(was_training)
    names = dataset.manifest["stations"]
    return Scores([names[s] for s in dataset.stations], sums.numpy(), counted)
