"""Sweep points from --grid and --random, and a bad point refused before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from crosscity.config import ConfigError
from crosscity.launch.slurm.sweep import grid_points, parse_grid
from tests.helpers.sweep import sweep


def test_grid_and_random_points() -> None:
    grid = parse_grid(["optim.lr=1e-3,3e-3", "wan.codec=none,int8,fp16"])
    points = grid_points(grid)
    assert len(points) == 6 and points[0] == {"optim.lr": "1e-3", "wan.codec": "none"}
    picked = grid_points(grid, n_random=3, seed=7)
    assert len(picked) == 3 and picked == grid_points(grid, n_random=3, seed=7)
    assert all(p in points for p in picked)
    with pytest.raises(ConfigError, match="expected key=v1,v2"):
        parse_grid(["optim.lr"])


def test_bad_point_is_refused_before_anything_runs(tmp_path: Path) -> None:
    done = sweep(tmp_path / "s", 2, "--grid", "wan.codec=none,int9")
    assert done.returncode == 2 and "int9" in done.stderr and "allowed values" in done.stderr
    assert not (tmp_path / "s" / "slurm").exists()
