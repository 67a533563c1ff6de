"""summary.json: the cities' final results pooled, the WAN bytes, and what flat data parallel would
have sent. Written by the process that started the run (torch-free: login nodes, the coordinator job)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from crosscity.config import Config
from crosscity.core.atomic_io import atomic_write_text
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


def write_summary(
    run_dir: Path, cfg: Config, wall_s: float | None = None, dataset: RunData | None = None
) -> dict[str, Any] | None:
    """`wall_s`: the whole command's (else the longest city's training); `dataset`: what the run
    trained on (else RUN_DIR/dataset.json's, if the launcher wrote one). None while no city finished."""
    results = city_results(run_dir)
    if not results:
        return None
    cities = [
        {
            "city": r["city"],
            "name": r["name"],
            "samples": r["samples"],
            **{f"val_{k}": v for k, v in pool_metrics([r["sums"]]).items()},
        }
        for r in results
    ]
    overall = pool_metrics([r["sums"] for r in results])
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
    }
    record = Path(run_dir) / RUN_RECORD
    if dataset is not None:
        summary["dataset"] = asdict(dataset)
    elif record.is_file():
        summary["dataset"] = json.loads(record.read_text())
    atomic_write_text(Path(run_dir) / "summary.json", json.dumps(summary, indent=2))
    return summary
