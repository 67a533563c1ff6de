"""`crosscity eval` on a finished run, the best-model final/model.pt, and early stopping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crosscity.train.observe.metrics_log import read_records
from tests.helpers.runs import CONFIG, QUICK, crosscity

# every validation window (the eval command scores them all), a validation pass every 10 steps
RUN = [
    *QUICK,
    "topology.cities=2",
    "data.cities=centre,east",
    "train.steps=40",
    "train.eval_every=10",
    "train.max_val_windows=0",
]


@pytest.fixture(scope="module")
def finished_run(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    r = crosscity("run", str(CONFIG), f"data.dir={small_dataset}", *RUN, f"train.run_dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def test_eval_reproduces_the_run_s_own_validation_numbers_exactly(finished_run: Path) -> None:
    r = crosscity("eval", str(finished_run))
    assert r.returncode == 0, r.stderr
    summary = json.loads((finished_run / "summary.json").read_text())
    result = json.loads((finished_run / "eval_val.json").read_text())
    assert (
        [c["name"] for c in result["cities"]] == [c["name"] for c in summary["cities"]] == ["centre", "east"]
    )
    for mine, theirs in zip(result["cities"], summary["cities"], strict=True):
        for key in ("rmse", "mae", "persistence_rmse", "persistence_mae", "n_windows"):
            assert mine[key] == theirs[f"val_{key}"], key  # bit for bit, not approximately
    assert result["overall"]["rmse"] == summary["overall"]["val_rmse"]
    # final/model.pt is the global model of the validation pass with the lowest pooled RMSE
    chosen = summary["final_model"]
    passes = {rec["step"]: rec for rec in chosen["passes"]}
    assert sorted(passes) == [10, 20, 30, 40] and chosen["last_step"] == 40
    assert chosen["step"] == min(passes, key=lambda s: passes[s]["rmse"]) and chosen["selected_by"] == "best"
    assert passes[chosen["step"]]["rmse"] == result["overall"]["rmse"]
    candidates = sorted(p.name for p in (finished_run / "final" / "candidates").iterdir())
    assert candidates == [f"step{s}.pt" for s in (10, 20, 30, 40)]
    assert (finished_run / "final" / "model.pt").read_bytes() == (
        finished_run / "final" / "candidates" / f"step{chosen['step']}.pt"
    ).read_bytes()
    for name in ("centre", "east", "overall"):
        assert any(line.startswith(name) for line in r.stdout.splitlines()), r.stdout


def test_eval_scores_the_test_split_and_another_dataset(finished_run: Path, small_dataset: Path) -> None:
    r = crosscity("eval", str(finished_run), "--split", "test")
    assert r.returncode == 0, r.stderr
    test = json.loads((finished_run / "eval_test.json").read_text())
    assert test["split"] == "test" and len(test["overall"]["by_hour"]) == 24
    hour_24 = test["overall"]["by_hour"][-1]
    assert hour_24["persistence_rmse"] > test["overall"]["by_hour"][0]["persistence_rmse"] > 0
    # the run trained on 2 of the 4 cities; --data scores every city of that dataset
    r = crosscity("eval", str(finished_run), "--data", str(small_dataset))
    assert r.returncode == 0, r.stderr
    other = json.loads((finished_run / f"eval_val_{small_dataset.name}.json").read_text())
    assert [c["name"] for c in other["cities"]] == ["centre", "east", "north", "west"]
    own = json.loads((finished_run / "eval_val.json").read_text())
    assert other["cities"][:2] == own["cities"]


def test_eval_of_a_folder_that_is_no_run_is_one_line_exit_2(tmp_path: Path) -> None:
    r = crosscity("eval", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "not a finished run directory" in r.stderr


def test_early_stopping_ends_training_and_keeps_the_best_model(small_dataset: Path, tmp_path: Path) -> None:
    """patience=1 and a learning rate that overshoots: the second pass is worse, training stops there.
    Early stopping pools the validation during training: a world over every city (flat)."""
    run_dir = tmp_path / "run"
    flat = ["wan.algorithm=flat", "security.insecure=true"]
    overrides = [*RUN, *flat, "train.steps=200", "train.patience=1", "optim.lr=0.05"]
    r = crosscity("run", str(CONFIG), f"data.dir={small_dataset}", *overrides, f"train.run_dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    chosen = json.loads((run_dir / "summary.json").read_text())["final_model"]
    assert chosen["stopped_early"] and chosen["last_step"] < 200
    passes = [rec["step"] for rec in chosen["passes"]]
    assert passes[-1] == chosen["last_step"] and chosen["step"] == chosen["last_step"] - 10
    assert any(e["event"] == "early_stop" for e in read_records(run_dir, "event"))


def test_federated_early_stopping_is_decided_at_the_coordinator(small_dataset: Path, tmp_path: Path) -> None:
    """diloco: each city reports its passes; with min_delta beyond reach the pass at step 20 is the
    first without improvement, the coordinator ends the run there and every city stops at its next
    committed round."""
    run_dir = tmp_path / "run"
    overrides = [*RUN, "wan.algorithm=diloco", "wan.sync_every=5", "train.steps=400", "train.patience=1"]
    overrides += ["train.min_delta=1000"]
    r = crosscity("run", str(CONFIG), f"data.dir={small_dataset}", *overrides, f"train.run_dir={run_dir}")
    assert r.returncode == 0, r.stderr[-3000:]
    events = [
        json.loads(line) for line in (run_dir / "coordinator" / "events.jsonl").read_text().splitlines()
    ]
    [stop] = [e for e in events if e["event"] == "early_stop"]
    assert (stop["step"], stop["best_step"]) == (20, 10)
    chosen = json.loads((run_dir / "summary.json").read_text())["final_model"]
    assert chosen["stopped_early"] and 20 <= chosen["last_step"] < 400
    stopped = [e for e in read_records(run_dir, "event") if e["event"] == "early_stop"]
    assert {e["city"] for e in stopped} == {0, 1}  # every city ended on the coordinator's word
