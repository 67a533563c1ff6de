"""Read one raw CSV / CSV.gz input in bounded chunks of rows, applying the schema.

Every bad-input class is detected here with its file:line. The policy decides: `error` raises
InputError for the first bad row (in line order), `skip` drops the row and counts it by class.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np

from crosscity.data_prep.errors import InputError
from crosscity.data_prep.schema import Schema

COMPASS_POINTS = (
    "N",
    "NNE",
    "NE",
    "ENE",
    "E",
    "ESE",
    "SE",
    "SSE",
    "S",
    "SSW",
    "SW",
    "WSW",
    "W",
    "WNW",
    "NW",
    "NNW",
)
COMPASS16 = {p: i * 22.5 for i, p in enumerate(COMPASS_POINTS)}
BAD_CLASSES = (
    "bad_encoding",
    "empty_file",
    "unknown_column",
    "wrong_column_count",
    "non_numeric",
    "bad_category",
    "bad_time",
    "unknown_station",
    "unsorted_time",
    "duplicate_time",
)


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
    """Applies the bad-input policy and counts what was skipped, per class."""

    policy: str
    skipped: Counter = field(default_factory=Counter)

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


def _decoded(stream: BinaryIO, path: Path, encoding: str, bad: BadInput) -> Iterator[str]:
    for number, line in enumerate(stream, start=1):
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


class CsvSource:
    """Iterates RowChunks of one input file under a schema and a bad-input policy."""

    def __init__(
        self, path: Path, schema: Schema, stations: set[str], bad: BadInput, chunk_rows: int = 16_384
    ):
        self.path = Path(path)
        self.schema = schema
        self.stations = stations
        self.bad = bad
        self.chunk_rows = chunk_rows
        self.tokens = frozenset(schema.missing_tokens)
        self.last_time: dict[str, int] = {}  # per station, to detect unsorted/duplicate rows across chunks
        self.file_station: str | None = None
        if schema.station.from_filename is not None:
            match = schema.station.from_filename.search(self.path.name)
            if match is None:
                raise InputError(
                    f"{self.path}: file name does not match station.from_filename "
                    f"{schema.station.from_filename.pattern!r} of {schema.path}"
                )
            self.file_station = match.group("station")

    def chunks(self) -> Iterator[RowChunk]:
        raw, stream = _open(self.path)
        with raw, stream:
            reader = csv.reader(
                _decoded(stream, self.path, self.schema.encoding, self.bad), delimiter=self.schema.delimiter
            )
            header = next(reader, None)
            if header is None or not any(h.strip() for h in header):
                self.bad.report(self.path, 1, "empty_file", "file is empty (no header line)")
                return
            columns = self._columns([h.strip() for h in header])
            rows: list[list[str]] = []
            lines: list[int] = []
            data_rows = 0
            for row in reader:
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

    def _columns(self, header: list[str]) -> dict[str, int]:
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes:
            raise InputError(f"{self.path}:1: column {dupes[0]!r} appears more than once in the header")
        known = self.schema.known_columns
        for h in header:
            if h not in known:
                self.bad.report(
                    self.path,
                    1,
                    "unknown_column",
                    f"unknown column {h!r}; the schema {self.schema.path} knows {sorted(known)} "
                    "(list it under ignore_columns to drop it)",
                )
        needed = known - set(self.schema.ignore_columns)
        missing = sorted(needed - set(header))
        if missing:
            raise InputError(
                f"{self.path}:1: required column {missing[0]!r} missing from the header {header}"
            )
        return {h: i for i, h in enumerate(header)}

    def _parse(self, rows: list[list[str]], lines: list[int], columns: dict[str, int], pos: int) -> RowChunk:
        n = len(rows)
        cols = list(zip(*rows, strict=True))
        problems: list[tuple[int, str, str]] = []
        features = self.schema.feature_names
        values = np.zeros((n, len(features)), dtype=np.float64)
        mask = np.zeros((n, len(features)), dtype=bool)
        for j, spec in enumerate(self.schema.numeric):
            values[:, j], mask[:, j], bad_idx = _floats(cols[columns[spec.column]], self.tokens)
            problems += [
                (
                    i,
                    "non_numeric",
                    f"column {spec.column!r}: value {rows[i][columns[spec.column]]!r} is not a number "
                    f"(missing tokens: {sorted(self.tokens)})",
                )
                for i in bad_idx
            ]
        j = len(self.schema.numeric)
        for spec in self.schema.categorical:
            angle, observed, bad_idx = self._angles(cols[columns[spec.column]], spec.encoding)
            problems += [
                (i, "bad_category", f"column {spec.column!r}: value {rows[i][columns[spec.column]]!r} {msg}")
                for i, msg in bad_idx
            ]
            rad = np.deg2rad(angle)
            values[:, j], values[:, j + 1] = np.sin(rad), np.cos(rad)
            mask[:, j] = mask[:, j + 1] = observed
            j += 2
        time, bad_time = self._times(cols, columns)
        problems += bad_time
        stations = np.array(
            cols[columns[self.schema.station.column]]
            if self.file_station is None
            else [self.file_station] * n
        )
        unknown = ~np.isin(stations, list(self.stations))
        problems += [
            (int(i), "unknown_station", f"station {str(stations[i])!r} is in no city of the cities file")
            for i in np.flatnonzero(unknown)
        ]
        keep = np.ones(n, dtype=bool)
        keep[[p[0] for p in problems]] = False
        problems += self._order(stations, time, keep, lines)
        problems.sort(key=lambda p: p[0])  # stable: a row's first problem (in column order) is reported
        reported: set[int] = set()
        for i, kind, message in problems:
            if i not in reported:
                self.bad.report(self.path, lines[i], kind, message)
                reported.add(i)
        keep[list(reported)] = False
        values[~mask] = 0.0
        return RowChunk(
            stations=stations[keep],
            time=time[keep],
            values=values[keep].astype(np.float32),
            mask=mask[keep],
            lines=np.asarray(lines, dtype=np.int64)[keep],
            bytes_read=pos,
        )

    def _angles(
        self, cells: tuple[str, ...], encoding: str
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        if encoding == "degrees":
            values, observed, bad_idx = _floats(cells, self.tokens)
            return np.nan_to_num(values), observed, [(i, "is not an angle in degrees") for i in bad_idx]
        angle = np.zeros(len(cells))
        observed = np.zeros(len(cells), dtype=bool)
        bad: list[tuple[int, str]] = []
        for i, c in enumerate(cells):
            if c in self.tokens:
                continue
            a = COMPASS16.get(c.strip())
            if a is None:
                bad.append((i, f"is not a compass point; allowed: {' '.join(COMPASS16)} or a missing token"))
                continue
            angle[i], observed[i] = a, True
        return angle, observed, bad

    def _times(
        self, cols: list[tuple[str, ...]], columns: dict[str, int]
    ) -> tuple[np.ndarray, list[tuple[int, str, str]]]:
        spec = self.schema.time
        n = len(cols[0])
        problems: list[tuple[int, str, str]] = []
        if spec.column is not None:
            time = np.zeros(n, dtype=np.int64)
            for i, cell in enumerate(cols[columns[spec.column]]):
                try:
                    t = datetime.strptime(cell.strip(), spec.format).replace(tzinfo=UTC).timestamp()  # type: ignore[arg-type]
                except ValueError as exc:
                    problems.append(
                        (
                            i,
                            "bad_time",
                            f"column {spec.column!r}: {cell!r} does not match format {spec.format!r} ({exc})",
                        )
                    )
                    continue
                time[i] = int(t)
        else:
            parts = {}
            for key in ("year", "month", "day", "hour"):
                name = getattr(spec, key)
                cells = cols[columns[name]]
                vals, observed, bad_idx = _floats(cells, frozenset())
                bad_set = set(bad_idx) | set(np.flatnonzero(~observed | (vals != np.round(vals))).tolist())
                problems += [
                    (i, "bad_time", f"column {name!r}: {cells[i]!r} is not an integer")
                    for i in sorted(bad_set)
                ]
                parts[key] = np.where(np.isfinite(vals), vals, 1).astype(np.int64)
            y, m, d, h = parts["year"], parts["month"], parts["day"], parts["hour"]
            invalid = (m < 1) | (m > 12) | (d < 1) | (d > _month_days(y, m)) | (h < 0) | (h > 23)
            problems += [
                (
                    int(i),
                    "bad_time",
                    f"no such hour: year={y[i]} month={m[i]} day={d[i]} hour={h[i]} (month 1-12, hour 0-23)",
                )
                for i in np.flatnonzero(invalid)
            ]
            time = (_days_from_civil(y, m, d) * 24 + h) * 3600
        off_hour = np.flatnonzero(time % 3600 != 0)
        problems += [
            (int(i), "bad_time", "timestamp is not on the hour (data must be hourly)") for i in off_hour
        ]
        return time, problems

    def _order(
        self, stations: np.ndarray, time: np.ndarray, keep: np.ndarray, lines: list[int]
    ) -> list[tuple[int, str, str]]:
        """Rows of a station must have strictly increasing time within a file."""
        problems = []
        for station in map(str, np.unique(stations[keep])):
            idx = np.flatnonzero(keep & (stations == station))
            t = time[idx]
            prev = np.maximum.accumulate(
                np.concatenate([[self.last_time.get(station, np.iinfo(np.int64).min)], t])
            )[:-1]
            for k in np.flatnonzero(t <= prev):
                when = datetime.fromtimestamp(int(t[k]), UTC).strftime("%Y-%m-%d %H:%M")
                kind = "duplicate_time" if t[k] == prev[k] else "unsorted_time"
                what = "repeats an earlier" if kind == "duplicate_time" else "is before an earlier"
                problems.append(
                    (
                        int(idx[k]),
                        kind,
                        f"station {station!r} time {when} {what} row's time "
                        "(rows must be in increasing time order)",
                    )
                )
            self.last_time[station] = int(max(prev[-1], t[-1]))
        return problems
