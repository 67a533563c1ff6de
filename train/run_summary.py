"""The end of a city's run: its result file and, from a city holding the global model, the final model.

Each city's local rank 0 writes RUN_DIR/final/city<C>.json (its samples, the validation sums of the
final model and of every validation pass, the dataset version it read); the launcher pools them into
summary.json (launch/report/summary.py). Every city that ends on the global model may write
final/model.pt (atomically; they all hold the same parameters). With train.final_model=best, every
validation pass also leaves its global model in final/candidates/, and the summary replaces
final/model.pt by the candidate of the pass with the lowest pooled validation RMSE.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crosscity.config import Config, to_dict
from crosscity.core.atomic_io import atomic_write, atomic_write_text
from crosscity.train.distributed.topology import Topology

FINAL = "final"


def _save_model(path: Path, cfg: Config, model: nn.Module) -> None:
    state = {"model": model.state_dict(), "config": to_dict(cfg)}
    atomic_write(path, lambda fh: torch.save(state, fh))


def write_candidate(run_dir: Path, cfg: Config, step: int, model: nn.Module) -> None:
    """The global model of the validation pass at `step`: final/model.pt if its pass wins
    (launch/report/summary.py `candidate`)."""
    _save_model(Path(run_dir) / FINAL / "candidates" / f"step{step}.pt", cfg, model)


def write_city_result(
    run_dir: Path,
    cfg: Config,
    topo: Topology,
    name: str,
    sums: dict[str, float],
    samples: int,
    model: nn.Module,
    wall_s: float,
    write_model: bool,
    history: list[dict[str, Any]],
    dataset: dict[str, Any],
) -> dict[str, Any]:
    """`history`: every validation pass (step, sums; new_hours with init_from); `dataset`: the version
    this city read and its time span (what a later train.init_from run calls its new hours)."""
    result = {
        "city": topo.city,
        "name": name,
        "samples": samples,
        "sums": sums,
        "n_params": sum(p.numel() for p in model.parameters()),
        "steps": cfg.train.steps,
        "train_wall_s": wall_s,
        "global_model": write_model,
        "history": history,
        "dataset": dataset,
    }
    folder = Path(run_dir) / FINAL
    atomic_write_text(folder / f"city{topo.city}.json", json.dumps(result, indent=2))
    if write_model:
        _save_model(folder / "model.pt", cfg, model)
    return result
