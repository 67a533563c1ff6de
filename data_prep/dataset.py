"""The dataset manifest `DIR/dataset.json`: one prep or append = one dataset version, committed at once.

It names each city's manifest version (and its sha256), the global statistics file (and its
sha256) and the schema/cities copies. It is written last, with one atomic rename: before it, every
reader sees the previous version complete (new files have new names); after it, the new one. Every
read of a city goes through it, so a city manifest edited after prep (its `stats` block, say) or a
deleted one is a DatasetError saying what happened and what to run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from crosscity.core.atomic_io import atomic_write
from crosscity.data_prep.errors import DatasetError
from crosscity.data_prep.manifest import MANIFEST_PATTERN, check_manifest, global_stats, manifest_name
from crosscity.data_prep.schema import SCHEMA_VERSION

DATASET = "dataset.json"
DATASET_FORMAT = "crosscity-dataset"
UNFINISHED = ".prep.json"  # written first by a new prep, removed after its commit
SCHEMA_COPY = "schema.yaml"
CITIES_COPY = "cities.yaml"
REPORT = "prep_report.json"
STAGING = ".staging"
LOCK = ".lock"
OLD_MANIFEST = "manifest.json"  # the per-city commit point of datasets from before dataset versions


def stats_name(version: int) -> str:
    return f"global_stats.v{version}.json"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def not_a_dataset(root: Path) -> DatasetError:
    if (root / UNFINISHED).is_file():
        return DatasetError(
            f"{root}: an unfinished `crosscity prep` (killed before its commit, no {DATASET}); "
            f"rerun the same prep command to start it over, or delete {root}"
        )
    if list(root.glob(f"*/{OLD_MANIFEST}")):
        return DatasetError(
            f"{root}: prepared by an older crosscity (per-city {OLD_MANIFEST}, no {DATASET}); "
            f"delete it and run `crosscity prep` again"
        )
    return DatasetError(
        f"{root}: not a prepared dataset (no {DATASET}); run `crosscity prep --out {root} ...`"
    )


def _json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DatasetError(f"{path}: {what} missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: {what} is not valid JSON ({exc})") from None


def _entry(path: Path, key: str, value: Any, fields: dict[str, type]) -> None:
    if not isinstance(value, dict) or any(not isinstance(value.get(k), t) for k, t in fields.items()):
        allowed = ", ".join(f"{k}: {t.__name__}" for k, t in fields.items())
        raise DatasetError(
            f"{path}: key '{key}': value {str(value)[:60]!r} not allowed; expected {{{allowed}}}"
        )


def read_dataset(root: str | Path) -> dict[str, Any]:
    """The committed dataset version of a root; DatasetError says what is wrong and what to run."""
    root = Path(root)
    path = root / DATASET
    if not path.is_file():
        raise not_a_dataset(root)
    ds = _json(path, "dataset manifest")
    if not isinstance(ds, dict) or ds.get("format") != DATASET_FORMAT:
        raise DatasetError(f"{path}: format is not {DATASET_FORMAT!r}")
    if ds.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: schema_version {ds.get('schema_version')!r} not supported "
            f"(this code reads {SCHEMA_VERSION})"
        )
    if not isinstance(ds.get("version"), int) or isinstance(ds["version"], bool) or ds["version"] < 1:
        raise DatasetError(
            f"{path}: key 'version': value {ds.get('version')!r} not allowed; expected an integer >= 1"
        )
    if not isinstance(ds.get("cities"), dict) or not ds["cities"]:
        raise DatasetError(
            f"{path}: key 'cities' missing or empty (expected {{city: {{version, manifest, sha256}}}})"
        )
    for city, entry in ds["cities"].items():
        _entry(path, f"cities.{city}", entry, {"version": int, "manifest": str, "sha256": str})
    for key in ("global_stats", "schema", "cities_file"):
        _entry(path, key, ds.get(key), {"file": str, "sha256": str})
    return ds


def checked_bytes(root: Path, rel: str, sha256: str, what: str, version: int) -> bytes:
    path = root / rel
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: {what} of dataset version {version} is missing (deleted?); "
            "restore it or prepare the data again into a new folder"
        ) from None
    if sha256_bytes(data) != sha256:
        raise DatasetError(
            f"{path}: sha256 does not match {DATASET} (dataset version {version}): this {what} was "
            "changed after prep; restore it or prepare the data again into a new folder"
        )
    return data


def city_manifest(root: Path, city: str, ds: dict[str, Any] | None = None) -> dict[str, Any]:
    """One city's manifest of the committed version, hash- and structure-checked."""
    ds = ds or read_dataset(root)
    entry = ds["cities"].get(city)
    if entry is None:
        raise DatasetError(f"{root}: no city {city!r} in {DATASET} (cities: {', '.join(ds['cities'])})")
    if entry["manifest"] != manifest_name(entry["version"]):
        raise DatasetError(
            f"{root / DATASET}: key 'cities.{city}.manifest' is not {manifest_name(entry['version'])}"
        )
    rel = f"{city}/{entry['manifest']}"
    m = json.loads(checked_bytes(root, rel, entry["sha256"], f"manifest of city {city}", ds["version"]))
    check_manifest(root / rel, m)
    if m["city"] != city or m["version"] != entry["version"]:
        raise DatasetError(f"{root / rel}: city/version {m['city']!r} v{m['version']} differ from {DATASET}")
    return m


