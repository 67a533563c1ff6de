"""Spill parsed rows to per-shard binary files so that prep memory is bounded by a chunk, not the input.

Rows are routed by shard key (city, station, year) and appended to raw files; a shard's rows are only
loaded together (one station-year) when it is merged and written. A city with city-only extras
stores more columns: rows from a file not assigned to it get those as missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from crosscity.data_prep.csv_source import RowChunk

StagingKey = tuple[str, str, int]  # (city, station, year)


def years_of(time: np.ndarray) -> np.ndarray:
    return time.astype("datetime64[s]").astype("datetime64[Y]").astype(np.int64) + 1970


def _widen(values: np.ndarray, mask: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad a chunk of shared features to a city's width (its extras missing)."""
    extra = width - values.shape[1]
    if extra == 0:
        return values, mask
    return np.pad(values, ((0, 0), (0, extra))), np.pad(mask, ((0, 0), (0, extra)))


class Staging:
    def __init__(self, root: Path, widths: dict[str, int], flush_rows: int = 200_000):
        self.root = Path(root)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.widths = widths  # city -> stored features
        self.flush_rows = flush_rows
        self.buffers: dict[StagingKey, list[tuple[np.ndarray, ...]]] = {}
        self.buffered = 0
        self.rows: dict[StagingKey, int] = {}

    def add(self, chunk: RowChunk, city_of: dict[str, str], file_index: int) -> None:
        """Buffer a chunk's rows by shard key; `src` keeps (input file, line) for error messages."""
        src = (np.int64(file_index) << 32) | chunk.lines
        years = years_of(chunk.time)
        for station in np.unique(chunk.stations):
            for year in np.unique(years[chunk.stations == station]):
                sel = (chunk.stations == station) & (years == year)
                key = (city_of[str(station)], str(station), int(year))
                values, mask = _widen(chunk.values[sel], chunk.mask[sel], self.widths[key[0]])
                self.buffers.setdefault(key, []).append(
                    (chunk.time[sel], values, mask.astype(np.uint8), src[sel])
                )
                self.rows[key] = self.rows.get(key, 0) + int(sel.sum())
        self.buffered += len(chunk.time)
        if self.buffered >= self.flush_rows:
            self.flush()

    def _path(self, key: StagingKey, part: str) -> Path:
        return self.root / f"{key[0]}__{key[1]}__{key[2]}.{part}"

    def flush(self) -> None:
        for key, parts in self.buffers.items():
            for i, part in enumerate(("time", "values", "mask", "src")):
                with open(self._path(key, part), "ab") as fh:
                    for arrays in parts:
                        fh.write(np.ascontiguousarray(arrays[i]).tobytes())
        self.buffers.clear()
        self.buffered = 0

    def shard_keys(self) -> list[StagingKey]:
        return sorted(self.rows)

    def load(self, key: StagingKey) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(time, values [n, F], mask [n, F], src) of one shard key, in input order."""
        self.flush()
        time = np.fromfile(self._path(key, "time"), dtype=np.int64)
        width = self.widths[key[0]]
        values = np.fromfile(self._path(key, "values"), dtype=np.float32).reshape(-1, width)
        mask = np.fromfile(self._path(key, "mask"), dtype=np.uint8).reshape(-1, width).astype(bool)
        return time, values, mask, np.fromfile(self._path(key, "src"), dtype=np.int64)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
