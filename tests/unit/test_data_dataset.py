"""Dataset-level versions: one prep or append = one version of every city, committed by dataset.json;
a rerun of the same prep is a no-op, a killed one starts over; superseded files go at the commit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crosscity.data_prep.dataset import DATASET, UNFINISHED, read_dataset
from crosscity.data_prep.errors import DataPrepError, DatasetError
from crosscity.data_prep.prepare import append, prepare
from crosscity.data_prep.verify import verify_dataset
from tests.helpers.data import PRESET_SCHEMA, small_cities, small_inputs


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, list[Path]]:
    return small_cities(tmp_path), small_inputs(tmp_path, rows=200)


def test_each_run_is_one_version_naming_every_city(inputs, tmp_path: Path) -> None:
    cities, files = inputs
    root = tmp_path / "data"
    prepare(PRESET_SCHEMA, cities, root, files, progress=False)
    (tmp_path / "more").mkdir()
    north_only = [p for p in small_inputs(tmp_path / "more", rows=50, start=200) if "Dongsi" not in p.name]
    report = append(root, north_only, progress=False)
    ds = read_dataset(root)
    assert (report.dataset_version, ds["version"]) == (2, 2)
    assert {c: e["version"] for c, e in ds["cities"].items()} == {"north": 2, "centre": 1}
    assert [h["cities"] for h in ds["history"]] == [{"north": 1, "centre": 1}, {"north": 2, "centre": 1}]
    assert sorted(p.name for p in (root / "north").glob("manifest.v*.json")) == ["manifest.v2.json"]
    assert sorted(p.name for p in root.glob("global_stats.v*.json")) == ["global_stats.v2.json"]
    again = append(root, north_only, progress=False)
    assert not again.changed and read_dataset(root)["version"] == 2  # nothing new: no new version
    verified = verify_dataset(root, "full")
    assert verified.cities == {"centre": 1, "north": 2} and verified.leftovers == []
    assert verify_dataset(root / "north", "quick").cities == {"north": 2}  # one city folder


def test_the_same_prep_again_is_a_no_op_and_another_one_is_refused(inputs, tmp_path: Path) -> None:
    cities, files = inputs
    root = tmp_path / "data"
    prepare(PRESET_SCHEMA, cities, root, files, progress=False)
    before = (root / DATASET).read_bytes()
    report = prepare(PRESET_SCHEMA, cities, root, files, progress=False)
    assert not report.changed and report.dataset_version == 1 and (root / DATASET).read_bytes() == before
    assert "nothing to do" in report.summary()
    with pytest.raises(
        DataPrepError, match="already holds a dataset \\(version 1\\) prepared from other inputs"
    ):
        prepare(PRESET_SCHEMA, cities, root, files[:2], progress=False)


def test_an_unfinished_prep_is_started_over_and_a_foreign_folder_refused(
    inputs, tmp_path: Path, capsys
) -> None:
    cities, files = inputs
    root = tmp_path / "data"
    (root / "north").mkdir(parents=True)
    (root / "north" / "Changping_2013.v1.h5").write_bytes(b"half")
    (root / UNFINISHED).write_text(json.dumps({"started": 0}))
    with pytest.raises(DatasetError, match="an unfinished `crosscity prep`.*rerun the same prep command"):
        verify_dataset(root)
    prepare(PRESET_SCHEMA, cities, root, files, progress=False)
    assert "starting over the unfinished prep" in capsys.readouterr().err
    assert verify_dataset(root, "full").version == 1 and not (root / UNFINISHED).exists()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(
        DataPrepError, match="not empty; prep writes a new dataset into an empty or new folder"
    ):
        prepare(PRESET_SCHEMA, cities, foreign, files, progress=False)
    assert [p.name for p in foreign.iterdir()] == [
        "notes.txt"
    ]  # nothing of ours left, nothing of theirs lost
