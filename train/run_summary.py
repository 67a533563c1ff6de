"""The end of a city's run: its result file and, from a city holding the global model, the final model.

Each city's local rank 0 writes RUN_DIR/final/city<C>.json (its samples and validation sums of the
final model); the launcher pools them into summary.json (launch/report/summary.py). Every city that
ends on the global model may write final/model.pt (atomically; they all hold the same parameters).
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
) -> dict[str, Any]:
    result = {
        "city": topo.city,
        "name": name,
        "samples": samples,
        "sums": sums,
        "n_params": sum(p.numel() for p in model.parameters()),
        "steps": cfg.train.steps,
        "train_wall_s": wall_s,
        "global_model": write_model,
    }
    folder = Path(run_dir) / FINAL
    atomic_write_text(folder / f"city{topo.city}.json", json.dumps(result, indent=2))
    if write_model:
        state = {"model": model.state_dict(), "config": to_dict(cfg)}
        atomic_write(folder / "model.pt", lambda fh: torch.save(state, fh))
    return result
