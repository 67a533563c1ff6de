"""Schema and cities files: how raw station CSVs map onto features, and which stations form a city.

Both are YAML (duplicate keys refused), validated at load so that a typo fails before any data is
read (docs/data_format.md). The schema's features are the shared ones, fed to the one model every
city trains; a city may rename its columns onto them and keep extra, city-only features.
"""

from __future__ import annotations

import fnmatch
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from crosscity.core.yaml_load import safe_load_unique
from crosscity.data_prep.encodings import ALLOWED as ENCODINGS_ALLOWED
from crosscity.data_prep.encodings import Encoding, parse_encoding
from crosscity.data_prep.errors import SchemaError

SCHEMA_VERSION = 1
POLICIES_BAD_INPUT = ("error", "skip")
POLICIES_CONFLICT = ("error", "replace")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
TIME_MIN_DEFAULT = datetime(1900, 1, 1)
SCHEMA_KEYS = {
    "schema_version": "int (1)",
    "encoding": "text encoding of the files, e.g. utf-8",
    "delimiter": "one character",
    "missing_tokens": "list of strings meaning 'missing' (in every column)",
    "time": "{year, month, day, hour} column names, or {column, format}; "
    "optional min, max: the plausible window (default 1900-01-01 .. one year from now)",
    "station": "{column: NAME} or {from_filename: REGEX with (?P<station>...)}",
    "numeric": "list of {name, column?, unit?, missing_tokens?, valid_range?, fill_hours?}",
    "categorical": "list of {name, column?, encoding, missing_tokens?, fill_hours?}",
    "targets": "list of numeric feature names",
    "ignore_columns": "list of column names to drop",
    "gap_fill_hours": "int >= 0: forward-fill gaps up to this many hours in the reader",
    "on_bad_input": f"one of {list(POLICIES_BAD_INPUT)}",
    "on_conflict": f"one of {list(POLICIES_CONFLICT)}",
}
NUMERIC_KEYS = {"name", "column", "unit", "missing_tokens", "valid_range", "fill_hours"}
CATEGORICAL_KEYS = {"name", "column", "encoding", "missing_tokens", "fill_hours"}
CITY_KEYS = {
    "stations": "[STATION, ...]",
    "description": "TEXT",
    "files": "[GLOB, ...] input file names of this city (needed for columns/extra/ignore_columns "
    "unless the station comes from the file name)",
    "columns": "{SCHEMA_COLUMN: THIS_CITY'S_COLUMN or null (absent: all missing)}",
    "ignore_columns": "[COLUMN, ...] this city's columns to drop",
    "extra": "[{name, column?, unit?, missing_tokens?, valid_range?, fill_hours?}] city-only features "
    "(stored, not fed to the shared model)",
}


@dataclass(frozen=True)
class NumericSpec:
    name: str
    column: str
    unit: str
    missing_tokens: frozenset[str]  # the file-wide tokens and the column's own
    valid_range: tuple[float, float] | None  # outside -> out_of_range (missing or an error)
    fill_hours: int


@dataclass(frozen=True)
class CategoricalSpec:
    name: str
    column: str
    encoding: Encoding
    missing_tokens: frozenset[str]
    fill_hours: int

    @property
    def outputs(self) -> list[str]:
        return self.encoding.outputs(self.name)


@dataclass(frozen=True)
class TimeSpec:
    min_s: int  # plausible window [min_s, max_s], unix seconds of the local clock read as UTC
    max_s: int
    year: str | None = None
    month: str | None = None
    day: str | None = None
    hour: str | None = None
    column: str | None = None
    format: str | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        if self.column is not None:
            return (self.column,)
        return (self.year, self.month, self.day, self.hour)  # type: ignore[return-value]

    def window(self) -> str:
        def fmt(t: int) -> str:
            return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")

        return f"{fmt(self.min_s)} .. {fmt(self.max_s)}"


@dataclass(frozen=True)
class Feature:
    """One stored column of a city's shards, as its manifest lists it."""

    name: str
    unit: str
    fill_hours: int
    city_only: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "fill_hours": self.fill_hours,
            "city_only": self.city_only,
        }


