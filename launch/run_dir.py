"""A run directory's config: resolved once, written where every rank (and every later tool) reads it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from crosscity.config.schema import Config, load_config, save_config


def resolve_run(
    config: str | Path, overrides: Sequence[str], run_dir: str | Path | None = None
) -> tuple[Config, Path]:
    """Load + validate the config and write RUN_DIR/config.yaml (what the ranks read).

    Deliberately torch-free: submit, sweep and status run on login nodes, where a multi-second
    torch import is wasted.
    """
    cfg = load_config(config, list(overrides))
    if run_dir is not None:
        cfg.train.run_dir = str(run_dir)
    path = Path(cfg.train.run_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, path / "config.yaml")
    return cfg, path
