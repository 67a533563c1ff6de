"""Read one raw CSV / CSV.gz input in bounded chunks of rows, applying the schema.

Every bad-input class is detected here with its file:line. The policy decides: `error` raises
InputError for the first bad row (in line order), `skip` drops the row (or, for a value outside
its column's range, blanks the cell) and counts it by class. A broken gzip stream always fails.
A file belongs to a city when the cities file says so (`files` patterns, or its station from the
file name): its columns are then read under that city's names and its city-only extras are kept.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from crosscity.data_prep.errors import InputError
from crosscity.data_prep.schema import CategoricalSpec, Cities, CitySpec, NumericSpec, Schema

FLOAT32_MAX = float(np.finfo(np.float32).max)
BAD_CLASSES = (
    "bad_encoding",
    "bad_csv",
    "empty_file",
    "unknown_column",
    "wrong_column_count",
    "non_numeric",
    "out_of_range",
    "bad_category",
    "bad_time",
    "unknown_station",
    "unsorted_time",
    "duplicate_time",
)
Problem = tuple[int, str, str, int | None]  # (row in chunk, class, message, feature column or None = row)


@dataclass
class RowChunk:
    """Parsed rows of one chunk of one file; `lines` are 1-based line numbers in that file."""

    stations: np.ndarray  # str
    time: np.ndarray  # int64 unix seconds, on the hour
    values: np.ndarray  # float32 [n, F], 0 where missing
    mask: np.ndarray  # bool [n, F], True = observed
    lines: np.ndarray  # int64
    bytes_read: int  # position in the (compressed) input file after this chunk


@dataclass
class BadInput:
    """Applies the bad-input policy and counts what was skipped, per class (and blanked cells per column)."""

    policy: str
    skipped: Counter = field(default_factory=Counter)
    blanked: Counter = field(default_factory=Counter)  # column -> cells made missing (out_of_range)

    def report(self, path: Path, line: int, kind: str, message: str) -> None:
        if self.policy == "error":
            raise InputError(f"{path}:{line}: {message} [{kind}]")
        self.skipped[kind] += 1


def _open(path: Path) -> tuple[BinaryIO, BinaryIO]:
    raw = open(path, "rb")  # noqa: SIM115 - closed by the caller together with the stream
    if raw.read(2) == b"\x1f\x8b":
        raw.seek(0)
        return raw, io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"), 1 << 20)  # type: ignore[arg-type]
    raw.seek(0)
    return raw, raw


def _stream_problem(exc: BaseException) -> str:
    if isinstance(exc, EOFError):
        return "the gzip stream ends early (a truncated .gz file?)"
    if isinstance(exc, gzip.BadGzipFile | zlib.error):
        return f"not a readable gzip file ({exc})"
    return f"read error ({exc})"


def _decoded(stream: BinaryIO, path: Path, encoding: str, bad: BadInput) -> Iterator[str]:
    lines = iter(stream)
    number = 0
    while True:
        try:
            line = next(lines)
        except StopIteration:
            return
        except (EOFError, OSError, zlib.error) as exc:  # read ahead in blocks: no exact line
            raise InputError(
                f"{path}: {_stream_problem(exc)}, after {number} complete lines [bad_gzip]"
            ) from None
        number += 1
        try:
            text = line.decode(encoding)
        except UnicodeDecodeError as exc:
            bad.report(
                path,
                number,
                "bad_encoding",
                f"not valid {encoding}: byte 0x{line[exc.start]:02x} at column {exc.start + 1}",
            )
            yield ""  # keeps csv line numbers aligned; an empty line is skipped below
            continue
        yield text.lstrip("\ufeff") if number == 1 else text


def _floats(cells: tuple[str, ...], tokens: frozenset[str]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Parse numbers; returns values (NaN if missing), observed mask and indexes of non-numeric cells."""
    try:
        values = np.array([math.nan if c in tokens else float(c) for c in cells], dtype=np.float64)
    except ValueError:
        values = np.array([math.nan if c in tokens else _float_or_nan(c) for c in cells], dtype=np.float64)
    missing = np.zeros(values.shape, dtype=bool)
    bad = []
    for i in np.flatnonzero(~np.isfinite(values)).tolist():
        if cells[i] in tokens:
            missing[i] = True
        else:
            bad.append(i)
    return values, ~missing, bad