@dataclass(frozen=True)
class Schema:
    path: Path
    raw: dict[str, Any]
    encoding: str
    delimiter: str
    missing_tokens: tuple[str, ...]
    time: TimeSpec
    station: StationSpec
    numeric: tuple[NumericSpec, ...]
    categorical: tuple[CategoricalSpec, ...]
    targets: tuple[str, ...]
    ignore_columns: tuple[str, ...]
    gap_fill_hours: int
    on_bad_input: str
    on_conflict: str

    @property
    def features(self) -> list[Feature]:
        """The shared features: numeric ones, then the outputs of each categorical column."""
        return [Feature(n.name, n.unit, n.fill_hours) for n in self.numeric] + [
            Feature(o, "1", c.fill_hours) for c in self.categorical for o in c.outputs
        ]

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def key_columns(self) -> list[str]:
        """Time and station columns: every input must have them (under its city's names)."""
        return list(self.time.columns) + ([self.station.column] if self.station.column else [])

    @property
    def feature_columns(self) -> list[str]:
        return [n.column for n in self.numeric] + [c.column for c in self.categorical]


@dataclass(frozen=True)
class StationSpec:
    column: str | None = None
    from_filename: re.Pattern[str] | None = None


@dataclass(frozen=True)
class CitySpec:
    name: str
    stations: list[str]  # station ids are positions in this list
    files: tuple[str, ...] = ()
    columns: dict[str, str | None] = field(default_factory=dict)
    ignore_columns: tuple[str, ...] = ()
    extra: tuple[NumericSpec, ...] = ()

    def column(self, schema_column: str) -> str | None:
        """This city's name for a schema column (None: the city has no such column)."""
        return self.columns.get(schema_column, schema_column)


@dataclass(frozen=True)
class Cities:
    path: Path
    raw: dict[str, Any]
    specs: dict[str, CitySpec]

    @property
    def stations(self) -> dict[str, list[str]]:
        """city -> stations, in file order (station ids are positions)."""
        return {c: s.stations for c, s in self.specs.items()}

    @property
    def city_of(self) -> dict[str, str]:
        return {s: c for c, spec in self.specs.items() for s in spec.stations}

    def features(self, schema: Schema, city: str) -> list[Feature]:
        """What the city's shards store: the shared features, then its city-only extras."""
        extra = [Feature(e.name, e.unit, e.fill_hours, city_only=True) for e in self.specs[city].extra]
        return schema.features + extra

    def city_of_file(self, path: Path) -> str | None:
        """The city whose `files` patterns match this input's name (None: no pattern matches)."""
        hits = [c for c, s in self.specs.items() if any(fnmatch.fnmatch(path.name, g) for g in s.files)]
        if len(hits) > 1:
            raise SchemaError(f"{self.path}: input {path.name} matches the files patterns of cities {hits}")
        return hits[0] if hits else None


