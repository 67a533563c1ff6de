"""A second, different export format prepared by writing only a schema and a cities file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from crosscity.data_prep.dataset import load_manifest
from crosscity.data_prep.encodings import COMPASS16
from crosscity.data_prep.prepare import prepare
from crosscity.data_prep.verify import verify_dataset
from crosscity.train.data.windows import CityWindows
from tests.helpers.data import station_lines

SCHEMA = r"""
schema_version: 1
encoding: latin-1
delimiter: ";"
missing_tokens: ["-999", ""]
time: {column: timestamp, format: "%Y-%m-%dT%H:%M"}
station: {from_filename: "^site-(?P<station>[A-Za-z]+)\\.csv$"}
numeric:
  - {name: pm25, column: "PM 2.5 (µg/m³)", unit: ug/m3}
  - {name: temperature, column: temp_c, unit: degC}
categorical:
  - {name: wind, column: wind_deg, encoding: degrees}
targets: [pm25]
ignore_columns: [operator]
gap_fill_hours: 2
"""
CITIES = """
cities:
  hills: {stations: [Huairou]}
  town: {stations: [Tiantan, Guanyuan], description: two urban sites}
"""


def convert(station: str, rows: int) -> tuple[list[str], np.ndarray]:
    """Real Beijing rows rewritten into the other format; returns the lines and the PM2.5 column."""
    out = ["timestamp;PM 2.5 (µg/m³);temp_c;wind_deg;operator"]
    pm = []
    for line in station_lines(station)[1 : rows + 1]:
        f = line.split(",")
        stamp = f"{f[1]}-{int(f[2]):02d}-{int(f[3]):02d}T{int(f[4]):02d}:00"
        wd = f[15].strip('"')
        deg = "-999" if wd == "NA" else str(COMPASS16[wd])
        out.append(
            ";".join([stamp, "-999" if f[5] == "NA" else f[5], "" if f[11] == "NA" else f[11], deg, "ops"])
        )
        pm.append(math.nan if f[5] == "NA" else float(f[5]))
    return out, np.array(pm)


def test_other_schema_without_code_change(tmp_path):
    (tmp_path / "schema.yaml").write_text(SCHEMA, encoding="utf-8")
    (tmp_path / "cities.yaml").write_text(CITIES, encoding="utf-8")
    inputs, pm = [], {}
    for station in ("Huairou", "Tiantan", "Guanyuan"):
        lines, pm[station] = convert(station, 1500)
        path = tmp_path / f"site-{station}.csv"
        path.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
        inputs.append(path)
    report = prepare(
        tmp_path / "schema.yaml", tmp_path / "cities.yaml", tmp_path / "data", inputs, progress=False
    )
    assert report.cities["town"]["rows"] == 3000 and report.cities["hills"]["rows"] == 1500
    verify_dataset(tmp_path / "data", "full")
    m = load_manifest(tmp_path / "data" / "town")
    assert [f["name"] for f in m["features"]] == ["pm25", "temperature", "wind_sin", "wind_cos"]
    assert m["stations"] == ["Tiantan", "Guanyuan"] and m["gap_fill_hours"] == 2
    observed = pm["Tiantan"][~np.isnan(pm["Tiantan"])]
    pooled = np.concatenate([observed, pm["Guanyuan"][~np.isnan(pm["Guanyuan"])]])
    assert m["stats"]["pm25"]["count"] == pooled.size
    assert m["stats"]["pm25"]["mean"] == pytest.approx(pooled.mean(), rel=1e-9)
    ds = CityWindows(tmp_path / "data" / "town", "train", past=12, horizon=6, target="pm25")
    x, y, y_mask = ds[0]
    assert x.shape == (12, 4 * 2 + 4) and ds.feature_names[ds.target_index] == "pm25"
    assert float(y_mask.sum()) > 0
