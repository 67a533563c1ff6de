"""Per-city manifest: the shards of one city version with size, sha256, rows, time span and statistics.

A city version k is the immutable file `<city>/manifest.v<k>.json`; which version is current is
said only by the dataset manifest (dataset.py), so a crash between two cities' writes never leaves
a mix. Its structure is checked on every load: an edited or truncated manifest is a DatasetError
naming the key and what is allowed, never a KeyError in a training rank.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crosscity.core.atomic_io import atomic_write
from crosscity.data_prep.errors import DatasetError
from crosscity.data_prep.schema import SCHEMA_VERSION, Feature, Schema
from crosscity.data_prep.stats import SUFFICIENT_KEYS, combine, finalize, from_json, json_safe

MANIFEST_FORMAT = "crosscity-city"
MANIFEST_PATTERN = "manifest.v*.json"
GAP_KEYS = ("filled", "unfilled", "absent_hours")


def manifest_name(version: int) -> str:
    return f"manifest.v{version}.json"


def new_manifest(city: str, stations: list[str], features: list[Feature], schema: Schema) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "city": city,
        "version": 0,
        "stations": stations,
        "features": [f.to_json() for f in features],
        "targets": list(schema.targets),
        "time_step_s": 3600,
        "gap_fill_hours": schema.gap_fill_hours,
        "rows": 0,
        "time_span": None,
        "shards": [],
        "stats": {},
        "gaps": dict.fromkeys(GAP_KEYS, 0),
        "history": [],
    }


def finish_manifest(m: dict[str, Any], inputs: list[str], counts: dict[str, int]) -> dict[str, Any]:
    """Recompute totals from the shard entries and record a history entry for the new version."""
    shards = sorted(m["shards"], key=lambda s: (s["station_id"], s["year"]))
    m["shards"] = shards
    m["version"] += 1
    m["rows"] = sum(s["rows"] for s in shards)
    m["time_span"] = (
        [min(s["time_min"] for s in shards), max(s["time_max"] for s in shards)] if shards else None
    )
    m["stats"] = json_safe(finalize(combine([from_json(s["stats"]) for s in shards])))
    m["gaps"] = {k: sum(s["gaps"][k] for s in shards) for k in GAP_KEYS}
    m["history"].append({"version": m["version"], "time": time.time(), "inputs": inputs, **counts})
    return m


def manifest_bytes(m: dict[str, Any]) -> bytes:
    return (json.dumps(m, indent=1) + "\n").encode()


def write_manifest(city_dir: Path, m: dict[str, Any]) -> dict[str, Any]:
    """Write the new version's file (a new name: nothing current changes); returns its dataset entry."""
    data = manifest_bytes(m)
    name = manifest_name(m["version"])
    atomic_write(Path(city_dir) / name, lambda fh: fh.write(data))
    return {"version": m["version"], "manifest": name, "sha256": hashlib.sha256(data).hexdigest()}


# ------------------------------------------------------------------ structure


def _int(lo: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


def _str(v: Any) -> bool:
    return isinstance(v, str) and bool(v)


def _strs(v: Any) -> bool:
    return isinstance(v, list) and all(_str(x) for x in v)


def _number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _feature(v: Any) -> bool:
    keys = {"name": _str, "unit": lambda u: isinstance(u, str), "fill_hours": _int(0), "city_only": _bool}
    return isinstance(v, dict) and set(v) == set(keys) and all(ok(v[k]) for k, ok in keys.items())


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _stats(v: Any) -> bool:
    return isinstance(v, dict) and all(
        isinstance(s, dict) and all(k in s and _number(s[k]) for k in SUFFICIENT_KEYS) for s in v.values()
    )


def _gaps(v: Any) -> bool:
    return isinstance(v, dict) and all(_int(0)(v.get(k)) for k in GAP_KEYS)


MANIFEST_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "format": (lambda v: v == MANIFEST_FORMAT, repr(MANIFEST_FORMAT)),
    "schema_version": (lambda v: v == SCHEMA_VERSION, f"{SCHEMA_VERSION} (what this code reads)"),
    "city": (_str, "the city name"),
    "version": (_int(1), "an integer >= 1"),
    "stations": (_strs, "a list of station names"),
    "features": (lambda v: isinstance(v, list) and v and all(map(_feature, v)), "a list of features"),
    "targets": (_strs, "a list of feature names"),
    "time_step_s": (lambda v: v == 3600, "3600"),
    "gap_fill_hours": (_int(0), "an integer >= 0"),
    "rows": (_int(0), "an integer >= 0"),
    "time_span": (lambda v: v is None or (isinstance(v, list) and len(v) == 2), "[first, last] or null"),
    "shards": (lambda v: isinstance(v, list), "a list of shard entries"),
    "stats": (_stats, "per-feature sufficient statistics"),
    "gaps": (_gaps, f"counts {list(GAP_KEYS)}"),
    "history": (lambda v: isinstance(v, list), "a list"),
}
SHARD_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "file": (_str, "a shard file name"),
    "station": (_str, "a station name"),
    "station_id": (_int(0), "an integer >= 0"),
    "year": (_int(1), "a year"),
    "version": (_int(1), "an integer >= 1"),
    "rows": (_int(1), "an integer >= 1"),
    "bytes": (_int(1), "an integer >= 1"),
    "sha256": (
        lambda v: isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None,
        "64 hex digits",
    ),
    "time_min": (_int(-(2**62)), "unix seconds"),
    "time_max": (_int(-(2**62)), "unix seconds"),
    "stats": (_stats, "per-feature sufficient statistics"),
    "gaps": (_gaps, f"counts {list(GAP_KEYS)}"),
}


def _check_fields(
    path: Path, where: str, data: Any, fields: dict[str, tuple[Callable[[Any], bool], str]]
) -> None:
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: {where or 'the manifest'} is not a JSON object")
    for key, (ok, allowed) in fields.items():
        if key not in data:
            raise DatasetError(f"{path}: key '{where}{key}' missing (expected {allowed})")
        if not ok(data[key]):
            raise DatasetError(
                f"{path}: key '{where}{key}': value {str(data[key])[:60]!r} not allowed; expected {allowed}"
            )


def check_manifest(path: Path, m: Any) -> dict[str, Any]:
    """Every key the reader and verify use, with its type; DatasetError names the key."""
    _check_fields(path, "", m, MANIFEST_FIELDS)
    names = [f["name"] for f in m["features"]]
    for i, s in enumerate(m["shards"]):
        _check_fields(path, f"shards[{i}].", s, SHARD_FIELDS)
        if s["station_id"] >= len(m["stations"]) or m["stations"][s["station_id"]] != s["station"]:
            raise DatasetError(
                f"{path}: key 'shards[{i}].station_id': {s['station_id']} is not {s['station']!r}"
            )
    missing = [n for n in names if n not in m["stats"]] if m["shards"] else []
    if missing:
        raise DatasetError(f"{path}: key 'stats.{missing[0]}' missing (every feature has statistics)")
    if m["rows"] != sum(s["rows"] for s in m["shards"]):
        raise DatasetError(f"{path}: rows {m['rows']} != the sum of its shards' rows")
    return m


def sufficient_of(m: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The city's sufficient statistics, the only thing a city shares for global normalisation."""
    return combine([from_json(s["stats"]) for s in m["shards"]])


def global_stats(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """Global normalisation from the cities' sufficient statistics alone (no raw rows)."""
    return {
        "cities": {m["city"]: m["version"] for m in manifests},
        "stats": json_safe(finalize(combine([sufficient_of(m) for m in manifests]))),
    }
