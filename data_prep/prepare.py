"""`crosscity prep`: raw CSVs -> per-city HDF5 shards + manifests, and incremental append.

Prep and append are one code path (append to an empty dataset = prep) and one run is one dataset
version. Order of writes for crash safety: parse into staging, write changed shards and each
changed city's next manifest under new names, the global statistics of the new version, then the
dataset manifest (the one commit of all cities), then delete what the new version superseded. A
SIGKILL before the commit leaves the previous version complete (or, for a first prep, a folder that
verify calls unfinished and rerunning the same command starts over); after it, the new version.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crosscity.core.atomic_io import atomic_write_text
from crosscity.data_prep.csv_source import BAD_CLASSES, BadInput, CsvSource
from crosscity.data_prep.dataset import (
    CITIES_COPY,
    DATASET,
    DATASET_FORMAT,
    LOCK,
    OLD_MANIFEST,
    REPORT,
    SCHEMA_COPY,
    STAGING,
    UNFINISHED,
    checked_bytes,
    city_manifest,
    commit,
    leftovers,
    not_a_dataset,
    read_dataset,
    stats_entry,
    stats_name,
)
from crosscity.data_prep.errors import DataPrepError, InputError
from crosscity.data_prep.manifest import finish_manifest, new_manifest, write_manifest
from crosscity.data_prep.merge import MergeCounts, merge_rows
from crosscity.data_prep.plausibility import Plausibility, flag_lines
from crosscity.data_prep.progress import Progress
from crosscity.data_prep.schema import SCHEMA_VERSION, Cities, Schema, bind, load_cities, load_schema
from crosscity.data_prep.shards import read_checked, sha256_file, write_shard
from crosscity.data_prep.staging import Staging


@dataclass
class PrepReport:
    """What one prep/append run did; written to DATA/prep_report.json and printed by the CLI."""

    inputs: list[str]
    dataset_version: int = 0
    changed: bool = True  # False: nothing new (the same prep again, or an append of known rows)
    rows_read: int = 0
    rows_added: int = 0
    rows_replaced: int = 0
    rows_unchanged: int = 0
    input_duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    blanked: dict[str, int] = field(default_factory=dict)  # feature -> cells outside its range made missing
    cities: dict[str, dict[str, Any]] = field(default_factory=dict)  # city -> version, rows, gaps
    plausibility: dict[str, dict[str, Any]] = field(default_factory=dict)  # feature -> min, p1, ..., flags
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0

    @property
    def flags(self) -> list[str]:
        return flag_lines(self.plausibility)

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "rows_per_s": self.rows_per_s}, indent=1) + "\n"

    def summary(self) -> str:
        if not self.inputs:
            cities = ", ".join(f"{c} v{d['version']}" for c, d in self.cities.items())
            return f"already prepared: dataset version {self.dataset_version} ({cities}); nothing to do"
        skipped = ", ".join(f"{k}={v}" for k, v in self.skipped.items() if v) or "none"
        cities = ", ".join(f"{c} v{d['version']} ({d['rows']} rows)" for c, d in self.cities.items())
        version = f"dataset version {self.dataset_version}" + ("" if self.changed else " (unchanged)")
        return (
            f"read {self.rows_read} rows in {self.seconds:.1f} s ({self.rows_per_s:,.0f} rows/s): "
            f"added {self.rows_added}, replaced {self.rows_replaced}, unchanged {self.rows_unchanged}, "
            f"input duplicates {self.input_duplicates}; skipped: {skipped}; {version}; cities: {cities}"
        )


class _Lock:
    """One writer per dataset root (flock, released by the kernel even on SIGKILL)."""

    def __init__(self, root: Path):
        self.path = Path(root) / LOCK
        self.acquired = False

    def __enter__(self) -> _Lock:
        self.fh = open(self.path, "w")  # noqa: SIM115 - closed in __exit__
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise DataPrepError(
                f"{self.path.parent}: another prep/append is running on this dataset"
            ) from None
        self.acquired = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.fh.close()


@dataclass
class _Pending:
    """A city's next manifest and the shard files it adds and supersedes (not committed yet)."""

    city_dir: Path
    manifest: dict[str, Any]
    written: list[str]
    superseded: list[str]
    counts: MergeCounts

    @property
    def changed(self) -> bool:
        return bool(self.counts.added or self.counts.replaced)


