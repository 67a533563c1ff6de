"""Which model is the run's: the summary pools every city's validation passes, picks the one with the
lowest pooled RMSE among those every city has, puts its candidate into final/model.pt and reports
that pass's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crosscity.config import load_config
from crosscity.core.forecast_scores import pool_metrics
from crosscity.launch.report.summary import write_summary


def sums(se: float) -> dict[str, float]:
    return {"se": se, "ae": se / 2, "p_se": 400.0, "p_ae": 10.0, "count": 1.0, "n_windows": 1.0}


def city(run_dir: Path, c: int, passes: dict[int, float]) -> None:
    history = [{"step": step, "sums": sums(se)} for step, se in passes.items()]
    result = {"city": c, "name": f"c{c}", "samples": 10, "sums": history[-1]["sums"], "n_params": 3,
              "train_wall_s": 1.0, "global_model": True, "history": history, "dataset": None}  # fmt: skip
    (run_dir / "final" / f"city{c}.json").write_text(json.dumps(result))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """Step 20 is the best pooled pass; city 1 lacks step 10 (city 0's best alone)."""
    (tmp_path / "final" / "candidates").mkdir(parents=True)
    city(tmp_path, 0, {10: 1.0, 20: 4.0, 30: 25.0})
    city(tmp_path, 1, {20: 9.0, 30: 9.0})
    for step in (10, 20, 30):
        (tmp_path / "final" / "candidates" / f"step{step}.pt").write_bytes(f"model {step}".encode())
    (tmp_path / "final" / "model.pt").write_bytes(b"model 30")  # what the cities wrote: the last
    return tmp_path


def test_best_pass_of_every_city_becomes_final_model_and_the_summary_numbers(run_dir: Path) -> None:
    summary = write_summary(run_dir, load_config(None, ["topology.cities=2", "train.steps=30"]))
    assert summary is not None
    chosen = summary["final_model"]
    assert (chosen["step"], chosen["selected_by"], chosen["last_step"]) == (20, "best", 30)
    assert not chosen["stopped_early"] and [p["step"] for p in chosen["passes"]] == [20, 30]
    assert (run_dir / "final" / "model.pt").read_bytes() == b"model 20"
    assert [c["val_rmse"] for c in summary["cities"]] == [2.0, 3.0]
    assert summary["overall"]["val_rmse"] == pool_metrics([sums(4.0), sums(9.0)])["rmse"]
    assert chosen["passes"][0]["sums"]["se"] == 13.0


def test_final_model_last_keeps_the_last_model(run_dir: Path) -> None:
    cfg = load_config(None, ["topology.cities=2", "train.steps=40", "train.final_model=last"])
    chosen = write_summary(run_dir, cfg)["final_model"]
    assert (chosen["step"], chosen["selected_by"], chosen["stopped_early"]) == (30, "last", True)
    assert (run_dir / "final" / "model.pt").read_bytes() == b"model 30"
