"""A run directory's config: loaded and checked once, then written where every rank (and every later
tool) reads it. Deliberately torch-free: submit, sweep and status run on login nodes, where a
multi-second torch import is wasted."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from crosscity.config import Config, load_config, save_config


def load_run(
    config: str | Path | None,
    overrides: Sequence[str],
    run_dir: str | Path | None = None,
    *,
    slurm: bool = False,
) -> Config:
    """Load + check the config (every rule; `slurm`: those of a submission too); `run_dir` wins over
    train.run_dir. Writes nothing, so a refused config leaves no folder behind."""
    cfg = load_config(config, list(overrides), slurm=slurm)
    if run_dir is not None:
        cfg.train.run_dir = str(run_dir)
    return cfg


def write_run(cfg: Config) -> Path:
    """Create the run folder and write RUN_DIR/config.yaml (what the ranks read); returns the folder."""
    path = Path(cfg.train.run_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, path / "config.yaml")
    return path


def resolve_run(
    config: str | Path | None,
    overrides: Sequence[str],
    run_dir: str | Path | None = None,
    *,
    slurm: bool = False,
) -> tuple[Config, Path]:
    """load_run, then write_run: the config and its run folder."""
    cfg = load_run(config, overrides, run_dir, slurm=slurm)
    return cfg, write_run(cfg)
