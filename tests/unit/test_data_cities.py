"""Columns that differ per city: a city's own names for the schema's columns (or none: missing),
its city-only extras (stored, not model inputs), its own dropped columns; files by pattern."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crosscity.data_prep.dataset import load_manifest
from crosscity.data_prep.errors import InputError
from crosscity.data_prep.prepare import prepare
from crosscity.data_prep.shards import read_shard
from tests.helpers.corpus import CORPUS

CITIES = """cities:
  a:
    stations: [S1]
    files: ["a_*.csv"]
    columns: {PM2.5: "pm 2.5", TEMP: null}
    extra: [{name: noise, column: "noise dB", unit: dB, valid_range: [0, 200]}]
    ignore_columns: [operator]
  b: {stations: [S2]}
"""


def write(folder: Path, name: str, header: str, rows: list[str]) -> Path:
    path = folder / name
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, list[Path]]:
    (tmp_path / "cities.yaml").write_text(CITIES)
    a = write(
        tmp_path,
        "a_export.csv",
        'year,month,day,hour,"pm 2.5",wd,station,"noise dB",operator',
        [f"2021,1,1,{h},{10 + h},NE,S1,{50 + h},x" for h in range(6)],
    )
    b = write(
        tmp_path,
        "b_export.csv",
        "year,month,day,hour,PM2.5,TEMP,wd,station",
        [f"2021,1,1,{h},{20 + h},{h / 2},cv,S2" for h in range(6)],
    )
    return tmp_path / "cities.yaml", [a, b]


def test_a_city_maps_its_own_columns_and_keeps_its_extras(inputs, tmp_path: Path) -> None:
    cities, files = inputs
    report = prepare(CORPUS / "schema.yaml", cities, tmp_path / "data", files, progress=False)
    a, b = load_manifest(tmp_path / "data" / "a"), load_manifest(tmp_path / "data" / "b")
    assert [f["name"] for f in a["features"]] == ["pm25", "temp", "wd_sin", "wd_cos", "wd_calm", "noise"]
    assert [f["name"] for f in b["features"]] == ["pm25", "temp", "wd_sin", "wd_cos", "wd_calm"]
    assert a["features"][-1]["city_only"] and not any(f["city_only"] for f in b["features"])
    rows = read_shard(tmp_path / "data" / "a" / a["shards"][0]["file"])
    np.testing.assert_array_equal(rows.values[:, 0], np.arange(10, 16))  # "pm 2.5" read as pm25
    assert not rows.mask[:, 1].any()  # city a has no TEMP column: all missing
    np.testing.assert_array_equal(rows.values[:, 5], np.arange(50, 56))
    assert report.plausibility["noise"]["max"] == 55


def test_a_file_of_a_city_may_hold_only_its_stations(inputs, tmp_path: Path) -> None:
    cities, (a, _) = inputs
    wrong = write(tmp_path, "a_more.csv", a.read_text().splitlines()[0], ["2021,1,2,0,1,NE,S2,3,x"])
    with pytest.raises(
        InputError, match=r"a_more.csv:2: station 'S2' is not a station of city a, whose file"
    ):
        prepare(CORPUS / "schema.yaml", cities, tmp_path / "data", [a, wrong], progress=False)
    assert not (tmp_path / "data").exists()


def test_the_shared_names_in_a_city_file_are_unknown_columns(inputs, tmp_path: Path) -> None:
    cities, (_, b) = inputs
    shared = write(tmp_path, "a_shared.csv", b.read_text().splitlines()[0], ["2021,1,1,0,1,2,NE,S1"])
    with pytest.raises(InputError, match=r"a_shared.csv:1: unknown column 'PM2.5'; city a's files have"):
        prepare(CORPUS / "schema.yaml", cities, tmp_path / "data", [shared, b], progress=False)
