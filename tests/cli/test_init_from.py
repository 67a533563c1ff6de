"""train.init_from: a run continues from another run's final model (and DiLoCo's outer momentum),
after `crosscity prep append` brought new hours; it records the dataset versions and the RMSE on
the new hours before and after."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils import parameters_to_vector

from crosscity.config import ModelConfig
from crosscity.data_prep.cli import PRESETS_DIR
from crosscity.data_prep.cli import main as prep
from crosscity.train.data.windows import CityWindows
from crosscity.train.evaluate import score
from crosscity.train.init_from import windows_after
from crosscity.train.models import build_model
from tests.helpers.data import small_cities, small_inputs
from tests.helpers.runs import CONFIG, QUICK, crosscity, final_params

# optim.lr must be > 0: this one moves no float32 parameter (each step is ~1e-30, far below their ulp)
NO_LR = "optim.lr=1e-30"
COMMON = [*QUICK, "topology.cities=2", "topology.ranks_per_city=1", "wan.algorithm=diloco"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A DiLoCo run on the first 1500 hours, then 500 more hours appended (dataset version 2)."""
    root = tmp_path_factory.mktemp("init_from")
    data = root / "data"
    schema = PRESETS_DIR / "beijing_schema.yaml"
    cities = small_cities(root)
    assert prep(["--schema", str(schema), "--cities", str(cities), "--out", str(data), "--quiet",
                 *map(str, small_inputs(root, rows=1500))]) == 0  # fmt: skip
    run = root / "first"
    r = crosscity("run", str(CONFIG), f"data.dir={data}", *COMMON, "train.steps=50", f"train.run_dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    later = small_inputs(root, 500, start=1500)
    assert prep(["append", "--data", str(data), "--quiet", *map(str, later)]) == 0
    return data, run


def _continue(data: Path, first: Path, out: Path, *overrides: str) -> dict:
    args = [f"data.dir={data}", *COMMON, "train.steps=10", f"train.init_from={first}", *overrides]
    r = crosscity("run", str(CONFIG), *args, f"train.run_dir={out}")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "summary.json").read_text())


def test_init_from_starts_from_exactly_the_saved_parameters(
    first_run: tuple[Path, Path], tmp_path: Path
) -> None:
    data, first = first_run
    # no learning rate and plain averaging (no outer momentum): nothing may move the loaded parameters
    summary = _continue(data, first, tmp_path / "again", NO_LR, "wan.algorithm=average")
    saved, continued = final_params(first), final_params(tmp_path / "again")
    assert all(torch.equal(saved[k], continued[k]) for k in saved)
    before = json.loads((first / "summary.json").read_text())
    assert {c["name"]: c["dataset"]["version"] for c in before["cities"]} == {"centre": 1, "north": 1}
    assert {c["name"]: c["dataset"]["version"] for c in summary["cities"]} == {"centre": 2, "north": 2}
    # the new hours: test windows after the first run's data, scored before and after (equal here)
    new = summary["new_hours"]
    assert new["after"]["n_windows"] > 0 and new["before"] == new["after"]
    end = next(c for c in before["cities"] if c["name"] == "north")["dataset"]["time_span"][1]
    test = CityWindows(data / "north", split="test")
    model = build_model(ModelConfig(hidden=32), 48, test.n_inputs, 24)
    model.load_state_dict(saved)
    mine = score(model, test, windows=windows_after(test, end)).totals()
    city = next(c for c in summary["cities"] if c["name"] == "north")
    assert city["new_hours"]["before"]["n_windows"] == mine["n_windows"] == len(test) > 0
    assert "on the test windows after its data" in (tmp_path / "again" / "report.md").read_text()


def test_diloco_carries_the_outer_momentum(first_run: tuple[Path, Path], tmp_path: Path) -> None:
    """No learning rate: the only thing that moves the model is the carried Nesterov momentum (the
    coordinator's), in the one final round (sync_every 20 > 10 steps): global - lr * mu * (mu * buffer)."""
    data, first = first_run
    _continue(data, first, tmp_path / "diloco", NO_LR)
    coordinator = tmp_path / "diloco" / "coordinator"
    events = [json.loads(line) for line in (coordinator / "events.jsonl").read_text().splitlines()]
    carried = [e for e in events if e["event"] == "init_from"]
    assert carried and all(e["outer_state"] for e in carried)
    state = json.loads((first / "coordinator" / "state.json").read_text())
    with np.load(first / "coordinator" / state["arrays"]) as npz:
        buffer = torch.from_numpy(npz["outer_buf0"])
    start = parameters_to_vector(final_params(first).values())
    expected = start - 0.7 * 0.9 * (0.9 * buffer)
    got = parameters_to_vector(final_params(tmp_path / "diloco").values())
    assert not torch.equal(got, start)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
