"""summary.json: the cities' final results pooled, the WAN bytes, and what flat data parallel would
have sent. Written by the process that started the run (torch-free: login nodes, the coordinator job).

It also settles which model is the run's: with train.final_model=best, the validation pass with the
lowest RMSE pooled over the cities (among those every reporting city has); final/model.pt becomes that
pass's candidate (final/candidates/, written by the ranks) and the summary's validation numbers are
that pass's, so `crosscity eval` of final/model.pt reproduces them.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from crosscity.config import Config
from crosscity.core.atomic_io import atomic_write, atomic_write_text
from crosscity.core.forecast_scores import pool_metrics
from crosscity.data_prep.run_checks import RUN_RECORD, RunData
from crosscity.train.distributed.topology import Topology
from crosscity.train.observe.metrics_log import read_records
from crosscity.train.wan.collectives import world_ring_bytes


def city_results(run_dir: Path) -> list[dict[str, Any]]:
    return sorted(
        (json.loads(p.read_text()) for p in (Path(run_dir) / "final").glob("city*.json")),
        key=lambda r: r["city"],
    )


def candidate(run_dir: Path, step: int) -> Path:
    """The global model of the validation pass at `step` (train/run_summary.py write_candidate)."""
    return Path(run_dir) / "final" / "candidates" / f"step{step}.pt"


def pooled_passes(results: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """Validation passes by step, each with every reporting city's entry (city order): the steps
    some city lacks (it left, or it has not got there) are left out."""
    steps: dict[int, list[dict[str, Any]]] = {}
    for r in results:
        for entry in r.get("history", []):
            steps.setdefault(entry["step"], []).append(entry)
    return {step: entries for step, entries in sorted(steps.items()) if len(entries) == len(results)}


def choose_final_model(
    run_dir: Path, cfg: Config, results: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(what final/model.pt holds, each city's validation entry of that pass); puts the chosen
    candidate into final/model.pt."""
    passes = pooled_passes(results)
    last = max((e["step"] for r in results for e in r.get("history", [])), default=cfg.train.steps)
    folder = Path(run_dir) / "final"
    candidates = [s for s in passes if candidate(run_dir, s).is_file()]
    step = last
    if cfg.train.final_model == "best" and candidates:
        step = min(candidates, key=lambda s: (pool_metrics([e["sums"] for e in passes[s]])["rmse"], s))
        model = candidate(run_dir, step).read_bytes()
        atomic_write(folder / "model.pt", lambda fh: fh.write(model))
    entries = passes.get(step) or [{"sums": r["sums"]} for r in results]
    chosen = {
        "step": step,
        "selected_by": cfg.train.final_model if step in candidates else "last",
        "last_step": last,
        "stopped_early": last < cfg.train.steps,
        "init_from": cfg.train.init_from,
        "passes": [_pooled_pass(s, [e["sums"] for e in entries_s]) for s, entries_s in passes.items()],
    }
    return chosen, entries


def write_summary(
    run_dir: Path, cfg: Config, wall_s: float | None = None, dataset: RunData | None = None
) -> dict[str, Any] | None:
    """`wall_s`: the whole command's (else the longest city's training); `dataset`: what the run
    trained on (else RUN_DIR/dataset.json's, if the launcher wrote one). None while no city finished."""
    results = city_results(run_dir)
    if not results:
        return None
    final_model, chosen = choose_final_model(run_dir, cfg, results)
    cities = [
        {
            "city": r["city"],
            "name": r["name"],
            "samples": r["samples"],
            **{f"val_{k}": v for k, v in pool_metrics([e["sums"]]).items()},
            "dataset": r.get("dataset"),
            **({"new_hours": new} if (new := _new_hours([e])) else {}),
        }
        for r, e in zip(results, chosen, strict=True)
    ]
    overall = pool_metrics([e["sums"] for e in chosen])
    wan = read_records(run_dir, "wan")
    sent = sum(r["bytes_sent"] for r in wan)
    topo = cfg.topology
    # What flat data parallel puts on the WAN for the same steps: one fp32 gradient ring hop out of each city.
    words = results[0]["n_params"] + 1
    leaving_city = world_ring_bytes(4 * words, Topology(0, topo.cities, 0, topo.ranks_per_city)).sent
    flat = cfg.train.steps * topo.cities * leaving_city
    summary = {
        "cities": cities,
        "overall": {f"val_{k}": v for k, v in overall.items()},
        "wan_bytes_sent": sent,
        "flat_dp_wan_bytes": flat if topo.cities > 1 else 0,
        "wan_reduction": flat / sent if sent and topo.cities > 1 else None,
        "wan_rounds": len({(r.get("fragment"), r.get("coordinator_round", r["round"])) for r in wan}),
        "train_wall_s": max(r["train_wall_s"] for r in results),
        "wall_s": wall_s if wall_s is not None else max(r["train_wall_s"] for r in results),
        "steps": cfg.train.steps,
        "algorithm": cfg.wan.algorithm,
        "codec": cfg.wan.codec,
        "security": "INSECURE: plaintext, no identities" if cfg.security.insecure else "mutual TLS 1.3",
        "audit": "audit.jsonl" if (Path(run_dir) / "audit.jsonl").is_file() else None,
        "final_model": final_model,
    }
    new_hours = _new_hours(chosen)
    if new_hours:
        summary["new_hours"] = new_hours
    record = Path(run_dir) / RUN_RECORD
    if dataset is not None:
        summary["dataset"] = asdict(dataset)
    elif record.is_file():
        summary["dataset"] = json.loads(record.read_text())
    atomic_write_text(Path(run_dir) / "summary.json", json.dumps(summary, indent=2))
    return summary


def _pooled_pass(step: int, sums: list[dict[str, float]]) -> dict[str, Any]:
    """One validation pass over every city: the metrics and the raw sums (to pool runs again)."""
    return {"step": step, **pool_metrics(sums), "sums": {k: sum(s[k] for s in sums) for k in sums[0]}}


def _new_hours(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """RMSE on the hours appended since the init_from run: its model (before) and this one (after)."""
    entries = [e for e in entries if "new_hours" in e and e["new_hours"]["before"]["n_windows"] > 0]
    if not entries:
        return None
    return {when: pool_metrics([e["new_hours"][when] for e in entries]) for when in ("before", "after")}
