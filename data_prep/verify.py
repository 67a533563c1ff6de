"""Dataset verification: the trainer refuses to start on a dataset that fails it.

Always: the dataset manifest names a complete version: every city's manifest at that version with
its recorded sha256 and a valid structure, the schema/cities copies and global statistics matching.
quick: also every shard present with its recorded size and sha256 (one read of the data, no
decompression: cheap next to training, and a flipped byte never reaches a rank).
full: also each shard's HDF5 structure and attributes, and strictly increasing time.
Each failure is a DatasetError naming the file and what to run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from crosscity.data_prep.dataset import (
    DATASET,
    checked_bytes,
    city_manifest,
    leftovers,
    load_global_stats,
    not_a_dataset,
    read_dataset,
)
from crosscity.data_prep.errors import DatasetError
from crosscity.data_prep.schema import SCHEMA_VERSION
from crosscity.data_prep.shards import SHARD_FORMAT, sha256_file, shard_name

LEVELS = ("structure", "quick", "full")


@dataclass
class Verified:
    root: Path
    version: int
    cities: dict[str, int]  # city -> its version in this dataset version
    leftovers: list[Path]  # files of an interrupted run the next append removes

    def line(self, level: str) -> str:
        cities = ", ".join(f"{c} v{v}" for c, v in self.cities.items())
        extra = (
            f"; {len(self.leftovers)} unused files of an interrupted run (the next append removes them)"
            if self.leftovers
            else ""
        )
        head = f"verify ({level}): OK, dataset version {self.version}"
        return f"{head}, {len(self.cities)} cities: {cities}{extra}"


def check_city(root: Path, city: str, ds: dict[str, Any], level: str) -> dict[str, Any]:
    """One city of the committed version at `level` (structure, quick or full); returns its manifest."""
    m = city_manifest(root, city, ds)
    features = [f["name"] for f in m["features"]]
    for s in m["shards"]:
        path = root / city / s["file"]
        if s["file"] != shard_name(s["station"], s["year"], s["version"]) or s["version"] > m["version"]:
            raise DatasetError(f"{path}: shard name/version does not match manifest version {m['version']}")
        if not path.is_file():
            raise DatasetError(
                f"{path}: shard missing (city {city} version {m['version']}); "
                "restore it or prepare the data again into a new folder"
            )
        size = path.stat().st_size
        if size != s["bytes"]:
            raise DatasetError(
                f"{path}: size {size} bytes, manifest version {m['version']} says {s['bytes']} (a changed "
                "shard); restore it or prepare the data again into a new folder"
            )
        if level == "structure":
            continue
        digest = sha256_file(path)
        if digest != s["sha256"]:
            raise DatasetError(
                f"{path}: sha256 {digest[:16]}... does not match manifest {s['sha256'][:16]}... (a corrupt "
                "shard); restore it or prepare the data again into a new folder"
            )
        if level == "full":
            _check_shard(path, s, features)
    return m


def _check_shard(path: Path, entry: dict, features: list[str]) -> None:
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


def dataset_root(path: Path) -> tuple[Path, list[str] | None]:
    """(root, the one city asked for or None = all) of a dataset root or one city folder."""
    if (path / DATASET).is_file() or not (path.parent / DATASET).is_file():
        return path, None
    return path.parent, [path.name]


def verify_dataset(path: str | Path, level: str = "quick", cities: list[str] | None = None) -> Verified:
    """Check a dataset root (or one city folder of it; or its `cities`) at `level`; DatasetError on the
    first problem."""
    if level not in LEVELS:
        raise ValueError(f"level {level!r}: allowed {LEVELS}")
    root, only = dataset_root(Path(path))
    only = cities or only
    if not root.is_dir():
        raise not_a_dataset(root)
    ds = read_dataset(root)
    for key, what in (("schema", "schema copy"), ("cities_file", "cities copy")):
        checked_bytes(root, ds[key]["file"], ds[key]["sha256"], what, ds["version"])
    load_global_stats(root, ds)
    names = only or sorted(ds["cities"])
    for city in names:
        check_city(root, city, ds, level)
    return Verified(
        root=root,
        version=ds["version"],
        cities={c: ds["cities"][c]["version"] for c in names},
        leftovers=[] if only else leftovers(root, ds),
    )


def quick_check(city_dir: str | Path) -> None:
    """One city at the `quick` level (what each training rank runs at start)."""
    verify_dataset(city_dir, "quick")


def full_check(city_dir: str | Path) -> None:
    verify_dataset(city_dir, "full")
