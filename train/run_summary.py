"""The end of a run: final model, summary.json (the demo's table), report and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from crosscity.config.schema import Config, to_dict
from crosscity.core.atomic_io import atomic_write, atomic_write_text
from crosscity.launch.report.run_report import write_report
from crosscity.train.distributed.topology import Topology
from crosscity.train.evaluate import pool_metrics
from crosscity.train.observe.metrics_log import read_records
from crosscity.train.wan.collectives import world_ring_bytes


def new_hours_metrics(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """RMSE on the hours appended since the init_from run, before (its model) and after this run."""
    entries = [e for e in entries if e["before"]["n_windows"] > 0]
    if not entries:
        return None
    return {when: pool_metrics([e[when] for e in entries]) for when in ("before", "after")}


def write_summary(
    run_dir: Path,
    cfg: Config,
    gathered: list[dict[str, Any]],
    model: nn.Module,
    wall_s: float,
    final_model: dict[str, Any] | None = None,
) -> dict:
    """`gathered` holds one entry per rank; local rank 0 of each city carries that city's eval sums
    (of the final model), the dataset version it trained on and, with init_from, its new-hours sums.
    `final_model` says which step's model final/model.pt holds and why."""
    leads = sorted((g for g in gathered if g["sums"] is not None), key=lambda g: g["city"])
    cities = []
    for entry in leads:
        samples = sum(g["samples"] for g in gathered if g["city"] == entry["city"])
        new_hours = new_hours_metrics([entry["new_hours"]]) if "new_hours" in entry else None
        cities.append(
            {
                "city": entry["city"],
                "name": entry["name"],
                "samples": samples,
                **{f"val_{k}": v for k, v in pool_metrics([entry["sums"]]).items()},
                "dataset": entry.get("dataset"),
                **({"new_hours": new_hours} if new_hours else {}),
            }
        )
    overall = pool_metrics([g["sums"] for g in leads])
    wan = read_records(run_dir, "wan")
    sent = sum(r["bytes_sent"] for r in wan)
    n_params = sum(p.numel() for p in model.parameters())
    topo = cfg.topology
    # What flat data parallel puts on the WAN for the same steps: one fp32 gradient ring hop out of each city.
    leaving_city = world_ring_bytes(4 * (n_params + 1), Topology(0, topo.cities, 0, topo.ranks_per_city))
    flat = cfg.train.steps * topo.cities * leaving_city.sent
    summary = {
        "cities": cities,
        "overall": {f"val_{k}": v for k, v in overall.items()},
        "wan_bytes_sent": sent,
        "flat_dp_wan_bytes": flat if topo.cities > 1 else 0,
        "wan_reduction": flat / sent if sent and topo.cities > 1 else None,
        "wan_rounds": len({r["round"] for r in wan}),
        "wall_s": wall_s,
        "steps": cfg.train.steps,
        "algorithm": cfg.wan.algorithm,
        "codec": cfg.wan.codec,
        "final_model": final_model,
        "dataset": {g["name"]: g.get("dataset") for g in leads},
    }
    new_hours = new_hours_metrics([g["new_hours"] for g in leads if "new_hours" in g])
    if new_hours:
        summary["new_hours"] = new_hours
    atomic_write_text(Path(run_dir) / "summary.json", json.dumps(summary, indent=2))
    final = Path(run_dir) / "final" / "model.pt"
    state = {"model": model.state_dict(), "config": to_dict(cfg)}
    atomic_write(final, lambda fh: torch.save(state, fh))
    write_report(run_dir)  # report.md + plots/*.png (loss, validation, time breakdown, WAN bytes)
    return summary
