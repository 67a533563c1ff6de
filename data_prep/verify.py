"""Dataset verification: the trainer refuses to start on a dataset that fails it.

quick_check: manifest readable and of a supported schema, every shard present with the recorded size.
full_check: also sha256 of every shard, its HDF5 structure and attributes, and strictly increasing time.
Each failure is a DatasetError naming the city and the shard.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from crosscity.data_prep.errors import DatasetError
from crosscity.data_prep.manifest import MANIFEST, city_dirs, load_manifest
from crosscity.data_prep.schema import SCHEMA_VERSION
from crosscity.data_prep.shards import SHARD_FORMAT, sha256_file, shard_name


def quick_check(city_dir: str | Path) -> None:
    city_dir = Path(city_dir)
    m = load_manifest(city_dir)
    if m["rows"] != sum(s["rows"] for s in m["shards"]):
        raise DatasetError(f"{city_dir / MANIFEST}: rows {m['rows']} != sum of shard rows")
    for s in m["shards"]:
        path = city_dir / s["file"]
        if s["file"] != shard_name(s["station"], s["year"], s["version"]) or s["version"] > m["version"]:
            raise DatasetError(f"{path}: shard name/version does not match manifest version {m['version']}")
        if not path.is_file():
            raise DatasetError(f"{path}: shard missing (manifest version {m['version']})")
        size = path.stat().st_size
        if size != s["bytes"]:
            raise DatasetError(
                f"{path}: size {size} bytes, manifest version {m['version']} says {s['bytes']}"
            )


def _check_shard(path: Path, entry: dict, features: list[str]) -> None:
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise DatasetError(
            f"{path}: sha256 {digest[:16]}... does not match manifest {entry['sha256'][:16]}..."
        )
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            time = f["time"][:]
            shapes = {k: f[k].shape for k in ("values", "mask", "station_id")}
    except (OSError, KeyError) as exc:
        raise DatasetError(f"{path}: not a readable shard ({exc})") from None
    expected = {
        "format": SHARD_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "station": entry["station"],
        "station_id": entry["station_id"],
        "version": entry["version"],
    }
    for key, value in expected.items():
        if attrs.get(key) != value:
            raise DatasetError(f"{path}: attribute {key}={attrs.get(key)!r}, expected {value!r}")
    if json.loads(attrs["feature_names"]) != features:
        raise DatasetError(
            f"{path}: feature names {attrs['feature_names']} differ from the manifest's {features}"
        )
    n = entry["rows"]
    want = {"values": (n, len(features)), "mask": (n, len(features)), "station_id": (n,)}
    if time.shape != (n,) or shapes != want:
        raise DatasetError(f"{path}: dataset shapes {shapes} / time {time.shape}, manifest says {want}")
    if n and (np.any(np.diff(time) <= 0) or time[0] != entry["time_min"] or time[-1] != entry["time_max"]):
        raise DatasetError(f"{path}: time is not strictly increasing within the manifest's span")


def full_check(city_dir: str | Path) -> None:
    city_dir = Path(city_dir)
    quick_check(city_dir)
    m = load_manifest(city_dir)
    features = [f["name"] for f in m["features"]]
    for s in m["shards"]:
        _check_shard(city_dir / s["file"], s, features)


def verify_dataset(path: str | Path, full: bool = False) -> list[Path]:
    """Check one city folder or every city under a dataset root; returns the cities checked."""
    path = Path(path)
    cities = [path] if (path / MANIFEST).exists() else city_dirs(path)
    if not cities:
        raise DatasetError(f"{path}: no prepared city (no */{MANIFEST}); run `crosscity prep` first")
    for city in cities:
        (full_check if full else quick_check)(city)
    return cities