def _read_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = safe_load_unique(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise SchemaError(f"{path}: is a folder, expected a YAML file") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f":{mark.line + 1}" if mark is not None else ""
        raise SchemaError(f"{path}{where}: not valid YAML: {exc.problem or exc.context}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _str_list(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SchemaError.at(path, key, value, "a list of strings")
    return tuple(value)


def _entries(path: Path, key: str, value: Any, allowed: set[str]) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise SchemaError.at(path, key, value, "a list of mappings")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise SchemaError.at(path, f"{key}[{i}]", entry, "a mapping with a string 'name'")
        extra = set(entry) - allowed
        if extra:
            raise SchemaError.at(path, f"{key}[{i}].{sorted(extra)[0]}", entry, f"keys {sorted(allowed)}")
        out.append(entry)
    return out


def _hours(path: Path, key: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SchemaError.at(path, key, value, "an integer >= 0 (hours)")
    return value


def _instant(path: Path, key: str, value: Any) -> int:
    """A time bound: a YAML date/datetime or an ISO string -> unix seconds (local clock read as UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise SchemaError.at(path, key, value, "a date like 1990-01-01 or 1990-01-01 00:00") from None
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if not isinstance(value, datetime):
        raise SchemaError.at(path, key, value, "a date like 1990-01-01 or 1990-01-01 00:00")
    return int(value.replace(tzinfo=UTC).timestamp())


def _time_spec(path: Path, value: Any) -> TimeSpec:
    if not isinstance(value, dict):
        raise SchemaError.at(path, "time", value, SCHEMA_KEYS["time"])
    window = {k: value[k] for k in ("min", "max") if k in value}
    columns = {k: v for k, v in value.items() if k not in window}
    if not all(isinstance(v, str) for v in columns.values()):
        raise SchemaError.at(path, "time", value, SCHEMA_KEYS["time"])
    now = datetime.now(UTC).replace(tzinfo=None, minute=0, second=0, microsecond=0)
    next_year = now + timedelta(days=366)
    lo = _instant(path, "time.min", window.get("min", TIME_MIN_DEFAULT))
    hi = _instant(path, "time.max", window.get("max", next_year))
    if lo >= hi:
        first = datetime.fromtimestamp(lo, UTC).strftime("%Y-%m-%d %H:%M")
        raise SchemaError.at(
            path, "time.max", str(window.get("max", next_year)), f"a time after time.min ({first})"
        )
    if set(columns) == {"year", "month", "day", "hour"}:
        return TimeSpec(lo, hi, **columns)
    if set(columns) == {"column", "format"}:
        return TimeSpec(lo, hi, column=columns["column"], format=columns["format"])
    raise SchemaError.at(path, "time", value, SCHEMA_KEYS["time"])


def _station_spec(path: Path, value: Any) -> StationSpec:
    if isinstance(value, dict) and set(value) == {"column"} and isinstance(value["column"], str):
        return StationSpec(column=value["column"])
    if isinstance(value, dict) and set(value) == {"from_filename"}:
        try:
            pattern = re.compile(str(value["from_filename"]))
        except re.error as exc:
            pattern = value["from_filename"]
            raise SchemaError.at(path, "station.from_filename", pattern, f"a regex ({exc})") from None
        if "station" not in pattern.groupindex:
            raise SchemaError.at(
                path, "station.from_filename", pattern.pattern, "a regex with a (?P<station>...) group"
            )
        return StationSpec(from_filename=pattern)
    raise SchemaError.at(path, "station", value, SCHEMA_KEYS["station"])


def _choice(path: Path, key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SchemaError.at(path, key, value, f"one of {list(allowed)}")
    return value


def _valid_range(path: Path, key: str, value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    allowed = "[LOW, HIGH] with LOW < HIGH (null = an open end)"
    if not isinstance(value, list) or len(value) != 2:
        raise SchemaError.at(path, key, value, allowed)
    lo, hi = (-math.inf if value[0] is None else value[0]), (math.inf if value[1] is None else value[1])
    if any(isinstance(b, bool) or not isinstance(b, (int, float)) for b in (lo, hi)) or not lo < hi:
        raise SchemaError.at(path, key, value, allowed)
    return float(lo), float(hi)


def _tokens(path: Path, key: str, entry: dict[str, Any], shared: tuple[str, ...]) -> frozenset[str]:
    return frozenset(shared) | frozenset(_str_list(path, key, entry.get("missing_tokens", [])))


def numeric_specs(
    path: Path, key: str, value: Any, shared_tokens: tuple[str, ...], default_fill: int
) -> tuple[NumericSpec, ...]:
    """`numeric` entries of a schema, or `extra` entries of a city."""
    out = []
    for i, e in enumerate(_entries(path, key, value, NUMERIC_KEYS)):
        out.append(
            NumericSpec(
                name=e["name"],
                column=str(e.get("column", e["name"])),
                unit=str(e.get("unit", "")),
                missing_tokens=_tokens(path, f"{key}[{i}].missing_tokens", e, shared_tokens),
                valid_range=_valid_range(path, f"{key}[{i}].valid_range", e.get("valid_range")),
                fill_hours=(
                    _hours(path, f"{key}[{i}].fill_hours", e["fill_hours"])
                    if "fill_hours" in e
                    else default_fill
                ),
            )
        )
    return tuple(out)


def load_schema(path: str | Path) -> Schema:
    """Parse and validate a schema YAML; raises SchemaError naming the file, key and value."""
    path = Path(path)
    raw = _read_yaml(path)
    unknown = set(raw) - set(SCHEMA_KEYS)
    if unknown:
        key = sorted(unknown)[0]
        raise SchemaError(f"{path}: unknown key '{key}'; allowed keys: {', '.join(SCHEMA_KEYS)}")
    for key in ("time", "station", "numeric", "targets"):
        if key not in raw:
            raise SchemaError(f"{path}: missing required key '{key}' ({SCHEMA_KEYS[key]})")
    if raw.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
        raise SchemaError.at(path, "schema_version", raw["schema_version"], f"{SCHEMA_VERSION}")
    delimiter = raw.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise SchemaError.at(path, "delimiter", delimiter, SCHEMA_KEYS["delimiter"])
    encoding = raw.get("encoding", "utf-8")
    try:
        "".encode(encoding)
    except (LookupError, TypeError):
        raise SchemaError.at(path, "encoding", encoding, SCHEMA_KEYS["encoding"]) from None
    tokens = _str_list(path, "missing_tokens", raw.get("missing_tokens", ["NA", ""]))
    gap = _hours(path, "gap_fill_hours", raw.get("gap_fill_hours", 3))
    numeric = numeric_specs(path, "numeric", raw["numeric"], tokens, gap)
    categorical = []
    for i, e in enumerate(_entries(path, "categorical", raw.get("categorical", []), CATEGORICAL_KEYS)):
        own = _tokens(path, f"categorical[{i}].missing_tokens", e, tokens)
        if "encoding" not in e:
            raise SchemaError.at(path, f"categorical.{e['name']}.encoding", None, ENCODINGS_ALLOWED)
        categorical.append(
            CategoricalSpec(
                name=e["name"],
                column=str(e.get("column", e["name"])),
                encoding=parse_encoding(path, f"categorical.{e['name']}.encoding", e["encoding"], own),
                missing_tokens=own,
                fill_hours=_hours(path, f"categorical[{i}].fill_hours", e.get("fill_hours", gap)),
            )
        )
    names = [n.name for n in numeric] + [o for c in categorical for o in c.outputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes or not numeric:
        raise SchemaError.at(path, "numeric", dupes or [], "at least one feature, all feature names unique")
    targets = _str_list(path, "targets", raw["targets"])
    for t in targets:
        if t not in {n.name for n in numeric}:
            allowed = f"a numeric feature name, one of {[n.name for n in numeric]}"
            raise SchemaError.at(path, "targets", t, allowed)
    if not targets:
        raise SchemaError.at(path, "targets", [], "at least one numeric feature name")
    return Schema(
        path=path,
        raw=raw,
        encoding=encoding,
        delimiter=delimiter,
        missing_tokens=tokens,
        time=_time_spec(path, raw["time"]),
        station=_station_spec(path, raw["station"]),
        numeric=numeric,
        categorical=tuple(categorical),
        targets=targets,
        ignore_columns=_str_list(path, "ignore_columns", raw.get("ignore_columns", [])),
        gap_fill_hours=gap,
        on_bad_input=_choice(path, "on_bad_input", raw.get("on_bad_input", "error"), POLICIES_BAD_INPUT),
        on_conflict=_choice(path, "on_conflict", raw.get("on_conflict", "error"), POLICIES_CONFLICT),
    )


def _safe(path: Path, key: str, name: Any, what: str) -> str:
    if not isinstance(name, str) or not SAFE_NAME.match(name):
        raise SchemaError.at(path, key, name, f"a {what} name of letters, digits, '_', '-', '.'")
    return name


def _city_columns(path: Path, key: str, value: Any) -> dict[str, str | None]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and (v is None or isinstance(v, str)) for k, v in value.items()
    ):
        raise SchemaError.at(path, key, value, CITY_KEYS["columns"])
    return dict(value)


def load_cities(path: str | Path) -> Cities:
    """Parse and validate a cities YAML: `cities: {NAME: {stations: [...], description?, files?, ...}}`."""
    path = Path(path)
    raw = _read_yaml(path)
    if set(raw) != {"cities"} or not isinstance(raw["cities"], dict) or not raw["cities"]:
        raise SchemaError(
            f"{path}: expected exactly one top-level key 'cities' mapping city names to stations"
        )
    specs: dict[str, CitySpec] = {}
    seen: dict[str, str] = {}
    for city, entry in raw["cities"].items():
        _safe(path, "cities", city, "city")
        if not isinstance(entry, dict) or set(entry) - set(CITY_KEYS) or "stations" not in entry:
            allowed = f"a mapping with stations and optionally {', '.join(list(CITY_KEYS)[1:])}"
            raise SchemaError.at(path, f"cities.{city}", entry, allowed)
        names = _str_list(path, f"cities.{city}.stations", entry["stations"])
        for s in names:
            _safe(path, f"cities.{city}.stations", s, "station")
            if s in seen:
                raise SchemaError.at(
                    path, f"cities.{city}.stations", s, f"each station in one city (also in '{seen[s]}')"
                )
            seen[s] = city
        if not names:
            raise SchemaError.at(path, f"cities.{city}.stations", [], "at least one station")
        if not isinstance(entry.get("description", ""), str):
            raise SchemaError.at(path, f"cities.{city}.description", entry["description"], "a text")
        specs[city] = CitySpec(
            name=city,
            stations=list(names),
            files=_str_list(path, f"cities.{city}.files", entry.get("files", [])),
            columns=_city_columns(path, f"cities.{city}.columns", entry.get("columns", {})),
            ignore_columns=_str_list(path, f"cities.{city}.ignore_columns", entry.get("ignore_columns", [])),
            # a city's extras take only their own missing tokens and fill hours (checked against the schema)
            extra=numeric_specs(path, f"cities.{city}.extra", entry.get("extra", []), (), -1),
        )
    return Cities(path=path, raw=raw, specs=specs)


def bind(schema: Schema, cities: Cities) -> Cities:
    """Check a cities file against the schema it is used with; extras inherit the schema's defaults."""
    bound = {}
    for city, spec in cities.specs.items():
        key = f"cities.{city}"
        for col, mine in spec.columns.items():
            if col not in schema.key_columns + schema.feature_columns:
                allowed = f"a column of the schema, one of {schema.key_columns + schema.feature_columns}"
                raise SchemaError.at(cities.path, f"{key}.columns", col, allowed)
            if mine is None and col in schema.key_columns:
                allowed = "a column name (time and station columns cannot be absent)"
                raise SchemaError.at(cities.path, f"{key}.columns.{col}", mine, allowed)
        names = set(schema.feature_names)
        extra = []
        for e in spec.extra:
            if e.name in names:
                allowed = "a feature name the schema does not use, each extra once"
                raise SchemaError.at(cities.path, f"{key}.extra", e.name, allowed)
            names.add(e.name)
            extra.append(
                NumericSpec(
                    e.name,
                    e.column,
                    e.unit,
                    e.missing_tokens | frozenset(schema.missing_tokens),
                    e.valid_range,
                    schema.gap_fill_hours if e.fill_hours < 0 else e.fill_hours,
                )
            )
        own_columns = spec.columns or spec.extra or spec.ignore_columns
        if own_columns and not spec.files and schema.station.from_filename is None:
            raise SchemaError(
                f"{cities.path}: key '{key}': columns/extra/ignore_columns need `files: [GLOB, ...]` "
                f"naming this city's input files, because the schema takes the station from column "
                f"{schema.station.column!r} (a file's columns are known before its rows)"
            )
        bound[city] = CitySpec(
            city, spec.stations, spec.files, spec.columns, spec.ignore_columns, tuple(extra)
        )
    return Cities(cities.path, cities.raw, bound)
