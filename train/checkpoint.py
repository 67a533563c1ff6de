"""Per-rank checkpoints that restore the exact trajectory: model, optimizer, WAN state, data position, RNG."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crosscity.core.atomic_io import atomic_write


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(run_dir: Path, city: int, local_rank: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"city{city}" / f"rank{local_rank}.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise fully in memory first, then write atomically: a kill mid-save keeps the old file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, lambda fh: fh.write(buffer.getbuffer()))


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
