"""Export B (tests/fixtures/export_b): real Beijing rows rewritten into another network's format.

One file per city with its own station columns, "date time" stamps, wind reduced to quadrants with
`cv` (calm/variable: wind speed <= 0.5 m/s), and sentinels: -9999 for a not-measured TEMP in
riverside (and PM2.5 in harbour), 999990 for a not-measured PRES in hills. `Truth` records where
they are, for the assertions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crosscity.data_prep.dataset import load_manifest
from crosscity.data_prep.shards import read_shard
from tests.helpers.data import station_lines

FIXTURE = Path(__file__).parents[1] / "fixtures" / "export_b"
SCHEMA, CITIES = FIXTURE / "schema.yaml", FIXTURE / "cities.yaml"
QUADRANT = {
    p: q
    for q, ps in {
        "NE": "N NNE NE ENE",
        "SE": "E ESE SE SSE",
        "SW": "S SSW SW WSW",
        "NW": "W WNW NW NNW",
    }.items()
    for p in ps.split()
}
STATIONS = {
    "riverside": ("Changping", "Dingling"),
    "hills": ("Huairou", "Shunyi"),
    "harbour": ("Dongsi", "Tiantan"),
}
SHARED = ["date time", "site", "PM2.5", "PM10", "NO2", "CO", "TEMP", "PRES", "DEWP", "wind speed", "cbwd"]
HILLS = {"PM2.5": "pm25 (ug/m3)", "PM10": "pm10 (ug/m3)", "TEMP": "temperature"}  # hills' own names
HEADERS = {
    "riverside": [*SHARED, "O3", "operator"],
    "hills": [*(HILLS.get(c, c) for c in SHARED), "river level"],
    "harbour": [*SHARED, "SO2"],
}


@dataclass
class Truth:
    """Raw cells of the written files, by (station, row index)."""

    calm: dict[str, list[int]] = field(default_factory=dict)  # rows whose cbwd is cv
    quadrant: dict[str, list[int]] = field(default_factory=dict)  # rows with a direction code
    sentinel: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (station, feature) -> rows
    files: list[Path] = field(default_factory=list)


def _cells(city: str, station: str, k: int, f: list[str], truth: Truth) -> list[str]:
    """Row k of a station from Beijing fields f: No, year, month, day, hour, PM2.5, PM10, SO2, NO2, CO,
    O3, TEMP, PRES, DEWP, RAIN, wd, WSPM, station."""
    stamp = f"{f[1]}-{int(f[2]):02d}-{int(f[3]):02d} {int(f[4]):02d}:00"
    pm, temp, pres = f[5], f[11], f[12]
    if city == "riverside" and station == "Dingling" and k % 37 == 5:
        temp = "-9999"
        truth.sentinel.setdefault((station, "TEMP"), []).append(k)
    if city == "hills" and station == "Huairou" and k % 41 == 7:
        pres = "999990"
        truth.sentinel.setdefault((station, "PRES"), []).append(k)
    if city == "harbour" and station == "Tiantan" and k % 53 == 11:
        pm = "-9999"
        truth.sentinel.setdefault((station, "PM2.5"), []).append(k)
    wd = f[15].strip('"')
    speed = f[16]
    if wd == "NA" or speed == "NA":
        cbwd = "NA"
    elif float(speed) <= 0.5:
        cbwd = "cv"
        truth.calm.setdefault(station, []).append(k)
    else:
        cbwd = QUADRANT[wd]
        truth.quadrant.setdefault(station, []).append(k)
    row = [stamp, station, pm, f[6], f[8], f[9], temp, pres, f[13], speed, cbwd]
    extra = {
        "riverside": [f[10], "EPA"],
        "hills": [f"{1.5 + 0.02 * float(f[13] if f[13] != 'NA' else 0):.2f}"],
        "harbour": [f[7]],
    }
    return row + extra[city]


def write_export(folder: Path, hours: int) -> Truth:
    """One CSV per city (`<city>_stations.csv`), the first `hours` hours of each of its two stations."""
    truth = Truth()
    for city, stations in STATIONS.items():
        lines = [",".join(f'"{h}"' if " " in h else h for h in HEADERS[city])]
        for station in stations:
            for k, line in enumerate(station_lines(station)[1 : hours + 1]):
                lines.append(",".join(_cells(city, station, k, line.split(","), truth)))
        path = folder / f"{city}_stations.csv"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        truth.files.append(path)
    return truth


def station_rows(root: Path, city: str, station: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(stored feature names, values, mask) of one station's shards in time order: row k = hour k."""
    m = load_manifest(root / city)
    shards = sorted((s for s in m["shards"] if s["station"] == station), key=lambda s: s["time_min"])
    rows = [read_shard(root / city / s["file"]) for s in shards]
    values, mask = np.concatenate([r.values for r in rows]), np.concatenate([r.mask for r in rows])
    return [f["name"] for f in m["features"]], values, mask