def _where(inputs: list[Path]) -> Callable[[int], str]:
    return lambda src: f"{inputs[src >> 32]}:{src & 0xFFFFFFFF}"


def _stage_inputs(
    staging: Staging,
    schema: Schema,
    cities: Cities,
    inputs: list[Path],
    bad: BadInput,
    report: PrepReport,
    plausible: Plausibility,
    progress: bool,
) -> None:
    """Parse every input in bounded chunks into the staging area (memory does not grow with input)."""
    for path in inputs:
        if not path.is_file():
            raise InputError(f"{path}: input file not found (or not a file)")
    city_of = cities.city_of
    meter = Progress("prep", sum(p.stat().st_size for p in inputs), enabled=progress)
    done_bytes = 0
    for index, path in enumerate(inputs):
        source = CsvSource(path, schema, cities, bad)
        names = [f.name for f in source.features]
        for chunk in source.chunks():
            staging.add(chunk, city_of, index)
            plausible.add(names, chunk.values, chunk.mask, (np.int64(index) << 32) | chunk.lines)
            report.rows_read += len(chunk.time)
            meter.update(done_bytes + chunk.bytes_read, report.rows_read)
        done_bytes += path.stat().st_size


def _merge_city(
    root: Path,
    city: str,
    schema: Schema,
    cities: Cities,
    staging: Staging,
    on_conflict: str,
    inputs: list[Path],
    ds: dict[str, Any] | None,
) -> _Pending:
    """Merge the staged rows of one city into new shard files; the committed version stays untouched."""
    city_dir = root / city
    city_dir.mkdir(exist_ok=True)
    stations = cities.stations[city]
    features = cities.features(schema, city)
    m = city_manifest(root, city, ds) if ds else new_manifest(city, stations, features, schema)
    if m["features"] != [f.to_json() for f in features]:
        raise DataPrepError(
            f"{city_dir}: stored features {m['features']} differ from the schema's {features}"
        )
    fill_hours = np.array([f.fill_hours for f in features])
    by_key = {(s["station"], s["year"]): s for s in m["shards"]}
    pending = _Pending(city_dir, m, [], [], MergeCounts())
    try:
        for _, station, year in [k for k in staging.shard_keys() if k[0] == city]:
            old = by_key.get((station, year))
            existing = read_checked(city_dir / old["file"], old) if old else None
            time_, values, mask, src = staging.load((city, station, year))
            label = f"station {station!r} (city {city})"
            merged, counts = merge_rows(
                existing, time_, values, mask, src, policy=on_conflict, where=_where(inputs), label=label
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
                features=[f.name for f in features],
                fill_hours=fill_hours,
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


def _file_entry(root: Path, name: str) -> dict[str, str]:
    return {"file": name, "sha256": sha256_file(root / name)}


def _next_version(
    root: Path, pendings: list[_Pending], ds: dict[str, Any] | None, report: PrepReport, prep: dict | None
) -> dict[str, Any]:
    """Write each changed city's next manifest and the new global statistics (new names: nothing
    current changes); returns the dataset manifest that commits them."""
    version = (ds["version"] if ds else 0) + 1
    entries, manifests = {}, []
    for p in pendings:
        c = p.counts
        if p.changed:
            finish_manifest(p.manifest, report.inputs, {"rows_added": c.added, "rows_replaced": c.replaced})
            entries[p.manifest["city"]] = write_manifest(p.city_dir, p.manifest)
            p.written.append(entries[p.manifest["city"]]["manifest"])
        else:
            entries[p.manifest["city"]] = ds["cities"][p.manifest["city"]]  # type: ignore[index]
        manifests.append(p.manifest)
    history = ds["history"] if ds else []
    return {
        "format": DATASET_FORMAT,
        "schema_version": SCHEMA_VERSION,
        "version": version,
        "cities": entries,
        "global_stats": stats_entry(root, version, manifests),
        "schema": ds["schema"] if ds else _file_entry(root, SCHEMA_COPY),
        "cities_file": ds["cities_file"] if ds else _file_entry(root, CITIES_COPY),
        "prep": ds["prep"] if ds else prep,
        "history": [
            *history,
            {
                "version": version,
                "time": time.time(),
                "inputs": report.inputs,
                "cities": {c: e["version"] for c, e in entries.items()},
                "rows_added": report.rows_added,
                "rows_replaced": report.rows_replaced,
            },
        ],
    }


def _ingest(
    root: Path,
    schema: Schema,
    cities: Cities,
    inputs: list[Path],
    policies: tuple[str, str],
    strict: bool,
    progress: bool,
    ds: dict[str, Any] | None = None,
    prep: dict | None = None,
) -> PrepReport:
    """Parse, check plausibility, merge every city (conflicts fail before anything is committed), commit."""
    start = time.monotonic()
    report = PrepReport(inputs=[str(p) for p in inputs])
    bad = BadInput(policies[0])
    plausible = Plausibility()
    staging = Staging(root / STAGING, {c: len(cities.features(schema, c)) for c in cities.specs})
    pendings: list[_Pending] = []
    new: dict[str, Any] | None = None
    try:
        _stage_inputs(staging, schema, cities, inputs, bad, report, plausible, progress)
        report.skipped = {k: bad.skipped[k] for k in BAD_CLASSES}
        report.blanked = dict(bad.blanked)
        report.plausibility = plausible.report(_where(inputs))
        if strict and report.flags:
            raise DataPrepError(
                f"--strict: {report.flags[0]} ({len(report.flags)} flag(s); drop --strict to prepare anyway)"
            )
        for city in cities.specs:
            pendings.append(_merge_city(root, city, schema, cities, staging, policies[1], inputs, ds))
        _count(report, pendings)
        empty = [p.manifest["city"] for p in pendings if not p.changed]
        if ds is None and empty:
            stations = ", ".join(cities.stations[empty[0]])
            raise InputError(
                f"{cities.path}: city {empty[0]!r} got no rows from the inputs (stations {stations}); "
                "check the station names in the cities file and the input files"
            )
        if report.changed:
            new = _next_version(root, pendings, ds, report, prep)
    except BaseException:
        _discard(pendings)
        (root / stats_name((ds["version"] if ds else 0) + 1)).unlink(missing_ok=True)
        raise
    finally:
        staging.remove()
    if new is not None:
        commit(root, new)  # the commit point of the whole dataset version
        ds = new
        for p in pendings:
            for name in p.superseded:
                (p.city_dir / name).unlink(missing_ok=True)
        for path in leftovers(root, ds):  # the previous version's manifests and statistics
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert ds is not None  # a first prep always changes something (every city got rows)
    report.dataset_version = ds["version"]
    for p in pendings:
        m = city_manifest(root, p.manifest["city"], ds)
        report.cities[m["city"]] = {"version": m["version"], "rows": m["rows"], "gaps": m["gaps"]}
    report.seconds = time.monotonic() - start
    atomic_write_text(root / REPORT, report.to_json())
    return report


def _count(report: PrepReport, pendings: list[_Pending]) -> None:
    for p in pendings:
        report.rows_added += p.counts.added
        report.rows_replaced += p.counts.replaced
        report.rows_unchanged += p.counts.unchanged
        report.input_duplicates += p.counts.input_duplicates
    report.changed = any(p.changed for p in pendings)


def _policies(schema: Schema, on_bad_input: str | None, on_conflict: str | None) -> tuple[str, str]:
    return on_bad_input or schema.on_bad_input, on_conflict or schema.on_conflict


def _fingerprint(schema: Path, cities: Path, inputs: list[Path]) -> dict[str, Any]:
    """What a prep command prepares: rerunning the same one on its finished dataset is a no-op."""
    return {
        "schema_sha256": sha256_file(schema),
        "cities_sha256": sha256_file(cities),
        "inputs": [[p.name, p.stat().st_size, sha256_file(p)] for p in inputs],
    }


def _already(root: Path, ds: dict[str, Any], prep: dict[str, Any]) -> PrepReport:
    if ds.get("prep") != prep:
        raise DataPrepError(
            f"{root}: already holds a dataset (version {ds['version']}) prepared from other inputs; "
            f"use `crosscity prep append --data {root} INPUT...`"
        )
    for path in leftovers(root, ds):  # of this same prep, killed after its commit
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    report = PrepReport(inputs=[], dataset_version=ds["version"], changed=False)
    for city in sorted(ds["cities"]):
        m = city_manifest(root, city, ds)
        report.cities[city] = {"version": m["version"], "rows": m["rows"], "gaps": m["gaps"]}
    return report


def _debris(path: Path) -> bool:
    """The lock, or the temp file of a marker a prep was killed writing: not a reason to refuse."""
    return path.name == LOCK or (path.name.startswith(f".{UNFINISHED}.") and path.name.endswith(".tmp"))


def _empty(root: Path) -> None:
    for child in root.iterdir():
        if child.name != LOCK:
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def prepare(
    schema: str | Path,
    cities: str | Path,
    out_dir: str | Path,
    inputs: list[Path],
    progress: bool = True,
    on_bad_input: str | None = None,
    on_conflict: str | None = None,
    strict: bool = False,
) -> PrepReport:
    """Create a new dataset in out_dir (new or empty). Policies default to the schema's.

    On any error nothing is left behind (out_dir is removed again if prep created it, else emptied).
    The same command again on its finished dataset does nothing; on a folder a killed prep left
    unfinished, it starts over.
    """
    root = Path(out_dir)
    sch = load_schema(schema)
    cit = bind(sch, load_cities(cities))
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise InputError("no input files given")
    for path in inputs:
        if not path.is_file():
            raise InputError(f"{path}: input file not found (or not a file)")
    if root.exists() and not root.is_dir():
        raise DataPrepError(f"{root}: exists and is not a folder")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    lock = _Lock(root)
    owned = False  # True once the folder's content is ours to remove
    try:
        with lock:
            prep = _fingerprint(Path(schema), Path(cities), inputs)
            if (root / DATASET).exists():
                return _already(root, read_dataset(root), prep)
            if (root / UNFINISHED).is_file():
                print(f"prep: {root}: starting over the unfinished prep found there", file=sys.stderr)
            elif list(root.glob(f"*/{OLD_MANIFEST}")):
                raise not_a_dataset(root)
            elif any(not _debris(c) for c in root.iterdir()):
                raise DataPrepError(
                    f"{root}: not empty; prep writes a new dataset into an empty or new folder"
                )
            owned = True
            _empty(root)
            atomic_write_text(root / UNFINISHED, json.dumps({"started": time.time(), "prep": prep}) + "\n")
            atomic_write_text(root / CITIES_COPY, Path(cities).read_text(encoding="utf-8"))
            atomic_write_text(root / SCHEMA_COPY, Path(schema).read_text(encoding="utf-8"))
            policies = _policies(sch, on_bad_input, on_conflict)
            report = _ingest(root, sch, cit, inputs, policies, strict, progress, prep=prep)
            (root / UNFINISHED).unlink(missing_ok=True)  # (the commit's cleanup may have removed it)
            return report
    except BaseException:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        elif owned:
            _empty(root)
        if lock.acquired and not created:
            (root / LOCK).unlink(missing_ok=True)
        raise


def append(
    data_dir: str | Path,
    inputs: list[Path],
    progress: bool = True,
    on_bad_input: str | None = None,
    on_conflict: str | None = None,
    strict: bool = False,
) -> PrepReport:
    """Add rows to an existing dataset (idempotent; conflicts per policy); commits one new dataset version."""
    root = Path(data_dir)
    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise InputError("no input files given")
    if not root.is_dir():
        raise not_a_dataset(root)
    with _Lock(root):
        ds = read_dataset(root)
        for key in ("schema", "cities_file"):
            checked_bytes(root, ds[key]["file"], ds[key]["sha256"], f"{key} copy", ds["version"])
        sch = load_schema(root / SCHEMA_COPY)
        cit = bind(sch, load_cities(root / CITIES_COPY))
        for path in leftovers(root, ds):  # of a run killed before (or after) its commit
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        policies = _policies(sch, on_bad_input, on_conflict)
        return _ingest(root, sch, cit, inputs, policies, strict, progress, ds)


def print_report(report: PrepReport) -> None:
    print(f"prep: {report.summary()}", file=sys.stderr)
