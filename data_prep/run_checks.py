"""The data checks a training run depends on, done once before any rank starts or any job is submitted.

`crosscity run` (launch/local/run.py check_data), `crosscity submit` and `crosscity sweep` call
check_run_data; a failure is one line naming the config key and what the data allows, never a
traceback in eight ranks. Torch-free: submit runs on login nodes. The run records which dataset
version of each city it trains on (RUN_DIR/dataset.json, written by the launcher side).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crosscity.core.atomic_io import atomic_write_text
from crosscity.data_prep.dataset import city_manifest, load_global_stats, read_dataset
from crosscity.data_prep.errors import DatasetError, RunDataError
from crosscity.data_prep.splits import FRACTIONS, split_ranges, window_starts
from crosscity.data_prep.verify import verify_dataset

if TYPE_CHECKING:
    from crosscity.config import Config

RUN_RECORD = "dataset.json"
VERIFY_LEVEL = {"full": "full", "quick": "quick", "off": "structure"}


@dataclass
class RunData:
    """What a run trains on: the dataset root, its version and each city's version, in topology order."""

    data_dir: str
    dataset_version: int
    cities: dict[str, int]
    verify: str

    def line(self) -> str:
        cities = ", ".join(f"{c} v{v}" for c, v in self.cities.items())
        return f"data: {self.data_dir} dataset version {self.dataset_version} ({cities})"

    def write(self, run_dir: Path) -> None:
        atomic_write_text(Path(run_dir) / RUN_RECORD, json.dumps(asdict(self), indent=1) + "\n")


def resolve_cities(data_dir: str | Path, cities: list[str], n_cities: int) -> list[str]:
    """The city folders a run trains, in topology order: `data.cities`, else every prepared city.

    Never a silent subset: fewer `topology.cities` than prepared cities needs `data.cities` to say
    which ones (the launcher and every rank call this, so they agree on the index -> name mapping).
    """
    root = Path(data_dir)
    try:
        prepared = sorted(read_dataset(root)["cities"])
    except DatasetError as exc:  # its message says what is wrong and what to run
        raise RunDataError(f"data.dir: {exc}") from None
    if cities:
        unknown = [c for c in cities if c not in prepared]
        if unknown:
            raise RunDataError(
                f"data.cities: {unknown[0]!r} is not a prepared city of {root}; "
                f"allowed: {', '.join(prepared)}"
            )
        return list(cities)
    if len(prepared) > n_cities:
        raise RunDataError(
            f"topology.cities={n_cities} but {root} has {len(prepared)} prepared cities "
            f"({', '.join(prepared)}): name the {n_cities} to train with data.cities=NAME,... "
            f"or set topology.cities={len(prepared)}"
        )
    if len(prepared) < n_cities:
        raise RunDataError(
            f"topology.cities={n_cities} but {root} has only {len(prepared)} prepared cities "
            f"({', '.join(prepared)}): set topology.cities={len(prepared)} or prepare more cities"
        )
    return prepared


def _check_window(cfg: Config, city: str, m: dict[str, Any]) -> None:
    """past + horizon hours must leave validation windows in at least one station of the city."""
    span = cfg.data.past_hours + cfg.data.horizon_hours
    by_station: dict[int, list[int]] = {}
    for s in m["shards"]:
        by_station.setdefault(s["station_id"], []).extend([s["time_min"], s["time_max"]])
    hours = [(max(t) - min(t)) // 3600 + 1 for t in by_station.values()]
    longest = max(hours, default=0)
    if any(window_starts(h, span, FRACTIONS, "val") for h in hours):
        return
    lo, hi = split_ranges(longest, 0, FRACTIONS)["val"]
    raise RunDataError(
        f"data.past_hours={cfg.data.past_hours} + data.horizon_hours={cfg.data.horizon_hours} = {span} h: "
        f"no validation window in city {city} (its longest station spans {longest} h; the validation split "
        f"is {hi - lo} h after a gap of one window); allowed: past_hours + horizon_hours <= {(hi - lo) // 2}"
    )


def check_run_data(cfg: Config) -> RunData:
    """Everything the trainer needs from the data, checked once: the cities and the complete dataset
    version, shards (data.verify), the target in every city, windows that fit, global statistics."""
    d = cfg.data
    root = Path(d.dir)
    names = resolve_cities(root, d.cities, cfg.topology.cities)
    verified = verify_dataset(root, VERIFY_LEVEL[d.verify], cities=names)
    ds = read_dataset(root)
    for city in names:
        m = city_manifest(root, city, ds)
        if d.target not in m["targets"]:
            raise RunDataError(
                f"data.target={d.target!r}: not a target of city {city} (its schema's targets: "
                f"{', '.join(m['targets'])}); allowed: {', '.join(m['targets'])}"
            )
        _check_window(cfg, city, m)
    if d.stats == "global":
        load_global_stats(root, ds)
    return RunData(str(root.resolve()), verified.version, {c: verified.cities[c] for c in names}, d.verify)


def check_runs_data(cfgs: Iterable[Config]) -> None:
    """check_run_data for each distinct data setting of several runs (a sweep's points)."""
    seen = set()
    for cfg in cfgs:
        key = json.dumps([asdict(cfg.data), cfg.topology.cities], sort_keys=True)
        if key not in seen:
            seen.add(key)
            check_run_data(cfg)
