"""`train.init_from=RUN_DIR`: continue from a finished run's final model, typically after `crosscity
prep append` brought new hours (docs/model_quality.md says what is and is not carried over).

Carried: the final model's parameters (the best one by validation when that run selected it) and, when
both runs use the same outer optimizer (diloco; streaming with the same fragments), its state: the
Nesterov momentum, which the coordinator reads from that run's coordinator state
(crosscity/federation/coordinator.py). Not carried: the inner optimizer's moments, the learning-rate
schedule, error-feedback residuals, the data position.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crosscity.train.data.windows import HOUR, CityWindows


def load_init_model(model: nn.Module, source: Path) -> None:
    state = torch.load(Path(source) / "final" / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])


def trained_on(city: CityWindows) -> dict[str, Any]:
    """What a run records per city: the dataset version it read and that version's time span."""
    return {"version": city.manifest["version"], "time_span": city.manifest["time_span"]}


def previous_span_end(source: Path, city: str) -> int | None:
    """Last hour (unix seconds) of `city`'s data in the run at `source`: its result file's record
    (final/city<C>.json); None when that run has none for it."""
    for path in (Path(source) / "final").glob("city*.json"):
        result = json.loads(path.read_text())
        if result.get("name") == city and result.get("dataset"):
            return int(result["dataset"]["time_span"][1])
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
