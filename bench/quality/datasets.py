"""The benchmark's datasets, prepared from the shipped Beijing CSVs with `crosscity prep`.

A split groups the 12 stations into cities; its pooled twin puts the very same (possibly thinned)
station data into one city. Stations and hours are identical, so a pooled model's windows of a
city's stations are exactly that city's windows.

- standard: the shipped grouping (data_prep/presets/beijing_cities.yaml).
- hard: cities of the most different stations (3 per city by mean PM2.5 of 2013-2017: the cleanest
  three, ... the most polluted three), and the cleanest city keeps only a tenth of its training
  hours: every value of the first 90% of each of its stations' training span is blanked (NA), so
  its windows there are dropped while validation and test spans stay those of every other city.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from crosscity.data_prep import cli as prep_cli
from crosscity.data_prep.datasets import beijing_files
from crosscity.train.data.windows import split_ranges

PRESETS = Path(prep_cli.__file__).parent / "presets"
TRAIN_FRACTION = 0.8  # CityWindows' default split fractions (0.8, 0.1, 0.1)
VALUE_COLUMNS = ("PM2.5", "PM10", "SO2", "NO2", "CO", "O3", "TEMP", "PRES", "DEWP", "RAIN", "wd", "WSPM")


@dataclass(frozen=True)
class Split:
    name: str
    cities: dict[str, list[str]]  # city -> stations
    keep_train: dict[str, float] = field(default_factory=dict)  # city -> share of its training hours kept

    def station_city(self) -> dict[str, str]:
        return {s: c for c, stations in self.cities.items() for s in stations}


def _shipped_cities() -> dict[str, list[str]]:
    spec = yaml.safe_load((PRESETS / "beijing_cities.yaml").read_text())["cities"]
    return {name: list(entry["stations"]) for name, entry in spec.items()}


STANDARD = Split("standard", _shipped_cities())
HARD = Split(
    "hard",
    {
        "clean": ["Dingling", "Huairou", "Changping"],
        "suburban": ["Shunyi", "Tiantan", "Aotizhongxin"],
        "urban": ["Guanyuan", "Wanliu", "Gucheng"],
        "core": ["Nongzhanguan", "Wanshouxigong", "Dongsi"],
    },
    keep_train={"clean": 0.1},
)
SPLITS = {s.name: s for s in (STANDARD, HARD)}
# --quick: two one-station cities on the first weeks of data (prep in a second)
QUICK = Split("quick", {"north": ["Dingling"], "centre": ["Dongsi"]})


def _station_file(station: str) -> Path:
    (path,) = (f for f in beijing_files() if f"_{station}_" in f.name)
    return path


def _station_csv(station: str, out: Path, rows: int, keep_train: float | None) -> Path:
    """The station's CSV, cut to its first `rows` hours (0 = all) and with the values of the first
    (1 - keep_train) of its training span blanked; the shipped file itself when neither applies."""
    if not rows and keep_train is None:
        return _station_file(station)
    with gzip.open(_station_file(station), "rt", encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    header, body = lines[0], lines[1 : 1 + rows] if rows else lines[1:]
    if keep_train is not None:
        columns = [c.strip('"') for c in header.split(",")]
        blank = [columns.index(c) for c in VALUE_COLUMNS]
        train_hi = split_ranges(len(body), 0, (TRAIN_FRACTION, 0.1, 0.1))["train"][1]
        for i in range(round(train_hi * (1 - keep_train))):
            cells = body[i].split(",")
            for j in blank:
                cells[j] = "NA"
            body[i] = ",".join(cells)
    path = out / f"{station}.csv"
    path.write_text("\n".join([header, *body]) + "\n", encoding="utf-8")
    return path


def prepare(split: Split, root: Path, rows: int = 0, pooled: bool = False) -> Path:
    """Prepare `split` (or its pooled twin: one city `all`) under root; reused when already there
    with the same specification. Returns the dataset folder."""
    name = f"{split.name}_pooled" if pooled else split.name
    out = root / name
    cities = {"all": [s for stations in split.cities.values() for s in stations]} if pooled else split.cities
    spec = {"cities": cities, "keep_train": split.keep_train, "rows": rows}
    stamp = root / f"{name}.spec.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == spec:
        return out
    raw = root / f"{name}_raw"
    raw.mkdir(parents=True, exist_ok=True)
    city_of = split.station_city()
    csvs = [
        _station_csv(station, raw, rows, split.keep_train.get(city_of[station]))
        for stations in cities.values()
        for station in stations
    ]
    cities_file = root / f"{name}_cities.yaml"
    cities_file.write_text(yaml.safe_dump({"cities": {c: {"stations": s} for c, s in cities.items()}}))
    args = ["--schema", str(PRESETS / "beijing_schema.yaml"), "--cities", str(cities_file), "--quiet"]
    if out.exists():
        raise FileExistsError(f"{out}: exists but was prepared from another specification; remove it")
    code = prep_cli.main([*args, "--out", str(out), *map(str, csvs)])
    if code != 0:
        raise RuntimeError(f"crosscity prep of the {name} dataset failed (exit {code})")
    stamp.write_text(json.dumps(spec))
    return out
