"""Schema and cities files: how raw station CSVs map onto features, and which stations form a city.

Both are YAML, validated at load so that a typo fails before any data is read (docs/data_format.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crosscity.data_prep.errors import SchemaError

SCHEMA_VERSION = 1
CATEGORICAL_ENCODINGS = ("compass16", "degrees")
POLICIES_BAD_INPUT = ("error", "skip")
POLICIES_CONFLICT = ("error", "replace")
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SCHEMA_KEYS = {
    "schema_version": "int (1)",
    "encoding": "text encoding of the files, e.g. utf-8",
    "delimiter": "one character",
    "missing_tokens": "list of strings meaning 'missing'",
    "time": "{year, month, day, hour} column names, or {column, format}",
    "station": "{column: NAME} or {from_filename: REGEX with (?P<station>...)}",
    "numeric": "list of {name, column?, unit?}",
    "categorical": f"list of {{name, column?, encoding: one of {list(CATEGORICAL_ENCODINGS)}}}",
    "targets": "list of numeric feature names",
    "ignore_columns": "list of column names to drop",
    "gap_fill_hours": "int >= 0: forward-fill gaps up to this many hours in the reader",
    "on_bad_input": f"one of {list(POLICIES_BAD_INPUT)}",
    "on_conflict": f"one of {list(POLICIES_CONFLICT)}",
}


@dataclass(frozen=True)
class NumericSpec:
    name: str
    column: str
    unit: str


@dataclass(frozen=True)
class CategoricalSpec:
    name: str
    column: str
    encoding: str

    @property
    def outputs(self) -> tuple[str, str]:
        return (f"{self.name}_sin", f"{self.name}_cos")


@dataclass(frozen=True)
class TimeSpec:
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


@dataclass(frozen=True)
class StationSpec:
    column: str | None = None
    from_filename: re.Pattern[str] | None = None


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
    def feature_names(self) -> list[str]:
        """Stored feature columns: numeric features, then sin/cos of each categorical angle."""
        return [n.name for n in self.numeric] + [o for c in self.categorical for o in c.outputs]

    @property
    def units(self) -> list[str]:
        return [n.unit for n in self.numeric] + ["1" for c in self.categorical for _ in c.outputs]

    @property
    def known_columns(self) -> set[str]:
        cols = (
            set(self.time.columns) | {n.column for n in self.numeric} | {c.column for c in self.categorical}
        )
        if self.station.column:
            cols.add(self.station.column)
        return cols | set(self.ignore_columns)


@dataclass(frozen=True)
class Cities:
    path: Path
    raw: dict[str, Any]
    stations: dict[str, list[str]]  # city -> stations, in file order (station ids are positions)

    @property
    def city_of(self) -> dict[str, str]:
        return {s: c for c, ss in self.stations.items() for s in ss}


def _fail(path: Path, key: str, value: Any, allowed: str) -> SchemaError:
    return SchemaError(f"{path}: key '{key}': value {value!r} not allowed; expected {allowed}")


def _read_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaError(f"{path}: file not found") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _str_list(path: Path, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _fail(path, key, value, "a list of strings")
    return tuple(value)


def _entries(path: Path, key: str, value: Any, allowed: set[str]) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise _fail(path, key, value, "a list of mappings")
    out = []
    for i, entry in enumerate(value):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise _fail(path, f"{key}[{i}]", entry, "a mapping with a string 'name'")
        extra = set(entry) - allowed
        if extra:
            raise _fail(path, f"{key}[{i}].{sorted(extra)[0]}", entry, f"keys {sorted(allowed)}")
        out.append(entry)
    return out


def _time_spec(path: Path, value: Any) -> TimeSpec:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _fail(path, "time", value, SCHEMA_KEYS["time"])
    if set(value) == {"year", "month", "day", "hour"}:
        return TimeSpec(**value)
    if set(value) == {"column", "format"}:
        return TimeSpec(column=value["column"], format=value["format"])
    raise _fail(path, "time", value, SCHEMA_KEYS["time"])


def _station_spec(path: Path, value: Any) -> StationSpec:
    if isinstance(value, dict) and set(value) == {"column"} and isinstance(value["column"], str):
        return StationSpec(column=value["column"])
    if isinstance(value, dict) and set(value) == {"from_filename"}:
        try:
            pattern = re.compile(str(value["from_filename"]))
        except re.error as exc:
            raise _fail(path, "station.from_filename", value["from_filename"], f"a regex ({exc})") from None
        if "station" not in pattern.groupindex:
            raise _fail(
                path, "station.from_filename", pattern.pattern, "a regex with a (?P<station>...) group"
            )
        return StationSpec(from_filename=pattern)
    raise _fail(path, "station", value, SCHEMA_KEYS["station"])


def _choice(path: Path, key: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise _fail(path, key, value, f"one of {list(allowed)}")
    return value


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
        raise _fail(path, "schema_version", raw["schema_version"], f"{SCHEMA_VERSION}")
    delimiter = raw.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise _fail(path, "delimiter", delimiter, SCHEMA_KEYS["delimiter"])
    encoding = raw.get("encoding", "utf-8")
    try:
        "".encode(encoding)
    except (LookupError, TypeError):
        raise _fail(path, "encoding", encoding, SCHEMA_KEYS["encoding"]) from None
    numeric = tuple(
        NumericSpec(e["name"], str(e.get("column", e["name"])), str(e.get("unit", "")))
        for e in _entries(path, "numeric", raw["numeric"], {"name", "column", "unit"})
    )
    categorical = tuple(
        CategoricalSpec(
            e["name"],
            str(e.get("column", e["name"])),
            _choice(path, f"categorical.{e['name']}.encoding", e.get("encoding"), CATEGORICAL_ENCODINGS),
        )
        for e in _entries(path, "categorical", raw.get("categorical", []), {"name", "column", "encoding"})
    )
    names = [n.name for n in numeric] + [o for c in categorical for o in c.outputs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes or not numeric:
        raise _fail(path, "numeric", dupes or [], "at least one feature, all feature names unique")
    targets = _str_list(path, "targets", raw["targets"])
    for t in targets:
        if t not in {n.name for n in numeric}:
            raise _fail(path, "targets", t, f"a numeric feature name, one of {[n.name for n in numeric]}")
    if not targets:
        raise _fail(path, "targets", [], "at least one numeric feature name")
    gap = raw.get("gap_fill_hours", 3)
    if not isinstance(gap, int) or isinstance(gap, bool) or gap < 0:
        raise _fail(path, "gap_fill_hours", gap, SCHEMA_KEYS["gap_fill_hours"])
    return Schema(
        path=path,
        raw=raw,
        encoding=encoding,
        delimiter=delimiter,
        missing_tokens=_str_list(path, "missing_tokens", raw.get("missing_tokens", ["NA", ""])),
        time=_time_spec(path, raw["time"]),
        station=_station_spec(path, raw["station"]),
        numeric=numeric,
        categorical=categorical,
        targets=targets,
        ignore_columns=_str_list(path, "ignore_columns", raw.get("ignore_columns", [])),
        gap_fill_hours=gap,
        on_bad_input=_choice(path, "on_bad_input", raw.get("on_bad_input", "error"), POLICIES_BAD_INPUT),
        on_conflict=_choice(path, "on_conflict", raw.get("on_conflict", "error"), POLICIES_CONFLICT),
    )


def load_cities(path: str | Path) -> Cities:
    """Parse and validate a cities YAML: `cities: {NAME: {stations: [...], description?: str}}`."""
    path = Path(path)
    raw = _read_yaml(path)
    if set(raw) != {"cities"} or not isinstance(raw["cities"], dict) or not raw["cities"]:
        raise SchemaError(
            f"{path}: expected exactly one top-level key 'cities' mapping city names to stations"
        )
    stations: dict[str, list[str]] = {}
    seen: dict[str, str] = {}
    for city, entry in raw["cities"].items():
        if not isinstance(city, str) or not SAFE_NAME.match(city):
            raise _fail(path, "cities", city, "a city name of letters, digits, '_', '-', '.'")
        if not isinstance(entry, dict) or set(entry) - {"stations", "description"} or "stations" not in entry:
            raise _fail(path, f"cities.{city}", entry, "{stations: [NAME, ...], description?: TEXT}")
        names = _str_list(path, f"cities.{city}.stations", entry["stations"])
        for s in names:
            if not SAFE_NAME.match(s):
                raise _fail(
                    path, f"cities.{city}.stations", s, "a station name of letters, digits, '_', '-', '.'"
                )
            if s in seen:
                raise _fail(
                    path, f"cities.{city}.stations", s, f"each station in one city (also in '{seen[s]}')"
                )
            seen[s] = city
        if not names:
            raise _fail(path, f"cities.{city}.stations", [], "at least one station")
        stations[city] = list(names)
    return Cities(path=path, raw=raw, stations=stations)
