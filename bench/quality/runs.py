"""One benchmark row for one seed: train through the local launcher, score with `crosscity eval`, and
read back per-city and overall validation and test sums, per-hour sums and the learning curve."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crosscity.bench.quality.datasets import Split
from crosscity.bench.quality.rows import Row
from crosscity.config import load_config, to_dict
from crosscity.core.forecast_scores import pool_metrics
from crosscity.data_prep.run_checks import check_run_data
from crosscity.launch.eval_command import write_eval
from crosscity.launch.local.launcher import LocalLauncher
from crosscity.launch.report.summary import write_summary
from crosscity.launch.run_dir import resolve_run

EVAL_SPLITS = ("val", "test")


class RunFailed(RuntimeError):
    """A benchmark run exited non-zero; the message names it and its log folder."""


@dataclass(frozen=True)
class Launch:
    """One training run of a row: where, with which overrides, and which cities it scores."""

    run_dir: Path
    overrides: tuple[str, ...]
    rank_steps: int  # ranks x steps: the unit of work for rate and ETA


def launches(
    row: Row, split: Split, data: Path, pooled_data: Path, run_dir: Path, ranks: int, steps: int
) -> list[Launch]:
    cities = len(split.cities)
    if row.layout == "pooled":
        layout = [f"data.dir={pooled_data}", "topology.cities=1", f"topology.ranks_per_city={cities * ranks}"]
        return [Launch(run_dir, (*layout, *row.overrides), cities * ranks * steps)]
    if row.layout == "per_city":
        return [
            Launch(
                run_dir / city,
                (
                    f"data.dir={data}",
                    f"data.cities={city}",
                    "topology.cities=1",
                    f"topology.ranks_per_city={ranks}",
                    *row.overrides,
                ),
                ranks * steps,
            )
            for city in sorted(split.cities)
        ]
    layout = [f"data.dir={data}", f"topology.cities={cities}", f"topology.ranks_per_city={ranks}"]
    return [Launch(run_dir, (*layout, *row.overrides), cities * ranks * steps)]


def train_and_score(config: Path, launch: Launch, common: list[str]) -> bool:
    """Run it unless a finished run with exactly this config is already there; then score it.
    Returns True when it trained (False: reused)."""
    cfg_now = load_config(config, [*common, *launch.overrides])
    cfg_now.train.run_dir = str(launch.run_dir)  # as resolve_run records it
    saved = launch.run_dir / "config.yaml"
    done = all((launch.run_dir / f"eval_{s}.json").is_file() for s in EVAL_SPLITS)
    if done and saved.is_file() and yaml.safe_load(saved.read_text()) == to_dict(cfg_now):
        return False
    shutil.rmtree(launch.run_dir, ignore_errors=True)  # a leftover checkpoint would be resumed
    cfg, path = resolve_run(config, [*common, *launch.overrides], launch.run_dir)
    data = check_run_data(cfg)  # as `crosscity run` does: dataset.json names the cities (certificates)
    data.write(path)
    code = LocalLauncher(path, cfg, echo=False).run()
    if code != 0:
        raise RunFailed(f"{launch.run_dir}: training exited {code}; logs in {launch.run_dir / 'logs'}")
    write_summary(path, cfg, dataset=data)  # pools the cities and puts the chosen model in final/model.pt
    for split in EVAL_SPLITS:
        write_eval(path, split)
    return True


def _add(a: dict[str, float] | None, b: dict[str, float]) -> dict[str, float]:
    return dict(b) if a is None else {k: a[k] + b[k] for k in a}


def _curve(run_dirs: list[Path]) -> list[list[float]]:
    """Pooled validation RMSE per evaluation step, over all the row's runs (per-city: 4 runs)."""
    by_step: dict[int, dict[str, float]] = {}
    for run_dir in run_dirs:
        for r in json.loads((run_dir / "summary.json").read_text())["final_model"]["passes"]:
            by_step[r["step"]] = _add(by_step.get(r["step"]), r["sums"])
    return [[step, pool_metrics([sums])["rmse"]] for step, sums in sorted(by_step.items())]


def collect(row: Row, split: Split, done: list[Launch]) -> dict[str, Any]:
    """Per-city and overall sums of val and test, per-hour sums, curve, final steps, wall time."""
    city_of = split.station_city()
    cities: dict[str, dict[str, dict[str, float]]] = {c: {} for c in sorted(split.cities)}
    overall: dict[str, dict[str, float]] = {}
    by_hour: dict[str, list[dict[str, float]]] = {}
    for launch in done:
        for s in EVAL_SPLITS:
            result = json.loads((launch.run_dir / f"eval_{s}.json").read_text())
            for city in result["cities"]:
                if row.layout == "pooled":  # one city of every station: regroup its stations
                    for station, m in city["by_station"].items():
                        name = city_of[station]
                        cities[name][s] = _add(cities[name].get(s), m["sums"])
                else:
                    cities[city["name"]][s] = _add(cities[city["name"]].get(s), city["sums"])
            overall[s] = _add(overall.get(s), result["overall"]["sums"])
            hours = [h["sums"] for h in result["overall"]["by_hour"]]
            by_hour[s] = (
                hours if s not in by_hour else [_add(a, b) for a, b in zip(by_hour[s], hours, strict=True)]
            )
    summaries = [json.loads((launch.run_dir / "summary.json").read_text()) for launch in done]
    return {
        "row": row.name,
        "layout": row.layout,
        "overrides": list(row.overrides),
        "cities": cities,
        "overall": overall,
        "by_hour": by_hour,
        "curve": _curve([launch.run_dir for launch in done]),
        "final_steps": [s["final_model"]["step"] for s in summaries],
        "train_wall_s": sum(s["wall_s"] for s in summaries),
        "wan_bytes": sum(s["wan_bytes_sent"] for s in summaries),
    }
