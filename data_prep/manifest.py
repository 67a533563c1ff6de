"""Per-city manifest (the commit point of a dataset version) and the global statistics file.

`<city>/manifest.json` lists the shards of the current version with size, sha256, rows, time span and
sufficient statistics. It is replaced atomically, so readers always see one complete version.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from crosscity.core.atomic_io import atomic_write_text
from crosscity.data_prep.errors import DatasetError
from crosscity.data_prep.schema import SCHEMA_VERSION, Schema
from crosscity.data_prep.stats import combine, finalize, from_json, json_safe

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "crosscity-city"
GLOBAL_STATS = "global_stats.json"


def new_manifest(city: str, stations: list[str], schema: Schema) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "city": city,
        "version": 0,
        "stations": stations,
        "features": [{"name": n, "unit": u} for n, u in zip(schema.feature_names, schema.units, strict=True)],
        "targets": list(schema.targets),
        "time_step_s": 3600,
        "gap_fill_hours": schema.gap_fill_hours,
        "rows": 0,
        "time_span": None,
        "shards": [],
        "stats": {},
        "gaps": {"filled": 0, "unfilled": 0, "absent_hours": 0},
        "history": [],
    }


def load_manifest(city_dir: str | Path) -> dict[str, Any]:
    """Read and sanity-check a city manifest; DatasetError names the file and the problem."""
    path = Path(city_dir) / MANIFEST
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DatasetError(
            f"{path}: no manifest (not a prepared city folder; run `crosscity prep`)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: manifest is not valid JSON ({exc})") from None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT:
        raise DatasetError(f"{path}: format is not {MANIFEST_FORMAT!r}")
    if m.get("schema_version") != SCHEMA_VERSION:
        raise DatasetError(
            f"{path}: schema_version {m.get('schema_version')!r} not supported "
            f"(this code reads {SCHEMA_VERSION})"
        )
    return m


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
    m["gaps"] = {k: sum(s["gaps"][k] for s in shards) for k in ("filled", "unfilled", "absent_hours")}
    m["history"].append({"version": m["version"], "time": time.time(), "inputs": inputs, **counts})
    return m


def commit_manifest(city_dir: Path, m: dict[str, Any]) -> None:
    atomic_write_text(Path(city_dir) / MANIFEST, json.dumps(m, indent=1) + "\n")


def city_dirs(root: str | Path) -> list[Path]:
    """Prepared city folders under a dataset root (sorted by name)."""
    return sorted(p.parent for p in Path(root).glob(f"*/{MANIFEST}"))


def sufficient_of(m: dict[str, Any]) -> dict[str, dict[str, float]]:
    """The city's sufficient statistics, the only thing a city shares for global normalisation."""
    return combine([from_json(s["stats"]) for s in m["shards"]])


def global_stats(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """Global normalisation from the cities' sufficient statistics alone (no raw rows)."""
    return {
        "cities": {m["city"]: m["version"] for m in manifests},
        "stats": json_safe(finalize(combine([sufficient_of(m) for m in manifests]))),
    }


def write_global_stats(root: Path) -> None:
    manifests = [load_manifest(d) for d in city_dirs(root)]
    atomic_write_text(Path(root) / GLOBAL_STATS, json.dumps(global_stats(manifests), indent=1) + "\n")
