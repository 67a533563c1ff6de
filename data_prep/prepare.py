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

from crosscity.core.atomic_io import atomic_write_text
from crosscity.data_prep.csv_source import BAD_CLASSES, BadInput, CsvSource
from crosscity.data_prep.errors import DataPrepError, InputError
from crosscity.data_prep.manifest import (
    MANIFEST,
    commit_manifest,
    finish_manifest,
    load_manifest,
    new_manifest,
    write_global_stats,
)
from crosscity.data_prep.merge import MergeCounts, merge_rows
from crosscity.data_prep.progress import Progress
from crosscity.data_prep.schema import Cities, Schema, load_cities, load_schema
from crosscity.data_prep.shards import read_shard, write_shard
from crosscity.data_prep.staging import Staging

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


@dataclass
class _Pending:
    """A city's next manifest and the shard files it adds and supersedes (not committed yet)."""

    city_dir: Path
    manifest: dict[str, Any]
    written: list[str]
    superseded: list[str]
    counts: MergeCounts


def _stage_inputs(
    staging: Staging,
    schema: Schema,
    cities: Cities,
    inputs: list[Path],
    bad: BadInput,
    report: PrepReport,
    progress: bool,
) -> None:
    """Parse every input in bounded chunks into the staging area (memory does not grow with input)."""
    for path in inputs:
        if not path.is_file():
            raise InputError(f"{path}: input file not found")
    city_of = cities.city_of
    meter = Progress("prep", sum(p.stat().st_size for p in inputs), enabled=progress)
    done_bytes = 0
    for index, path in enumerate(inputs):
        for chunk in CsvSource(path, schema, set(city_of), bad).chunks():
            staging.add(chunk, city_of, index)
            report.rows_read += len(chunk.time)
            meter.update(done_bytes + chunk.bytes_read, report.rows_read)
        done_bytes += path.stat().st_size


def _merge_city(
    root: Path,
    city: str,
    stations: list[str],
    schema: Schema,
    staging: Staging,
    on_conflict: str,
    inputs: list[Path],
) -> _Pending:
    """Merge the staged rows of one city into new shard files; the old version stays untouched."""
    city_dir = root / city
    city_dir.mkdir(exist_ok=True)
    features = schema.feature_names
    m = load_manifest(city_dir) if (city_dir / MANIFEST).exists() else new_manifest(city, stations, schema)
    if [f["name"] for f in m["features"]] != features:
        raise DataPrepError(
            f"{city_dir / MANIFEST}: features {m['features']} differ from the schema's {features}"
        )
    by_key = {(s["station"], s["year"]): s for s in m["shards"]}
    pending = _Pending(city_dir, m, [], [], MergeCounts())

    def where(src: int) -> str:
        return f"{inputs[src >> 32]}:{src & 0xFFFFFFFF}"

    try:
        for _, station, year in [k for k in staging.shard_keys() if k[0] == city]:
            old = by_key.get((station, year))
            existing = read_shard(city_dir / old["file"]) if old else None
            time_, values, mask, src = staging.load((city, station, year))
            label = f"station {station!r} (city {city})"
            merged, counts = merge_rows(
                existing, time_, values, mask, src, policy=on_conflict, where=where, label=label
            )
            pending.counts += counts
            if merged is None:
                continue
            entry = write_shard(
                city_dir,
                city=city,
                station=station,
                station_id=stations.index(station),
                year=year,
                version=m["version"] + 1,
                features=features,
                fill_hours=schema.gap_fill_hours,
                rows=merged,
            )
            pending.written.append(entry["file"])
            if old:
                pending.superseded.append(old["file"])
            by_key[(station, year)] = entry
    except BaseException:
        _discard([pending])
        raise
    m["shards"] = list(by_key.values())
    return pending


def _discard(pendings: list[_Pending]) -> None:
    for p in pendings:
        for name in p.written:
            (p.city_dir / name).unlink(missing_ok=True)


