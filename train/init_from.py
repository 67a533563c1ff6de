"""`train.init_from=RUN_DIR`: continue from a finished run's final model, typically after `crosscity
prep append` brought new hours (docs/model_quality.md says what is and is not carried over).

Carried: the final model's parameters (the best one by validation when that run selected it) and, when
both runs use the same outer optimizer (diloco; streaming with the same fragments), its state: the
Nesterov momentum, identical on every rank, read from that run's last checkpoint. Not carried: the
inner optimizer's moments, the learning-rate schedule, error-feedback residuals, the data position.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from crosscity.config.schema import Config
from crosscity.train.checkpoint import checkpoint_path, load_checkpoint
from crosscity.train.data.windows import HOUR, CityWindows
from crosscity.train.wan.sync import InterCitySync


def load_init_model(model: nn.Module, source: Path) -> None:
    state = torch.load(Path(source) / "final" / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])


def load_outer_state(sync: InterCitySync, cfg: Config, source: Path) -> bool:
    """Copy the previous run's outer optimizer state (not its hyperparameters) into `sync`; True if
    carried. The outer state is the same on every rank, so city 0's rank 0 checkpoint serves all."""
    outer = getattr(sync, "outer", None)  # DiLoCo and streaming keep their outer SGD here
    wan = (yaml.safe_load((Path(source) / "config.yaml").read_text()) or {}).get("wan") or {}
    same = wan.get("algorithm") == cfg.wan.algorithm and (
        cfg.wan.algorithm != "streaming" or wan.get("fragments") == cfg.wan.fragments
    )
    saved = load_checkpoint(checkpoint_path(Path(source), 0, 0)) if outer is not None and same else None
    if outer is None or saved is None or "outer" not in saved["sync"]:
        return False
    state = outer.state_dict()
    state["state"] = saved["sync"]["outer"]["state"]
    outer.load_state_dict(state)
    return True


def trained_on(city: CityWindows) -> dict[str, Any]:
    """What a run records per city: the dataset version it read and that version's time span."""
    return {"version": city.manifest["version"], "time_span": city.manifest["time_span"]}


def previous_span_end(source: Path, city: str) -> int | None:
    """Last hour (unix seconds) of `city`'s data in the run at `source`: its summary's record, else the
    launcher's dataset.json; None when neither says."""
    for name, pick in (("summary.json", "dataset"), ("dataset.json", "cities")):
        path = Path(source) / name
        if path.is_file():
            entry = (json.loads(path.read_text()).get(pick) or {}).get(city)
            if isinstance(entry, dict) and entry.get("time_span"):
                return int(entry["time_span"][1])
    return None


def windows_after(dataset: CityWindows, after: int) -> list[int]:
    """Indexes of the windows whose last target hour lies after `after` (unix seconds): the new hours."""
    first = {}
    for shard in dataset.manifest["shards"]:
        sid = shard["station_id"]
        first[sid] = min(first.get(sid, shard["time_min"]), shard["time_min"])
    t0 = torch.tensor([first[s] for s in dataset.stations], dtype=torch.int64)
    station, start = torch.as_tensor(dataset.index).T
    last_hour = t0[station] + (start + dataset.past + dataset.horizon - 1) * HOUR
    return torch.nonzero(last_hour > after).flatten().tolist()
