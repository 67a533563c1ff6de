"""Prep of real (cut) Beijing data: layout, manifest, statistics, verification, the full preset."""

from __future__ import annotations

import json
import re
import time

import h5py
import numpy as np
import pytest

from crosscity.data_prep.cli import main
from crosscity.data_prep.dataset import load_global_stats, load_manifest
from crosscity.data_prep.datasets import beijing_files
from crosscity.data_prep.errors import DatasetError
from crosscity.data_prep.prepare import prepare
from crosscity.data_prep.progress import Progress
from crosscity.data_prep.verify import full_check, quick_check
from tests.helpers.data import PRESET_SCHEMA, flip_byte, small_cities, small_inputs, station_lines

FEATURES = [
    "PM2.5",
    "PM10",
    "SO2",
    "NO2",
    "CO",
    "O3",
    "TEMP",
    "PRES",
    "DEWP",
    "RAIN",
    "WSPM",
    "wd_sin",
    "wd_cos",
]


@pytest.fixture
def small(tmp_path):
    inputs = small_inputs(tmp_path, rows=3000)
    report = prepare(PRESET_SCHEMA, small_cities(tmp_path), tmp_path / "data", inputs, progress=False)
    return tmp_path / "data", report


def test_layout_manifest_and_shards(small):
    root, report = small
    assert report.rows_read == report.rows_added == 9000
    assert report.cities == {
        "north": {"version": 1, "rows": 6000, "gaps": load_manifest(root / "north")["gaps"]},
        "centre": {"version": 1, "rows": 3000, "gaps": load_manifest(root / "centre")["gaps"]},
    }
    m = load_manifest(root / "north")
    assert [f["name"] for f in m["features"]] == FEATURES
    assert m["features"][0] == {"name": "PM2.5", "unit": "ug/m3", "fill_hours": 3, "city_only": False}
    # 3000 hours from 2013-03-01 stay inside 2013: one shard per station
    assert [(s["file"], s["rows"]) for s in m["shards"]] == [
        ("Changping_2013.v1.h5", 3000),
        ("Dingling_2013.v1.h5", 3000),
    ]
    assert m["time_span"] == [1362096000, 1362096000 + 2999 * 3600]  # 2013-03-01 00:00 UTC-naive
    with h5py.File(root / "north" / "Changping_2013.v1.h5", "r") as f:
        assert f.attrs["schema_version"] == 1 and f.attrs["station"] == "Changping"
        assert f["values"].dtype == np.float32 and f["values"].compression == "gzip"
        assert f["time"].dtype == np.int64 and f["mask"].shape == (3000, 13)
        pm25, observed = f["values"][:, 0], f["mask"][:, 0].astype(bool)
    raw = [line.split(",")[5] for line in station_lines("Changping")[1:3001]]
    assert int((~observed).sum()) == raw.count("NA")
    expected = np.array([float(v) for v in raw if v != "NA"], dtype=np.float32)
    np.testing.assert_array_equal(pm25[observed], expected)


def test_city_stats_match_the_raw_values(small):
    root, _ = small
    stats = load_manifest(root / "centre")["stats"]["TEMP"]
    raw = [line.split(",")[11] for line in station_lines("Dongsi")[1:3001]]
    values = np.array([float(v) for v in raw if v != "NA"], dtype=np.float32).astype(np.float64)
    assert stats["count"] == values.size and stats["missing"] == 3000 - values.size
    assert stats["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert stats["std"] == pytest.approx(values.std(), rel=1e-9)
    assert (stats["min"], stats["max"]) == (values.min(), values.max())


def test_verify_detects_a_flipped_byte_and_names_the_shard(small, capsys):
    root, _ = small
    assert main(["verify", str(root), "--full"]) == 0
    shard = root / "north" / "Dingling_2013.v1.h5"
    flip_byte(shard)
    for check in (quick_check, full_check):  # same size: the hash sees it, at either level
        with pytest.raises(DatasetError, match="Dingling_2013.v1.h5: sha256"):
            check(root / "north")
    capsys.readouterr()
    assert main(["verify", str(root), "--quick"]) == 1
    capsys.readouterr()
    assert main(["verify", str(root)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Dingling_2013.v1.h5" in err[0] and err[0].startswith("verify: FAILED")


def test_quick_check_sees_size_and_version_mismatch(small):
    root, _ = small
    shard = root / "centre" / "Dongsi_2013.v1.h5"
    with open(shard, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(DatasetError, match=r"Dongsi_2013.v1.h5: size \d+ bytes, manifest version 1 says"):
        quick_check(root / "centre")
    path = root / "north" / "manifest.v1.json"
    m = json.loads(path.read_text())
    m["schema_version"] = 99
    path.write_text(json.dumps(m))
    with pytest.raises(DatasetError, match="manifest.v1.json: sha256 does not match dataset.json"):
        quick_check(root / "north")


def test_prep_refuses_an_existing_dataset_with_exit_2(small, tmp_path, capsys):
    root, _ = small
    args = ["--schema", str(PRESET_SCHEMA), "--cities", str(tmp_path / "cities.yaml"), "--out", str(root)]
    assert main([*args, str(tmp_path / "Dongsi_0.csv")]) == 2
    assert "already holds a dataset (version 1) prepared from other inputs" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "x")]) == 2  # neither --schema/--cities nor --preset
    assert main(["verify", str(tmp_path / "nothing")]) == 1
    assert main(["--help"]) == 0
    assert "crosscity prep --preset beijing --out" in capsys.readouterr().out


def test_progress_lines_show_rows_rate_and_eta(capsys):
    meter = Progress("prep", total=400, every=0.0)
    meter.update(100, 5000)
    line = capsys.readouterr().err.strip()
    assert re.fullmatch(r"prep: 5000 rows, 25% of input, [\d,]+ rows/s, ETA \d+ s", line), line
    Progress("prep", total=400, enabled=False, every=0.0).update(100, 5000)
    assert capsys.readouterr().err == ""


def test_full_beijing_preset_prep_and_verify(tmp_path, capsys):
    start = time.process_time()  # CPU time: the shared test machine's load does not count
    assert main(["--preset", "beijing", "--out", str(tmp_path / "bj"), "--quiet"]) == 0
    assert time.process_time() - start < 30
    assert main(["verify", str(tmp_path / "bj"), "--full"]) == 0
    rows = {c: load_manifest(tmp_path / "bj" / c)["rows"] for c in ("north", "east", "west", "centre")}
    assert rows == {c: 3 * 35064 for c in rows}
    assert len(beijing_files()) == 12
    glob = load_global_stats(tmp_path / "bj")
    assert glob["cities"] == {"centre": 1, "east": 1, "north": 1, "west": 1}
    assert glob["stats"]["PM2.5"]["count"] + glob["stats"]["PM2.5"]["missing"] == 12 * 35064
