"""Export B, a second real format, prepared with a schema and a cities file only: calm wind is its
own state, the -9999 / 999990 sentinels are missing (declared), each city keeps its own station
columns without feeding them to the shared model; undeclared sentinels are flagged (--strict: exit 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crosscity.data_prep.cli import main
from crosscity.data_prep.dataset import load_manifest
from crosscity.data_prep.prepare import PrepReport, prepare
from crosscity.train.data.windows import CityWindows
from tests.helpers.export_b import CITIES, SCHEMA, STATIONS, Truth, station_rows, write_export

HOURS = 600


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth, PrepReport]:
    folder = tmp_path_factory.mktemp("export_b")
    truth = write_export(folder, HOURS)
    report = prepare(SCHEMA, CITIES, folder / "data", truth.files, progress=False)
    return folder / "data", truth, report


def rows_of(root: Path, city: str, station: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    names, values, mask = station_rows(root, city, station)
    assert len(values) == HOURS  # every hour kept: no row dropped for a sentinel or a calm hour
    return names, values, mask


def test_calm_is_its_own_state_not_missing(export) -> None:
    root, truth, _ = export
    for city, stations in STATIONS.items():
        for station in stations:
            names, values, mask = rows_of(root, city, station)
            s, c, calm = (names.index(n) for n in ("wd_sin", "wd_cos", "wd_calm"))
            at = truth.calm[station]
            assert len(at) > 20
            assert mask[at][:, [s, c, calm]].all()  # observed, so the reader never forward-fills it
            np.testing.assert_array_equal(values[at][:, [s, c, calm]], np.tile([0.0, 0.0, 1.0], (len(at), 1)))
            moving = truth.quadrant[station]
            assert (values[moving, calm] == 0).all() and mask[moving, calm].all()
            np.testing.assert_allclose(np.abs(values[moving][:, [s, c]]), np.sqrt(0.5), rtol=1e-6)
    assert load_manifest(root / "hills")["features"][10] == {
        "name": "wd_calm",
        "unit": "1",
        "fill_hours": 0,
        "city_only": False,
    }


def test_sentinels_are_missing_and_counted(export) -> None:
    root, truth, report = export
    assert len(truth.sentinel) == 3
    for (station, feature), at in truth.sentinel.items():
        city = next(c for c, ss in STATIONS.items() if station in ss)
        names, values, mask = rows_of(root, city, station)
        assert not mask[at, names.index(feature)].any(), (station, feature)
        stats = load_manifest(root / city)["stats"][feature]
        assert stats["min"] > -100 and stats["max"] < 2000  # no sentinel reached the statistics
    assert (
        report.skipped["out_of_range"] == report.blanked["PRES"] == len(truth.sentinel[("Huairou", "PRES")])
    )
    assert report.flags == []


def test_city_only_columns_are_kept_but_not_model_inputs(export) -> None:
    root, _, _ = export
    extras = {c: [f["name"] for f in load_manifest(root / c)["features"] if f["city_only"]] for c in STATIONS}
    assert extras == {"riverside": ["O3"], "hills": ["river_level"], "harbour": ["SO2"]}
    names, values, mask = rows_of(root, "hills", "Huairou")
    assert mask[:, names.index("river_level")].all() and values[:, names.index("river_level")].min() > 1
    inputs = {c: CityWindows(root / c, "train", past=12, horizon=6).feature_names for c in STATIONS}
    assert inputs["riverside"] == inputs["hills"] == inputs["harbour"]  # one shared model
    assert "O3" not in inputs["riverside"] and "wd_calm" in inputs["riverside"]


def test_undeclared_sentinels_are_flagged_and_strict_refuses(tmp_path: Path, capsys) -> None:
    truth = write_export(tmp_path, 300)
    naive = tmp_path / "naive.yaml"
    naive.write_text(
        SCHEMA.read_text()
        .replace(', missing_tokens: ["-9999"]', "")
        .replace(", valid_range: [850, 1100]", "")
    )
    args = ["--schema", str(naive), "--cities", str(CITIES), "--quiet", *map(str, truth.files)]
    assert main(["--out", str(tmp_path / "strict"), "--strict", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--strict:" in err[0] and "a typical missing-value code" in err[0]
    assert not (tmp_path / "strict").exists()
    assert main(["--out", str(tmp_path / "lenient"), *args]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert {w.split(":")[2].strip() for w in warnings} == {"TEMP", "PRES"}, warnings
    assert any("value -9999" in w for w in warnings) and any("value 999990" in w for w in warnings)
