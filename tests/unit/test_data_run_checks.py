"""The data checks before any rank starts (crosscity run / submit / sweep): the cities of a run and
no silent subset, the complete version and intact shards, the target, windows that fit, the global
statistics; and the record of which dataset version each city trained on."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from crosscity.config import load_config
from crosscity.data_prep.errors import DataPrepError, RunDataError
from crosscity.data_prep.prepare import append
from crosscity.data_prep.run_checks import RUN_RECORD, check_run_data, check_runs_data, resolve_cities
from tests.helpers.data import flip_byte, small_inputs


def config(data: Path, *overrides: str):
    return load_config(None, [f"data.dir={data}", *overrides])


def test_every_prepared_city_in_name_order(small_dataset: Path) -> None:
    assert resolve_cities(small_dataset, [], 4) == ["centre", "east", "north", "west"]
    assert resolve_cities(small_dataset, ["west", "north"], 2) == ["west", "north"]


@pytest.mark.parametrize(
    ("cities", "n", "message"),
    [
        ([], 3, "topology.cities=3 but .* has 4 prepared cities \\(centre, east, north, west\\): name the 3"),
        ([], 5, "topology.cities=5 but .* has only 4 prepared cities"),
        (["north", "south"], 2, "data.cities: 'south' is not a prepared city of .*; allowed: centre, east"),
    ],
)
def test_no_silent_subset_and_no_unknown_city(small_dataset: Path, cities, n, message) -> None:
    with pytest.raises(RunDataError, match=message):
        resolve_cities(small_dataset, cities, n)


def test_the_checks_pass_and_record_the_versions(small_dataset: Path, tmp_path: Path) -> None:
    data = check_run_data(config(small_dataset, "data.verify=full", "data.stats=global"))
    assert data.dataset_version == 1 and data.cities == {c: 1 for c in ("centre", "east", "north", "west")}
    assert data.line().endswith("dataset version 1 (centre v1, east v1, north v1, west v1)")
    data.write(tmp_path)
    assert json.loads((tmp_path / RUN_RECORD).read_text())["cities"] == data.cities


def test_a_corrupt_shard_is_found_with_verify_quick_but_not_in_an_unused_city(
    small_dataset: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(small_dataset, root)
    shard = sorted((root / "west").glob("*.h5"))[0]
    flip_byte(shard)
    with pytest.raises(DataPrepError, match=f"{shard.name}: sha256"):
        check_run_data(config(root, "data.verify=quick"))
    check_run_data(config(root, "data.verify=quick", "topology.cities=2", "data.cities=north,east"))
    check_run_data(config(root, "data.verify='off'"))  # off: no shard hashing (structure only)


def test_windows_must_fit_with_validation_windows_left(small_dataset: Path) -> None:
    # 2000 hours a station: the validation split is 200 h, so at most 100 h of past + horizon
    check_run_data(config(small_dataset, "data.past_hours=76", "data.horizon_hours=24"))
    with pytest.raises(RunDataError, match=r"= 101 h: no validation window in city centre .* <= 100"):
        check_run_data(config(small_dataset, "data.past_hours=77", "data.horizon_hours=24"))


def test_the_versions_change_with_an_append_and_a_sweep_checks_each_data_setting_once(
    small_dataset: Path, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    shutil.copytree(small_dataset, root)
    north = [p for p in small_inputs(tmp_path, rows=100, start=2000) if "Dongsi" not in p.name]
    append(root, north, progress=False)
    data = check_run_data(config(root))
    assert data.dataset_version == 2 and data.cities["north"] == 2 and data.cities["east"] == 1
    check_runs_data([config(root, f"optim.lr={lr}") for lr in (1e-3, 3e-3)])
    with pytest.raises(RunDataError, match="data.target='TEMP': not a target of city centre"):
        check_runs_data([config(root), config(root, "data.target=TEMP")])


def test_submit_and_sweep_check_the_data_before_anything_is_written(
    small_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from crosscity.launch.slurm import submit, sweep

    config = Path(__file__).resolve().parents[2] / "configs" / "beijing_mlp.yaml"
    run_dir = tmp_path / "run"
    assert (
        submit.main(
            [str(config), f"data.dir={small_dataset}", "topology.cities=2", f"train.run_dir={run_dir}"]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("crosscity submit: data error: topology.cities=2 but")
    assert not run_dir.exists()  # nothing planned, nothing submitted
    grid = ["--grid", "data.past_hours=24,500", "--out", str(tmp_path / "sweep"), "--local"]
    assert sweep.main([str(config), f"data.dir={small_dataset}", *grid]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "data.past_hours=500 + data.horizon_hours=24 = 524 h: no validation window" in err[0]
    )
    assert not (tmp_path / "sweep").exists()
