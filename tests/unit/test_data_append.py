"""Incremental append: idempotent, conflict policy, new versions, crash safety under a real SIGKILL."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import numpy as np
import pytest

from crosscity.data_prep.cli import main
from crosscity.data_prep.dataset import load_global_stats, load_manifest
from crosscity.data_prep.errors import ConflictError, DataPrepError
from crosscity.data_prep.manifest import global_stats
from crosscity.data_prep.prepare import append
from crosscity.data_prep.shards import read_shard
from crosscity.data_prep.verify import full_check, verify_dataset
from crosscity.train.data.windows import CityWindows
from tests.helpers.data import prepare_small, small_inputs, station_lines, write_csv


@pytest.fixture
def data(tmp_path):
    return prepare_small(tmp_path, "data", rows=1000)


def rows_and_versions(root: Path) -> dict[str, tuple[int, int]]:
    return {
        c: (load_manifest(root / c)["rows"], load_manifest(root / c)["version"]) for c in ("north", "centre")
    }


def test_append_adds_rows_and_is_idempotent(data, tmp_path):
    new = small_inputs(tmp_path, rows=1000, start=1000)
    before = len(CityWindows(data / "north", "train", past=24, horizon=12))
    report = append(data, new, progress=False)
    assert report.rows_added == 3000 and report.rows_unchanged == 0
    assert rows_and_versions(data) == {"north": (4000, 2), "centre": (2000, 2)}
    assert len(CityWindows(data / "north", "train", past=24, horizon=12)) > before  # training sees new rows
    assert sorted(p.name for p in (data / "centre").glob("*.h5")) == ["Dongsi_2013.v2.h5"]  # v1 superseded
    again = append(data, new, progress=False)
    assert (again.rows_added, again.rows_replaced, again.rows_unchanged) == (0, 0, 3000)
    assert rows_and_versions(data) == {"north": (4000, 2), "centre": (2000, 2)}
    m = load_manifest(data / "north")
    assert [h["version"] for h in m["history"]] == [1, 2]
    verify_dataset(data, "full")


def test_conflicting_append_errors_by_default_and_replaces_on_request(data, tmp_path, capsys):
    rows = station_lines("Dongsi")[:11]
    parts = rows[6].split(",")
    parts[5] = "777"
    rows[6] = ",".join(parts)
    path = write_csv(tmp_path / "fix.csv", rows)
    with pytest.raises(
        ConflictError,
        match=rf"{path}:7: row for station 'Dongsi' \(city centre\) at 2013-03-01 05:00 differs",
    ):
        append(data, [path], progress=False)
    assert rows_and_versions(data) == {"north": (2000, 1), "centre": (1000, 1)}
    assert not list(data.glob("*/*.v2.h5")) and not (data / ".staging").exists()  # nothing left behind
    full_check(data / "centre")
    assert main(["append", "--data", str(data), "--on-conflict", "replace", "--quiet", str(path)]) == 0
    assert rows_and_versions(data) == {"north": (2000, 1), "centre": (1000, 2)}
    stored = read_shard(data / "centre" / "Dongsi_2013.v2.h5")
    assert stored.values[5, 0] == 777.0
    report = json.loads((data / "prep_report.json").read_text())
    assert (report["rows_replaced"], report["rows_unchanged"]) == (1, 9)


def test_global_stats_equal_pooled_statistics(data, tmp_path):
    manifests = [load_manifest(data / c) for c in ("north", "centre")]
    glob = global_stats(manifests)["stats"]
    assert load_global_stats(data)["stats"] == glob
    for column, name in ((5, "PM2.5"), (12, "PRES"), (11, "TEMP")):
        pooled = [
            float(line.split(",")[column])
            for station in ("Changping", "Dingling", "Dongsi")
            for line in station_lines(station)[1:1001]
            if line.split(",")[column] != "NA"
        ]
        values = np.array(pooled, dtype=np.float32).astype(np.float64)
        assert glob[name]["count"] == values.size
        assert glob[name]["mean"] == pytest.approx(values.mean(), rel=1e-10)
        assert glob[name]["std"] == pytest.approx(values.std(), rel=1e-9)
        assert (glob[name]["min"], glob[name]["max"]) == (values.min(), values.max())


def test_a_second_writer_is_refused_while_one_holds_the_lock(data, tmp_path):
    new = small_inputs(tmp_path, rows=10, start=1000)
    with open(data / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        with pytest.raises(DataPrepError, match="another prep/append is running on this dataset"):
            append(data, new, progress=False)
    assert append(data, new, progress=False).rows_added == 30
