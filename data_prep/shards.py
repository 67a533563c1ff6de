"""One HDF5 shard = the rows of one station in one calendar year.

Shards are immutable: a change writes a new file `<station>_<year>.v<version>.h5` and the manifest
switches to it atomically, so a crash never leaves a half-written shard in use. The file is built in
memory (HDF5 core driver), hashed, and written with crosscity.core.atomic_io.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from crosscity.core.atomic_io import atomic_write
from crosscity.data_prep.errors import DatasetError
from crosscity.data_prep.schema import SCHEMA_VERSION
from crosscity.data_prep.stats import json_safe, sufficient

SHARD_FORMAT = "crosscity-shard"
CHUNK_ROWS = 4096


@dataclass
class ShardRows:
    """Rows of one shard: time (unix s, strictly increasing), values [n, F] (0 where missing), mask [n, F]."""

    time: np.ndarray
    values: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return int(self.time.size)


def shard_name(station: str, year: int, version: int) -> str:
    return f"{station}_{year}.v{version}.h5"


def _image(rows: ShardRows, attrs: dict[str, object]) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        for key, value in attrs.items():
            f.attrs[key] = value
        chunk = (min(len(rows), CHUNK_ROWS), rows.values.shape[1])
        f.create_dataset("time", data=rows.time.astype(np.int64), chunks=(chunk[0],), compression="gzip")
        f.create_dataset(
            "station_id", data=np.full(len(rows), attrs["station_id"], dtype=np.int32), compression="gzip"
        )
        for key, data, dtype in (("values", rows.values, np.float32), ("mask", rows.mask, np.uint8)):
            f.create_dataset(
                key,
                data=data.astype(dtype),
                chunks=chunk,
                compression="gzip",
                compression_opts=4,
                shuffle=True,
            )
    return buf.getvalue()


def gap_counts(rows: ShardRows, fill_hours: np.ndarray) -> dict[str, int]:
    """Missing cells the reader will forward-fill (<= the column's fill_hours after an observation),
    those it will not, and hours absent from the time grid (whole rows missing)."""
    t = rows.time.astype(np.float64)[:, None]
    last_seen = np.maximum.accumulate(np.where(rows.mask, t, -np.inf), axis=0)
    missing = ~rows.mask
    filled = int((missing & (t - last_seen <= np.asarray(fill_hours)[None, :] * 3600)).sum())
    span = int((rows.time[-1] - rows.time[0]) // 3600 + 1) if len(rows) else 0
    return {"filled": filled, "unfilled": int(missing.sum()) - filled, "absent_hours": span - len(rows)}


def write_shard(
    city_dir: Path,
    *,
    city: str,
    station: str,
    station_id: int,
    year: int,
    version: int,
    features: list[str],
    fill_hours: np.ndarray,
    rows: ShardRows,
) -> dict[str, object]:
    """Write the shard atomically; returns its manifest entry (size, sha256, span, sufficient stats)."""
    attrs = {
        "format": SHARD_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "city": city,
        "station": station,
        "station_id": station_id,
        "year": year,
        "version": version,
        "feature_names": json.dumps(features),
    }
    data = _image(rows, attrs)
    name = shard_name(station, year, version)
    atomic_write(Path(city_dir) / name, lambda fh: fh.write(data))
    return {
        "file": name,
        "station": station,
        "station_id": station_id,
        "year": year,
        "version": version,
        "rows": len(rows),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "time_min": int(rows.time[0]),
        "time_max": int(rows.time[-1]),
        "stats": json_safe(sufficient(rows.values, rows.mask, features)),
        "gaps": gap_counts(rows, fill_hours),
    }


def read_shard(path: Path) -> ShardRows:
    """Read a whole shard (small: one station-year). Opens and closes its own handle (fork-safe)."""
    try:
        with h5py.File(path, "r") as f:
            return ShardRows(time=f["time"][:], values=f["values"][:], mask=f["mask"][:].astype(bool))
    except (OSError, KeyError) as exc:
        raise DatasetError(
            f"{path}: not a readable shard ({exc}); run `crosscity prep verify {Path(path).parent.parent}`"
        ) from None


def read_checked(path: Path, entry: dict) -> ShardRows:
    """read_shard after checking the manifest's sha256 (what append merges into must be intact)."""
    if sha256_file(path) != entry["sha256"]:
        raise DatasetError(
            f"{path}: sha256 does not match its manifest (the shard is corrupt); "
            "restore it or prepare the data again into a new folder"
        )
    return read_shard(path)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
