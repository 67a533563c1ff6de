"""A run directory's config: loaded and checked once, then written where every rank (and every later
tool) reads it. Deliberately torch-free: submit, sweep and status run on login nodes, where a
multi-second torch import is wasted.

A run directory belongs to one config: running into it again with the same config resumes it (the
checkpoints and the coordinator's state are its continuation); a different config is refused with
the keys that differ, before anything starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from crosscity.config import Config, ConfigError, load_config, save_config, to_dict


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
    existing = Path(cfg.train.run_dir).resolve() / "config.yaml"
    if existing.is_file():
        changed = _differences(yaml.safe_load(existing.read_text()) or {}, to_dict(cfg))
        if changed:
            raise ConfigError(
                f"{existing.parent} belongs to another config ({'; '.join(changed[:4])}): "
                "use another train.run_dir, or the same config to resume it"
            )
    return cfg


def write_run(cfg: Config) -> Path:
    """Create the run folder and write RUN_DIR/config.yaml (what the ranks read); returns the folder."""
    path = Path(cfg.train.run_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    if not (path / "config.yaml").is_file():  # an existing one is this very config (load_run checked)
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


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
