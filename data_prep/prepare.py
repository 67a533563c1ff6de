"""`crosscity prep`: raw CSVs -> per-city HDF5 shards + manifest, and incremental append.

Prep and append are one code path (append to an empty dataset = prep). Order of writes for crash
safety: parse into staging, write changed shards under new file names, then atomically replace each
city's manifest (the commit), then delete superseded shards. A SIGKILL at any point leaves every city
readable at its last committed version; leftovers are cleaned at the next run.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from data_prep.csv_source import BAD_CLASSES, BadInput, CsvSource
from data_prep.errors import DataPrepError, InputError
from data_prep.manifest import (
    GLOBAL_STATS,
    MANIFEST,
    commit_manifest,
    finish_manifest,
    load_manifest,
    new_manifest,
    write_global_stats,
)
from data_prep.merge import MergeCounts, merge_rows
from data_prep.progress import Progress
from data_prep.schema import Cities, Schema, load_cities, load_schema
from data_prep.shards import read_shard, write_shard
from data_prep.staging import Staging
from train.atomic_io import atomic_write_text

SCHEMA_COPY = "schema.yaml"
CITIES_COPY = "cities.yaml"
REPORT = "prep_report.json"
STAGING = ".staging"


@dataclass
class PrepReport:
    """What one prep/append run did; written to DATA/prep_report.json and printed by the CLI."""

    inputs: list[str]
    rows_read: int = 0
    rows_added: int = 0
    rows_replaced: int = 0
    rows_unchanged: int = 0
    input_duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    cities: dict[str, dict[str, Any]] = field(default_factory=dict)  # city -> version, rows, gaps
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "rows_per_s": self.rows_per_s}, indent=1) + "\n"

    def summary(self) -> str:
        skipped = ", ".join(f"{k}={v}" for k, v in self.skipped.items() if v) or "none"
        cities = ", ".join(f"{c} v{d['version']} ({d['rows']} rows)" for c, d in self.cities.items())
        return (
            f"read {self.rows_read} rows in {self.seconds:.1f} s ({self.rows_per_s:,.0f} rows/s): "
            f"added {self.rows_added}, replaced {self.rows_replaced}, unchanged {self.rows_unchanged}, "
            f"input duplicates {self.input_duplicates}; skipped: {skipped}; cities: {cities}"
        )


class _Lock:
    """One writer per dataset root (flock, released by the kernel even on SIGKILL)."""

    def __init__(self, root: Path):
        self.path = Path(root) / ".lock"

    def __enter__(self) -> _Lock:
        self.fh = open(self.path, "w")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise DataPrepError(
                f"{self.path.parent}: another prep/append is running on this dataset"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


def _clean_leftovers(root: Path, cities: Cities) -> None:
    """Remove staging and shard files no committed manifest references (from a crashed run)."""
    shutil.rmtree(root / STAGING, ignore_errors=True)
    for city in cities.stations:
        city_dir = root / city
        if not (city_dir / MANIFEST).exists():
            continue
        used = {s["file"] for s in load_manifest(city_dir)["shards"]}
        for path in city_dir.glob("*.h5"):
            if path.name not in used:
                path.unlink()
        for tmp in city_dir.glob(".*.tmp"):
            tmp.unlink()


def _ingest(
    root: Path,
    schema: Schema,
    cities: Cities,
    inputs: list[Path],
    on_bad_input: str,
    on_conflict: str,
    progress: bool,
) -> PrepReport:
    start = time.monotonic()
    report = PrepReport(inputs=[str(p) for p in inputs])
    for path in inputs:
        if not Path(path).is_file():
            raise InputError(f"{path}: input file not found")
    bad = BadInput(on_bad_input)
    city_of = cities.city_of
    features = schema.feature_names
    staging = Staging(root / STAGING, len(features))
    meter = Progress("prep", sum(Path(p).stat().st_size for p in inputs), enabled=progress)
    done_bytes = 0
    for index, path in enumerate(inputs):
        for chunk in CsvSource(Path(path), schema, set(city_of), bad).chunks():
            staging.add(chunk, city_of, index)
            report.rows_read += len(chunk.time)
            meter.update(done_bytes + chunk.bytes_read, report.rows_read)
        done_bytes += Path(path).stat().st_size
    report.skipped = {k: bad.skipped[k] for k in BAD_CLASSES}

    def where(src: int) -> str:
        return f"{inputs[src >> 32]}:{src & 0xFFFFFFFF}"

    for city, stations in cities.stations.items():
        city_dir = root / city
        city_dir.mkdir(exist_ok=True)
        m = (
            load_manifest(city_dir)
            if (city_dir / MANIFEST).exists()
            else new_manifest(city, stations, schema)
        )
        if [f["name"] for f in m["features"]] != features:
            raise DataPrepError(
                f"{city_dir / MANIFEST}: features {m['features']} differ from schema {features}"
            )
        by_key = {(s["station"], s["year"]): s for s in m["shards"]}
        version = m["version"] + 1
        counts = MergeCounts()
        superseded = []
        for key in [k for k in staging.shard_keys() if k[0] == city]:
            _, station, year = key
            old = by_key.get((station, year))
            existing = read_shard(city_dir / old["file"]) if old else None
            time_, values, mask, src = staging.load(key)
            label = f"station {station!r} (city {city})"
            merged, c = merge_rows(
                existing, time_, values, mask, src, policy=on_conflict, where=where, label=label
            )
            counts += c
            if merged is None:
                continue
            entry = write_shard(
                city_dir,
                city=city,
                station=station,
                station_id=stations.index(station),
                year=year,
                version=version,
                features=features,
                fill_hours=schema.gap_fill_hours,
                rows=merged,
            )
            if old:
                superseded.append(old["file"])
            by_key[(station, year)] = entry
        report.rows_added += counts.added
        report.rows_replaced += counts.replaced
        report.rows_unchanged += counts.unchanged
        report.input_duplicates += counts.input_duplicates
        if counts.added or counts.replaced:
            m["shards"] = list(by_key.values())
            finish_manifest(m, report.inputs, {"rows_added": counts.added, "rows_replaced": counts.replaced})
            commit_manifest(city_dir, m)
            for name in superseded:
                (city_dir / name).unlink(missing_ok=True)
        if m["version"]:
            report.cities[city] = {"version": m["version"], "rows": m["rows"], "gaps": m["gaps"]}
    staging.remove()
    write_global_stats(root)
    report.seconds = time.monotonic() - start
    atomic_write_text(root / REPORT, report.to_json())
    return report


def prepare(
    schema: str | Path,
    cities: str | Path,
    out_dir: str | Path,
    inputs: list[Path],
    progress: bool = True,
    on_bad_input: str | None = None,
    on_conflict: str | None = None,
) -> PrepReport:
    """Create a new dataset at out_dir (must not hold one yet). Policies default to the schema's."""
    root = Path(out_dir)
    sch, cit = load_schema(schema), load_cities(cities)
    if not inputs:
        raise InputError("no input files given")
    if (root / SCHEMA_COPY).exists():
        raise DataPrepError(
            f"{root}: already holds a dataset; use `crosscity prep append --data {root} INPUT...`"
        )
    root.mkdir(parents=True, exist_ok=True)
    with _Lock(root):
        report = _ingest(
            root,
            sch,
            cit,
            [Path(p) for p in inputs],
            on_bad_input or sch.on_bad_input,
            on_conflict or sch.on_conflict,
            progress,
        )
        # the schema copy marks the dataset complete; append reads it back
        atomic_write_text(root / CITIES_COPY, Path(cities).read_text(encoding="utf-8"))
        atomic_write_text(root / SCHEMA_COPY, Path(schema).read_text(encoding="utf-8"))
    return report


def append(
    data_dir: str | Path,
    inputs: list[Path],
    progress: bool = True,
    on_bad_input: str | None = None,
    on_conflict: str | None = None,
) -> PrepReport:
    """Add rows to an existing dataset (idempotent; conflicts per policy); commits a new version per city."""
    root = Path(data_dir)
    if not (root / SCHEMA_COPY).exists():
        raise DataPrepError(f"{root}: not a prepared dataset (no {SCHEMA_COPY}); run `crosscity prep` first")
    sch, cit = load_schema(root / SCHEMA_COPY), load_cities(root / CITIES_COPY)
    if not inputs:
        raise InputError("no input files given")
    with _Lock(root):
        _clean_leftovers(root, cit)
        return _ingest(
            root,
            sch,
            cit,
            [Path(p) for p in inputs],
            on_bad_input or sch.on_bad_input,
            on_conflict or sch.on_conflict,
            progress,
        )


def print_report(report: PrepReport) -> None:
    print(f"prep: {report.summary()}", file=sys.stderr)


__all__ = ["GLOBAL_STATS", "PrepReport", "append", "prepare", "print_report"]
