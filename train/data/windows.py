"""The windowed torch reader: (past L hours of inputs -> next K hours of the target) per station.

Only the manifest and the target's masks are read at construction (to count windows); the city's
shards are loaded into memory on the first item, once per process. No HDF5 handle is kept open, so a
DataLoader may fork workers at any time. The inputs are the schema's shared features only: a city's
city-only extras stay in its shards, so every city's model sees the same inputs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from crosscity.data_prep.dataset import load_global_stats, load_manifest
from crosscity.data_prep.errors import DatasetError
from crosscity.data_prep.shards import read_shard
from crosscity.data_prep.splits import FRACTIONS, split_ranges, window_starts
from crosscity.data_prep.stats import finalize, from_json
from crosscity.train.data.sampler import RankSampler

SPLITS = ("train", "val", "test")
HOUR = 3600
CALENDAR = ["hour_sin", "hour_cos", "doy_sin", "doy_cos"]

__all__ = ["CityWindows", "RankSampler", "split_ranges"]


class CityWindows(torch.utils.data.Dataset):
    """Windows of one city; x float32 [past, n_inputs], y and y_mask float32 [horizon], normalised.

    Inputs per hour: every shared feature normalised and gap-filled (forward fill up to its
    column's `fill_hours` hours after an observation, or `fill_hours` for all, then 0 = the mean),
    its observed mask, and 4 calendar features. A window is kept when at most `max_missing` of its
    target hours are missing and at least one future target hour is observed. Windows never cross
    stations.
    """

    def __init__(
        self,
        city_dir: str | Path,
        split: str = "train",
        past: int = 48,
        horizon: int = 24,
        target: str = "PM2.5",
        max_missing: float = 0.25,
        stats: str = "city",
        fill_hours: int | None = None,
        fractions: tuple[float, float, float] = FRACTIONS,
    ):
        if split not in SPLITS:
            raise ValueError(f"split {split!r}: allowed {SPLITS}")
        if stats not in ("city", "global"):
            raise ValueError(f"stats {stats!r}: allowed 'city' or 'global'")
        if len(fractions) != 3 or min(fractions) <= 0 or sum(fractions) > 1 + 1e-9:
            raise ValueError(
                f"fractions {fractions}: need 3 positive train/val/test fractions summing to <= 1"
            )
        if past < 1 or horizon < 1 or not 0 <= max_missing <= 1:
            raise ValueError(
                f"need past >= 1, horizon >= 1, 0 <= max_missing <= 1; got {past}, {horizon}, {max_missing}"
            )
        self.city_dir = Path(city_dir)
        self.manifest = load_manifest(self.city_dir)
        shared = [(k, f) for k, f in enumerate(self.manifest["features"]) if not f["city_only"]]
        self.columns = np.array([k for k, _ in shared])  # stored columns the model sees
        self.features = [f["name"] for _, f in shared]
        if target not in self.features:
            raise ValueError(f"target {target!r} not in the features of {self.city_dir}: {self.features}")
        self.split, self.past, self.horizon, self.max_missing = split, past, horizon, max_missing
        self.fill_hours = np.array([f["fill_hours"] if fill_hours is None else fill_hours for _, f in shared])
        self.fractions = fractions
        norm = self._stats(stats)
        self.mean = np.array([norm[f]["mean"] for f in self.features], dtype=np.float32)
        self.std = np.array([norm[f]["std"] for f in self.features], dtype=np.float32)
        self.target_index = self.features.index(target)
        self.target_mean = float(self.mean[self.target_index])
        self.target_std = float(self.std[self.target_index])
        self.feature_names = [*self.features, *(f"{f}_observed" for f in self.features), *CALENDAR]
        self.n_inputs = len(self.feature_names)
        self.dropped_windows = 0
        self.index = self._build_index()
        self._arrays: list[dict[str, Any]] | None = None
        self._pid: int | None = None

    def _stats(self, kind: str) -> dict[str, dict[str, float]]:
        if kind == "city":
            return finalize(from_json(self.manifest["stats"]))
        data = load_global_stats(self.city_dir.parent)
        have = data["cities"].get(self.manifest["city"])
        if have != self.manifest["version"]:
            raise DatasetError(
                f"{self.city_dir.parent}: global statistics of {self.manifest['city']} version {have}, "
                f"but its manifest is at version {self.manifest['version']} (an append committed meanwhile)"
            )
        return finalize(from_json(data["stats"]))

    def _station_shards(self) -> dict[int, list[dict[str, Any]]]:
        out: dict[int, list[dict[str, Any]]] = {}
        for s in sorted(self.manifest["shards"], key=lambda s: s["time_min"]):
            out.setdefault(s["station_id"], []).append(s)
        return out

    def _build_index(self) -> np.ndarray:
        span = self.past + self.horizon
        rows = []
        self.stations: list[int] = []
        for station_id, shards in self._station_shards().items():
            t0 = shards[0]["time_min"]
            hours = (max(s["time_max"] for s in shards) - t0) // HOUR + 1
            observed = np.zeros(hours, dtype=bool)
            for s in shards:
                with h5py.File(self.city_dir / s["file"], "r") as f:
                    t = f["time"][:]
                    observed[(t - t0) // HOUR] = f["mask"][:, self.columns[self.target_index]].astype(bool)
            starts = np.array(window_starts(int(hours), span, self.fractions, self.split))
            if starts.size == 0:
                continue
            missing = np.concatenate([[0], np.cumsum(~observed)])
            window_missing = missing[starts + span] - missing[starts]
            future_observed = (span - self.past) - (missing[starts + span] - missing[starts + self.past])
            keep = (window_missing <= self.max_missing * span) & (future_observed > 0)
            self.dropped_windows += int((~keep).sum())
            pos = len(self.stations)
            self.stations.append(station_id)
            rows.append(np.stack([np.full(int(keep.sum()), pos), starts[keep]], axis=1))
        return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), dtype=np.int64)

    def _load(self) -> list[dict[str, Any]]:
        """Per station: inputs [T, n_inputs], y [T], y_mask [T] (float32). Once per process."""
        if self._arrays is not None and self._pid == os.getpid():
            return self._arrays
        by_station = self._station_shards()
        arrays = []
        for station_id in self.stations:
            shards = by_station[station_id]
            t0 = shards[0]["time_min"]
            hours = (max(s["time_max"] for s in shards) - t0) // HOUR + 1
            values = np.zeros((hours, len(self.features)), dtype=np.float32)
            mask = np.zeros((hours, len(self.features)), dtype=bool)
            for s in shards:
                rows = read_shard(self.city_dir / s["file"])
                at = (rows.time - t0) // HOUR
                values[at], mask[at] = rows.values[:, self.columns], rows.mask[:, self.columns]
            norm = np.where(mask, (values - self.mean) / self.std, 0.0).astype(np.float32)
            step = np.arange(hours)[:, None]
            last = np.maximum.accumulate(np.where(mask, step, -1), axis=0)
            use = (last >= 0) & (step - last <= self.fill_hours[None, :])
            filled = np.where(use, np.take_along_axis(norm, np.maximum(last, 0), axis=0), 0.0)
            t = (t0 + np.arange(hours) * HOUR).astype(np.float64)
            hour_angle = 2 * np.pi * (t % 86400) / 86400
            doy_angle = 2 * np.pi * (t % (365.25 * 86400)) / (365.25 * 86400)
            calendar = np.stack(
                [np.sin(hour_angle), np.cos(hour_angle), np.sin(doy_angle), np.cos(doy_angle)], axis=1
            )
            arrays.append(
                {
                    "inputs": np.concatenate([filled, mask, calendar], axis=1).astype(np.float32),
                    "y": norm[:, self.target_index].copy(),
                    "y_mask": mask[:, self.target_index].astype(np.float32),
                }
            )
        self._arrays, self._pid = arrays, os.getpid()
        return arrays

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        station, start = self.index[i]
        a = self._load()[station]
        cut = start + self.past
        return (
            torch.from_numpy(a["inputs"][start:cut]),
            torch.from_numpy(a["y"][cut : cut + self.horizon]),
            torch.from_numpy(a["y_mask"][cut : cut + self.horizon]),
        )
