"""A run directory's config: resolved once, written where every rank (and every later tool) reads it.

A run directory belongs to one config: running into it again with the same config resumes it (the
checkpoints and the coordinator's state are its continuation); a different config is refused with
the keys that differ, before anything starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from crosscity.config.schema import Config, ConfigError, load_config, save_config, to_dict


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
    existing = path / "config.yaml"
    if existing.is_file():
        changed = _differences(yaml.safe_load(existing.read_text()) or {}, to_dict(cfg))
        if changed:
            raise ConfigError(
                f"{path} belongs to another config ({'; '.join(changed[:4])}): "
                "use another train.run_dir, or the same config to resume it"
            )
        return cfg, path
    path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, existing)
    return cfg, path


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out
