"""`crosscity eval RUN_DIR [--split val|test] [--data DIR]`: score a finished run's final model.

One process, no distributed world: each city's windows of the split (the run's cities, or every city
of another prepared dataset with the same features) next to persistence, overall, per forecast hour
and per station. A city's windows are scored in the same parts as the run's ranks scored them, so
`--split val` on the run's own data reproduces the run's validation numbers exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crosscity.config import Config, ConfigError, load_config
from crosscity.core.atomic_io import atomic_write_text
from crosscity.core.forecast_scores import pool_metrics
from crosscity.data_prep.dataset import read_dataset
from crosscity.data_prep.errors import DatasetError, RunDataError
from crosscity.data_prep.run_checks import resolve_cities
from crosscity.train.data.windows import SPLITS, CityWindows
from crosscity.train.evaluate import Scores, score, window_options
from crosscity.train.models import build_model

EXAMPLES = """examples:
  crosscity eval runs/demo                      # validation windows of the run's cities
  crosscity eval runs/demo --split test         # the held-out test span: writes runs/demo/eval_test.json
  crosscity eval runs/demo --data data/other    # every city of another dataset with the same features
"""


class EvalError(ValueError):
    """The run or the dataset cannot be scored; the message names which and why."""


def load_run(run_dir: Path) -> tuple[Config, dict[str, Any]]:
    """The run's config (init_from not re-checked: its source may be gone) and final/model.pt."""
    final = run_dir / "final" / "model.pt"
    if not (run_dir / "config.yaml").is_file() or not final.is_file():
        raise EvalError(f"{run_dir}: no config.yaml and final/model.pt (not a finished run directory)")
    cfg = load_config(run_dir / "config.yaml", ["train.init_from="])
    return cfg, torch.load(final, map_location="cpu", weights_only=True)


def _model(cfg: Config, state: dict[str, Any], ds: CityWindows) -> nn.Module:
    model = build_model(cfg.model, cfg.data.past_hours, ds.n_inputs, cfg.data.horizon_hours)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise EvalError(
            f"{ds.city_dir}: {ds.n_inputs} inputs per hour ({', '.join(ds.feature_names)}) do not fit "
            "the run's model: the dataset needs the features the run trained on"
        ) from None
    return model.eval()


def score_city(model: nn.Module, ds: CityWindows, parts: int) -> tuple[dict[str, float], Scores]:
    """The city's sums as the run computed them (one part per rank, added in rank order), and its
    scores per station and hour."""
    scored = [score(model, ds, part=k, parts=parts) for k in range(parts)]
    totals = {k: sum(s.totals()[k] for s in scored) for k in scored[0].totals()}
    whole = scored[0]
    for s in scored[1:]:
        whole = whole + s
    return totals, whole


def described(totals: dict[str, float], scores: list[Scores]) -> dict[str, Any]:
    """Metrics, skill vs persistence, per forecast hour, and the raw sums (to pool them again later)."""
    m = pool_metrics([totals])
    m["skill_pct"] = 100 * (1 - m["rmse"] / m["persistence_rmse"]) if m["persistence_rmse"] else None
    hours = [s.by_hour() for s in scores]
    per_hour = [{k: sum(c[h][k] for c in hours) for k in hours[0][h]} for h in range(len(hours[0]))]
    m["by_hour"] = [{"hour": h + 1, **pool_metrics([s]), "sums": s} for h, s in enumerate(per_hour)]
    return {**m, "sums": totals}


def evaluate_run(run_dir: Path, split: str = "val", data_dir: Path | None = None) -> dict[str, Any]:
    cfg, state = load_run(run_dir)
    root = Path(data_dir or cfg.data.dir)
    if data_dir is None:
        names = resolve_cities(cfg.data.dir, cfg.data.cities, cfg.topology.cities)
    else:
        names = sorted(read_dataset(root)["cities"])
    torch.set_num_threads(1)  # as in the ranks: the same kernels, so the same sums
    cities, all_totals, all_scores, model = [], [], [], None
    for name in names:
        ds = CityWindows(root / name, split=split, **window_options(cfg.data))
        model = model or _model(cfg, state, ds)
        totals, scores = score_city(model, ds, cfg.topology.ranks_per_city)
        stations = {st: pool_metrics([sums]) | {"sums": sums} for st, sums in scores.by_station().items()}
        cities.append({"name": name, **described(totals, [scores]), "by_station": stations})
        all_totals.append(totals)
        all_scores.append(scores)
    overall_totals = {k: sum(t[k] for t in all_totals) for k in all_totals[0]}
    summary = (
        json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    )
    return {
        "run_dir": str(run_dir),
        "split": split,
        "data": str(root),
        "final_model": summary.get("final_model"),
        "cities": cities,
        "overall": described(overall_totals, all_scores),
    }


def format_table(result: dict[str, Any]) -> str:
    head = (
        f"{'city':<10}{'windows':>9}{'RMSE':>9}{'persistence':>13}{'skill %':>9}{'MAE':>8}{'pers. MAE':>11}"
    )
    rows = [f"{result['split']} split of {result['data']}   (ug/m3)", head]
    for name, m in [*((c["name"], c) for c in result["cities"]), ("overall", result["overall"])]:
        rows.append(
            f"{name:<10}{m['n_windows']:>9.0f}{m['rmse']:>9.2f}{m['persistence_rmse']:>13.2f}"
            f"{m['skill_pct'] or 0:>9.1f}{m['mae']:>8.2f}{m['persistence_mae']:>11.2f}"
        )
    h24 = result["overall"]["by_hour"][-1]
    skill = 100 * (1 - h24["rmse"] / h24["persistence_rmse"]) if h24["persistence_rmse"] else 0.0
    rows.append(
        f"forecast hour {h24['hour']}: RMSE {h24['rmse']:.2f}, persistence {h24['persistence_rmse']:.2f} "
        f"(skill {skill:.1f}%)"
    )
    return "\n".join(rows)


def eval_path(run_dir: Path, split: str, data_dir: Path | None) -> Path:
    """eval_<split>.json; eval_<split>_<dataset folder>.json for another dataset."""
    return run_dir / (
        f"eval_{split}.json" if data_dir is None else f"eval_{split}_{Path(data_dir).name}.json"
    )


def write_eval(run_dir: Path, split: str = "val", data_dir: Path | None = None) -> dict[str, Any]:
    result = evaluate_run(run_dir, split, data_dir)
    atomic_write_text(eval_path(run_dir, split, data_dir), json.dumps(result, indent=2))
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="crosscity eval",
        description="Score a finished run's final model on each city's windows of a split, "
        "next to persistence.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run_dir", type=Path, help="a finished run directory (final/model.pt, config.yaml)")
    parser.add_argument("--split", choices=SPLITS, default="val", help="which windows (default val)")
    parser.add_argument("--data", type=Path, help="another prepared dataset with the same features")
    args = parser.parse_args(argv)
    try:
        result = write_eval(args.run_dir, args.split, args.data)
    except (EvalError, ConfigError, DatasetError, RunDataError, FileNotFoundError) as exc:
        print(f"crosscity eval: {exc}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"wrote {eval_path(args.run_dir, args.split, args.data)}")
    return 0
