"""Single-process pieces of the trainer on real prepared data: models, evaluation, batches, checkpoints."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from crosscity.config import ModelConfig
from crosscity.core.forecast_scores import pool_metrics
from crosscity.train.checkpoint import (
    load_checkpoint,
    previous_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from crosscity.train.data.batches import BatchStream
from crosscity.train.data.windows import CityWindows
from crosscity.train.evaluate import score
from crosscity.train.init_from import windows_after
from crosscity.train.models import build_model


@pytest.fixture(scope="module")
def val_windows(small_dataset: Path) -> CityWindows:
    return CityWindows(small_dataset / "north", split="val", past=48, horizon=24)


@pytest.mark.parametrize("kind", ["mlp", "gru", "tcn"])
def test_models_map_a_window_to_every_horizon(kind: str, val_windows: CityWindows) -> None:
    model = build_model(ModelConfig(kind=kind, hidden=16, layers=2), 48, val_windows.n_inputs, 24)
    x = torch.stack([val_windows[i][0] for i in range(3)])
    out = model(x)
    assert out.shape == (3, 24)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


class Persistence(nn.Module):
    def __init__(self, target_index: int) -> None:
        super().__init__()
        self.target_index = target_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, -1, self.target_index].unsqueeze(1).expand(-1, 24)


def test_persistence_model_scores_exactly_the_persistence_baseline(val_windows: CityWindows) -> None:
    metrics = pool_metrics([score(Persistence(val_windows.target_index), val_windows).totals()])
    assert metrics["n_windows"] == len(val_windows) > 0
    assert metrics["rmse"] == pytest.approx(metrics["persistence_rmse"], rel=1e-6)
    assert metrics["mae"] == pytest.approx(metrics["persistence_mae"], rel=1e-6)
    assert 5 < metrics["rmse"] < 300  # ug/m3, de-normalised


def test_tcn_sees_only_the_past() -> None:
    """Causal: changing hour t of the window changes no layer output before t (so the last hour's
    features summarise the window without looking ahead)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="tcn", hidden=8, layers=3), 48, 5, 24)
    x = torch.randn(1, 48, 5)
    changed = x.clone()
    changed[0, 30] += 1.0
    inner = [model.inp(t.transpose(1, 2)) for t in (x, changed)]
    for block in model.blocks:
        inner = [block(h) for h in inner]
    assert torch.equal(inner[0][..., :30], inner[1][..., :30])
    assert not torch.equal(inner[0][..., 30:], inner[1][..., 30:])


def test_scores_break_down_into_stations_and_hours_that_add_up(val_windows: CityWindows) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="mlp", hidden=16, layers=1), 48, val_windows.n_inputs, 24)
    scores = score(model, val_windows, batch_size=64)
    totals = scores.totals()
    stations = scores.by_station()
    assert sorted(stations) == ["Changping", "Dingling", "Huairou"]
    hours = scores.by_hour()
    assert len(hours) == 24
    for key in ("se", "ae", "p_se", "count"):
        assert sum(s[key] for s in stations.values()) == pytest.approx(totals[key], rel=1e-12)
        assert sum(h[key] for h in hours) == pytest.approx(totals[key], rel=1e-12)
    assert sum(s["n_windows"] for s in stations.values()) == totals["n_windows"] == len(val_windows)
    # persistence is far better one hour ahead than 24 hours ahead
    assert pool_metrics([hours[0]])["persistence_rmse"] < pool_metrics([hours[-1]])["persistence_rmse"]


def test_windows_after_a_time_keep_exactly_the_later_windows(val_windows: CityWindows) -> None:
    first = min(s["time_min"] for s in val_windows.manifest["shards"])
    ends = [first + (int(start) + 48 + 24 - 1) * 3600 for _, start in val_windows.index]
    cut = sorted(ends)[len(ends) // 2]
    later = windows_after(val_windows, cut)
    assert later == [i for i, end in enumerate(ends) if end > cut] and 0 < len(later) < len(ends)
    model = build_model(ModelConfig(kind="mlp", hidden=16, layers=1), 48, val_windows.n_inputs, 24)
    assert score(model, val_windows, windows=later).totals()["n_windows"] == len(later)


def test_capped_evaluation_spreads_over_the_split(val_windows: CityWindows) -> None:
    capped = score(Persistence(val_windows.target_index), val_windows, max_windows=10).totals()
    assert capped["n_windows"] == 10


@pytest.mark.parametrize("max_windows", [0, 25])
def test_a_city_s_ranks_evaluating_a_part_each_add_up_to_the_whole(
    val_windows: CityWindows, max_windows: int
) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="mlp", hidden=16, layers=1), 48, val_windows.n_inputs, 24)
    whole = score(model, val_windows, batch_size=16, max_windows=max_windows).totals()
    parts = [score(model, val_windows, 16, max_windows, part=k, parts=3).totals() for k in range(3)]
    assert all(p["n_windows"] > 0 for p in parts)
    for key, value in whole.items():
        assert sum(p[key] for p in parts) == pytest.approx(value, rel=1e-6), key  # fp32 batch sums
    assert pool_metrics(parts)["rmse"] == pytest.approx(pool_metrics([whole])["rmse"], rel=1e-6)


def test_batch_stream_resumes_mid_epoch_exactly(small_dataset: Path) -> None:
    ds = CityWindows(small_dataset / "east", split="train", past=48, horizon=24)
    first = BatchStream(ds, rank=1, world=2, batch_size=32, seed=5)
    for _ in range(first.batches_per_epoch + 3):  # cross an epoch boundary
        first.next()
    state = first.state_dict()
    expected = [first.next()[0] for _ in range(4)]
    second = BatchStream(ds, rank=1, world=2, batch_size=32, seed=5)
    second.load_state_dict(state)
    for want in expected:
        torch.testing.assert_close(second.next()[0], want, rtol=0, atol=0)
    assert state["epoch"] == 1


def test_checkpoint_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"step": 1})

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {"step": 2, "bad": Boom()})
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind
    assert load_checkpoint(tmp_path / "absent.pt") is None


def test_a_checkpoint_keeps_the_one_before(tmp_path: Path) -> None:
    """A city killed mid-save can leave one rank a checkpoint ahead: the one before is still there."""
    path = tmp_path / "rank0.pt"
    for step in (10, 20, 30):
        save_checkpoint(path, {"step": step})
    assert load_checkpoint(path) == {"step": 30}
    assert load_checkpoint(previous_path(path)) == {"step": 20}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0.prev.pt", "rank0.pt"]


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(1).tolist(), random.random()


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    np.random.randn(3)  # leaves a cached gaussian in numpy's state: it must come back too
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"rng": rng_state()})
    want = draws()
    set_rng_state(load_checkpoint(path)["rng"])
    assert draws() == want


class Payload:
    """What a hostile checkpoint carries: unpickling it would create a directory."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def test_a_checkpoint_with_code_in_it_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    torch.save({"model": {}, "x": Payload(marker)}, path)
    with pytest.raises(ValueError, match="not loaded: it holds more than tensors"):
        load_checkpoint(path)
    assert not marker.exists()