def _float_or_nan(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan


def _days_from_civil(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of a proleptic Gregorian date (vectorised, exact)."""
    y = y - (m <= 2)
    era = np.floor_divide(y, 400)
    yoe = y - era * 400
    mp = (m + 9) % 12
    doy = (153 * mp + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _month_days(y: np.ndarray, m: np.ndarray) -> np.ndarray:
    leap = ((y % 4 == 0) & (y % 100 != 0)) | (y % 400 == 0)
    base = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])[np.clip(m, 1, 12) - 1]
    return base + (leap & (m == 2))


def _when(t: int) -> str:
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%d %H:%M")


def _range_text(spec: NumericSpec) -> str:
    if spec.valid_range is None:
        return f"the float32 range (|value| <= {FLOAT32_MAX:.3g})"
    return f"valid_range [{spec.valid_range[0]:g}, {spec.valid_range[1]:g}] of {spec.name!r}"


class CsvSource:
    """Iterates RowChunks of one input file under a schema, its cities and a bad-input policy."""

    def __init__(self, path: Path, schema: Schema, cities: Cities, bad: BadInput, chunk_rows: int = 16_384):
        self.path = Path(path)
        self.schema = schema
        self.cities = cities
        self.bad = bad
        self.chunk_rows = chunk_rows
        self.last_time: dict[str, int] = {}  # per station, to detect unsorted/duplicate rows across chunks
        self.file_station: str | None = None
        city = cities.city_of_file(self.path)
        if schema.station.from_filename is not None:
            match = schema.station.from_filename.search(self.path.name)
            if match is None:
                raise InputError(
                    f"{self.path}: file name does not match station.from_filename "
                    f"{schema.station.from_filename.pattern!r} of {schema.path}"
                )
            self.file_station = match.group("station")
            city = city or cities.city_of.get(self.file_station)
        self.city: CitySpec | None = cities.specs[city] if city else None
        self.stations = set(self.city.stations if self.city else cities.city_of)
        self.features = cities.features(schema, city) if city else schema.features
        # feature layout: shared numeric, shared categorical outputs, then the city's extras
        self.numeric: list[tuple[int, NumericSpec, str | None]] = [
            (j, spec, self._name(spec.column)) for j, spec in enumerate(schema.numeric)
        ]
        self.categorical: list[tuple[int, CategoricalSpec, str | None]] = []
        j = len(schema.numeric)
        for spec in schema.categorical:
            self.categorical.append((j, spec, self._name(spec.column)))
            j += len(spec.outputs)
        extras = self.city.extra if self.city else ()
        self.numeric += [(j + k, spec, spec.column) for k, spec in enumerate(extras)]

    def _name(self, schema_column: str) -> str | None:
        """The header name of a schema column in this file (None: this city has no such column)."""
        return self.city.column(schema_column) if self.city else schema_column

    def chunks(self) -> Iterator[RowChunk]:
        raw, stream = _open(self.path)
        with raw, stream:
            reader = csv.reader(
                _decoded(stream, self.path, self.schema.encoding, self.bad), delimiter=self.schema.delimiter
            )
            rows_in = self._rows(reader)
            header = next(rows_in, None)
            if not header or not any(h.strip() for h in header):
                self.bad.report(self.path, 1, "empty_file", "file is empty (no header line)")
                return
            columns = self._columns([h.strip() for h in header])
            rows: list[list[str]] = []
            lines: list[int] = []
            data_rows = 0
            for row in rows_in:
                if not row:
                    continue
                data_rows += 1
                if len(row) != len(header):
                    self.bad.report(
                        self.path,
                        reader.line_num,
                        "wrong_column_count",
                        f"expected {len(header)} fields, got {len(row)}",
                    )
                    continue
                rows.append(row)
                lines.append(reader.line_num)
                if len(rows) >= self.chunk_rows:
                    yield self._parse(rows, lines, columns, raw.tell())
                    rows, lines = [], []
            if rows:
                yield self._parse(rows, lines, columns, raw.tell())
            if data_rows == 0:
                self.bad.report(
                    self.path, reader.line_num + 1, "empty_file", "file has a header but no data rows"
                )

    def _rows(self, reader: Any) -> Iterator[list[str]]:
        """The CSV rows; a row the csv module cannot split (a field over its limit) is bad_csv."""
        while True:
            try:
                yield from reader
                return
            except csv.Error as exc:
                limit = csv.field_size_limit()
                why = f"a field longer than {limit} characters" if "field limit" in str(exc) else str(exc)
                self.bad.report(self.path, reader.line_num, "bad_csv", f"not a CSV row: {why}")

    def _columns(self, header: list[str]) -> dict[str, int]:
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise InputError(f"{self.path}:1: column {dupes[0]!r} appears more than once in the header")
        city = self.city
        mapped = {c: self._name(c) for c in self.schema.key_columns + self.schema.feature_columns}
        needed = [n for n in mapped.values() if n] + [e.column for e in (city.extra if city else ())]
        ignored = set(self.schema.ignore_columns) | set(city.ignore_columns if city else ())
        where = f"city {city.name}'s files have" if city else f"the schema {self.schema.path} knows"
        for h in header:
            if h not in needed and h not in ignored:
                hint = (
                    f"list it under cities.{city.name}.ignore_columns or extra"
                    if city
                    else "list it under ignore_columns to drop it, or give its city files: and extra:"
                )
                self.bad.report(
                    self.path,
                    1,
                    "unknown_column",
                    f"unknown column {h!r}; {where} {sorted(needed)} ({hint})",
                )
        missing = [n for n in needed if n not in header]
        if missing:
            renamed = [c for c, n in mapped.items() if n == missing[0] and c != n]
            via = f" (city {city.name} maps schema column {renamed[0]!r} to it)" if renamed and city else ""
            raise InputError(
                f"{self.path}:1: required column {missing[0]!r}{via} missing from the header {header}"
            )
        return {h: i for i, h in enumerate(header)}

    def _parse(self, rows: list[list[str]], lines: list[int], columns: dict[str, int], pos: int) -> RowChunk:
        n = len(rows)
        cols = list(zip(*rows, strict=True))
        problems: list[Problem] = []
        values = np.zeros((n, len(self.features)), dtype=np.float64)
        mask = np.zeros((n, len(self.features)), dtype=bool)
        for j, spec, name in self.numeric:
            if name is None:
                continue
            cells = cols[columns[name]]
            values[:, j], mask[:, j], bad_idx = _floats(cells, spec.missing_tokens)
            tokens = sorted(spec.missing_tokens)
            problems += [
                (
                    i,
                    "non_numeric",
                    f"column {name!r}: value {cells[i]!r} is not a number (missing tokens: {tokens})",
                    None,
                )
                for i in bad_idx
            ]
            lo, hi = spec.valid_range or (-math.inf, math.inf)
            v = values[:, j]
            outside = mask[:, j] & ((v < max(lo, -FLOAT32_MAX)) | (v > min(hi, FLOAT32_MAX)))
            problems += [
                (
                    int(i),
                    "out_of_range",
                    f"column {name!r}: value {cells[i]!r} is outside {_range_text(spec)}",
                    j,
                )
                for i in np.flatnonzero(outside)
            ]
        for j, spec, name in self.categorical:
            if name is None:
                continue
            cells = cols[columns[name]]
            encoded, observed, bad_idx = spec.encoding.encode(cells, spec.missing_tokens)
            width = encoded.shape[1]
            values[:, j : j + width] = encoded
            mask[:, j : j + width] = observed[:, None]
            allowed = f"{spec.encoding.describe()} or a missing token {sorted(spec.missing_tokens)}"
            problems += [
                (
                    i,
                    "bad_category",
                    f"column {name!r}: value {cells[i]!r} is not allowed; allowed: {allowed}",
                    None,
                )
                for i in bad_idx
            ]
        time, bad_time = self._times(cols, columns)
        problems += bad_time
        stations = np.array(
            cols[columns[self._name(self.schema.station.column)]]  # type: ignore[index]
            if self.file_station is None
            else [self.file_station] * n
        )
        problems += [
            (int(i), "unknown_station", self._unknown_station(str(stations[i])), None)
            for i in np.flatnonzero(~np.isin(stations, list(self.stations)))
        ]
        keep = np.ones(n, dtype=bool)
        keep[[p[0] for p in problems if p[3] is None]] = False
        problems += self._order(stations, time, keep)
        keep = self._apply_policy(problems, lines, mask)
        values[~mask] = 0.0
        return RowChunk(
            stations=stations[keep],
            time=time[keep],
            values=values[keep].astype(np.float32),
            mask=mask[keep],
            lines=np.asarray(lines, dtype=np.int64)[keep],
            bytes_read=pos,
        )

    def _apply_policy(self, problems: list[Problem], lines: list[int], mask: np.ndarray) -> np.ndarray:
        """Report problems in line order: `error` raises the first; `skip` drops each bad row once and
        blanks each out-of-range cell of the rows kept. Returns the rows kept."""
        problems.sort(key=lambda p: p[0])  # stable: a row's first problem (in column order) comes first
        dropped = {p[0] for p in problems if p[3] is None}
        reported: set[int] = set()
        for i, kind, message, j in problems:
            if j is None or self.bad.policy == "error":
                if i not in reported:
                    self.bad.report(self.path, lines[i], kind, message)
                    reported.add(i)
            elif i not in dropped:
                self.bad.report(self.path, lines[i], kind, message)
                self.bad.blanked[self.features[j].name] += 1
                mask[i, j] = False
        keep = np.ones(len(lines), dtype=bool)
        keep[list(dropped)] = False
        return keep

    def _unknown_station(self, station: str) -> str:
        if self.city is None:
            return f"station {station!r} is in no city of the cities file {self.cities.path}"
        return (
            f"station {station!r} is not a station of city {self.city.name}, whose file this is "
            f"(stations {self.city.stations}; {self.cities.path})"
        )

    def _times(
        self, cols: list[tuple[str, ...]], columns: dict[str, int]
    ) -> tuple[np.ndarray, list[Problem]]:
        spec = self.schema.time
        n = len(cols[0])
        problems: list[Problem] = []
        if spec.column is not None:
            name = self._name(spec.column)
            time = np.zeros(n, dtype=np.int64)
            for i, cell in enumerate(cols[columns[name]]):  # type: ignore[index]
                try:
                    t = datetime.strptime(cell.strip(), spec.format).replace(tzinfo=UTC).timestamp()  # type: ignore[arg-type]
                except ValueError as exc:
                    problems.append(
                        (
                            i,
                            "bad_time",
                            f"column {name!r}: {cell!r} does not match format {spec.format!r} ({exc})",
                            None,
                        )
                    )
                    continue
                time[i] = int(t)
        else:
            parts = {}
            limits = {"year": (1, 9999), "month": (1, 12), "day": (1, 31), "hour": (0, 23)}
            for key, (lo, hi) in limits.items():
                name = self._name(getattr(spec, key))
                cells = cols[columns[name]]  # type: ignore[index]
                vals, _, _ = _floats(cells, frozenset())
                bad = ~np.isfinite(vals) | (vals != np.round(vals)) | (vals < lo) | (vals > hi)
                problems += [
                    (
                        int(i),
                        "bad_time",
                        f"column {name!r}: {cells[i]!r} is not a valid {key} (an integer {lo}..{hi})",
                        None,
                    )
                    for i in np.flatnonzero(bad)
                ]
                parts[key] = np.where(bad, lo, vals).astype(np.int64)
            y, m, d, h = parts["year"], parts["month"], parts["day"], parts["hour"]
            invalid = d > _month_days(y, m)
            problems += [
                (int(i), "bad_time", f"no such day: year={y[i]} month={m[i]} day={d[i]}", None)
                for i in np.flatnonzero(invalid)
            ]
            time = (_days_from_civil(y, m, d) * 24 + h) * 3600
        problems += [
            (int(i), "bad_time", "timestamp is not on the hour (data must be hourly)", None)
            for i in np.flatnonzero(time % 3600 != 0)
        ]
        outside = (time < spec.min_s) | (time > spec.max_s)
        problems += [
            (
                int(i),
                "bad_time",
                f"time {_when(time[i])} is outside the plausible window {spec.window()} "
                f"(set time.min / time.max in {self.schema.path} if it is real)",
                None,
            )
            for i in np.flatnonzero(outside)
        ]
        return time, problems

    def _order(self, stations: np.ndarray, time: np.ndarray, keep: np.ndarray) -> list[Problem]:
        """Rows of a station must have strictly increasing time within a file."""
        problems: list[Problem] = []
        for station in map(str, np.unique(stations[keep])):
            idx = np.flatnonzero(keep & (stations == station))
            t = time[idx]
            prev = np.maximum.accumulate(
                np.concatenate([[self.last_time.get(station, np.iinfo(np.int64).min)], t])
            )[:-1]
            for k in np.flatnonzero(t <= prev):
                kind = "duplicate_time" if t[k] == prev[k] else "unsorted_time"
                what = "repeats an earlier" if kind == "duplicate_time" else "is before an earlier"
                problems.append(
                    (
                        int(idx[k]),
                        kind,
                        f"station {station!r} time {_when(t[k])} {what} row's time "
                        "(rows must be in increasing time order)",
                        None,
                    )
                )
            self.last_time[station] = int(max(prev[-1], t[-1]))
        return problems
