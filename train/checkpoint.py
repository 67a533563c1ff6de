"""Per-rank checkpoints that restore the exact trajectory: model, optimizer, WAN state, data position, RNG.

Checkpoints and model files load with `weights_only=True`: torch's restricted unpickler builds only
tensors and plain containers, so a file that reached us (a copied run directory, a model from a
peer) cannot run code when loaded. Everything saved is therefore tensors, numbers, strings, lists,
tuples and dicts: the numpy RNG state goes in as plain values, not as numpy objects.
"""

from __future__ import annotations

import io
import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crosscity.core.atomic_io import atomic_write


def rng_state() -> dict[str, Any]:
    numpy = np.random.get_state(
        legacy=False
    )  # {"bit_generator", "state": {"key", "pos"}, "has_gauss", "gauss"}
    numpy["state"] = {"key": numpy["state"]["key"].tolist(), "pos": int(numpy["state"]["pos"])}
    state = {"torch": torch.get_rng_state(), "numpy": numpy, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    numpy = state["numpy"]
    key = np.asarray(numpy["state"]["key"], dtype=np.uint32)
    np.random.set_state({**numpy, "state": {"key": key, "pos": numpy["state"]["pos"]}})
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(run_dir: Path, city: int, local_rank: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"city{city}" / f"rank{local_rank}.pt"


def previous_path(path: Path) -> Path:
    """Where the checkpoint before `path`'s latest is kept."""
    return Path(path).with_suffix(".prev.pt")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise fully in memory first, then write atomically: a kill mid-save keeps the old file.
    The one before is kept too: a city killed while saving can leave one rank a checkpoint ahead of
    the others, and they resume together from the newest step all of them have (trainer._resume)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    if Path(path).is_file():
        os.replace(path, previous_path(path))
    atomic_write(path, lambda fh: fh.write(buffer.getbuffer()))


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    if not Path(path).is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        why = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise ValueError(
            f"{path}: not loaded: it holds more than tensors and plain values ({why}); a checkpoint "
            "of crosscity before weights_only (numpy RNG objects) cannot be resumed, start a new run"
        ) from None