def load_manifest(city_dir: str | Path) -> dict[str, Any]:
    """The committed manifest of the city folder `city_dir` (its parent holds dataset.json)."""
    city_dir = Path(city_dir)
    return city_manifest(city_dir.parent, city_dir.name)


def load_global_stats(root: Path, ds: dict[str, Any] | None = None) -> dict[str, Any]:
    """global_stats.v<N>.json of the committed version, hash-checked and matching every city version."""
    ds = ds or read_dataset(root)
    entry = ds["global_stats"]
    data = json.loads(
        checked_bytes(root, entry["file"], entry["sha256"], "global statistics file", ds["version"])
    )
    versions = {c: e["version"] for c, e in ds["cities"].items()}
    if (
        not isinstance(data, dict)
        or data.get("cities") != versions
        or not isinstance(data.get("stats"), dict)
    ):
        raise DatasetError(
            f"{root / entry['file']}: not built from the city versions {versions} of {DATASET}"
        )
    return data


def write_json_file(path: Path, data: Any) -> dict[str, str]:
    """Write a new JSON file atomically; returns its {file, sha256} entry."""
    raw = (json.dumps(data, indent=1) + "\n").encode()
    atomic_write(path, lambda fh: fh.write(raw))
    return {"file": path.name, "sha256": sha256_bytes(raw)}


def stats_entry(root: Path, version: int, manifests: list[dict[str, Any]]) -> dict[str, str]:
    return write_json_file(root / stats_name(version), global_stats(manifests))


def commit(root: Path, ds: dict[str, Any]) -> None:
    """The commit point of a dataset version: one atomic replace of dataset.json."""
    write_json_file(root / DATASET, ds)


def referenced(root: Path, ds: dict[str, Any]) -> set[Path]:
    """Every file the committed version needs (verify checks them; cleanup keeps them)."""
    keep = {
        root / DATASET,
        root / ds["global_stats"]["file"],
        root / ds["schema"]["file"],
        root / ds["cities_file"]["file"],
    }
    for city, entry in ds["cities"].items():
        keep.add(root / city / entry["manifest"])
        keep |= {root / city / s["file"] for s in city_manifest(root, city, ds)["shards"]}
    return keep


def leftovers(root: Path, ds: dict[str, Any]) -> list[Path]:
    """Files of our naming that the committed version does not use (an interrupted or finished run's)."""
    keep = referenced(root, ds)
    ours = [*root.glob("global_stats.v*.json"), *root.glob(".*.tmp"), root / UNFINISHED, root / STAGING]
    for city in ds["cities"]:
        for pattern in (MANIFEST_PATTERN, "*.h5", ".*.tmp"):
            ours += (root / city).glob(pattern)
    return sorted(p for p in ours if p.exists() and p not in keep)