def _ingest(
    root: Path,
    schema: Schema,
    cities: Cities,
    inputs: list[Path],
    on_bad_input: str,
    on_conflict: str,
    progress: bool,
) -> PrepReport:
    """Parse, merge every city (conflicts fail before anything is committed), then commit each city."""
    start = time.monotonic()
    report = PrepReport(inputs=[str(p) for p in inputs])
    bad = BadInput(on_bad_input)
    staging = Staging(root / STAGING, len(schema.feature_names))
    pendings: list[_Pending] = []
    try:
        _stage_inputs(staging, schema, cities, inputs, bad, report, progress)
        report.skipped = {k: bad.skipped[k] for k in BAD_CLASSES}
        for city, stations in cities.stations.items():
            pendings.append(_merge_city(root, city, stations, schema, staging, on_conflict, inputs))
    except BaseException:
        _discard(pendings)
        raise
    finally:
        staging.remove()
    for p in pendings:
        c = p.counts
        report.rows_added += c.added
        report.rows_replaced += c.replaced
        report.rows_unchanged += c.unchanged
        report.input_duplicates += c.input_duplicates
        if c.added or c.replaced:
            finish_manifest(p.manifest, report.inputs, {"rows_added": c.added, "rows_replaced": c.replaced})
            commit_manifest(p.city_dir, p.manifest)  # the commit point of this city's new version
            for name in p.superseded:
                (p.city_dir / name).unlink(missing_ok=True)
        if p.manifest["version"]:
            m = p.manifest
            report.cities[m["city"]] = {"version": m["version"], "rows": m["rows"], "gaps": m["gaps"]}
    write_global_stats(root)
    report.seconds = time.monotonic() - start
    atomic_write_text(root / REPORT, report.to_json())
    return report


def _policies(schema: Schema, on_bad_input: str | None, on_conflict: str | None) -> tuple[str, str]:
    return on_bad_input or schema.on_bad_input, on_conflict or schema.on_conflict


def prepare(
    schema: str | Path,
    cities: str | Path,
    out_dir: str | Path,
    inputs: list[Path],
    progress: bool = True,
    on_bad_input: str | None = None,
    on_conflict: str | None = None,
) -> PrepReport:
    """Create a new dataset in out_dir (new or empty). Policies default to the schema's.

    On any error nothing is left behind: out_dir is emptied again (never a partial dataset).
    """
    root = Path(out_dir)
    sch, cit = load_schema(schema), load_cities(cities)
    if not inputs:
        raise InputError("no input files given")
    if (root / SCHEMA_COPY).exists():
        raise DataPrepError(
            f"{root}: already holds a dataset; use `crosscity prep append --data {root} INPUT...`"
        )
    if root.exists() and any(root.iterdir()):
        raise DataPrepError(f"{root}: not empty; prep writes a new dataset into an empty or new folder")
    root.mkdir(parents=True, exist_ok=True)
    try:
        with _Lock(root):
            report = _ingest(
                root,
                sch,
                cit,
                [Path(p) for p in inputs],
                *_policies(sch, on_bad_input, on_conflict),
                progress,
            )
            empty = [c for c in cit.stations if c not in report.cities]
            if empty:
                stations = ", ".join(cit.stations[empty[0]])
                raise InputError(
                    f"{cit.path}: city {empty[0]!r} got no rows from the inputs (stations {stations}); "
                    "check the station names in the cities file and the input files"
                )
            # the schema copy is written last: it marks the dataset complete, and append reads it back
            atomic_write_text(root / CITIES_COPY, Path(cities).read_text(encoding="utf-8"))
            atomic_write_text(root / SCHEMA_COPY, Path(schema).read_text(encoding="utf-8"))
    except BaseException:
        for child in root.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise
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
            root, sch, cit, [Path(p) for p in inputs], *_policies(sch, on_bad_input, on_conflict), progress
        )


def print_report(report: PrepReport) -> None:
    print(f"prep: {report.summary()}", file=sys.stderr)
