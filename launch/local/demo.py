"""`crosscity demo`: shipped Beijing data -> 4 city datasets -> 4 x 2 hierarchical training -> table."""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path

from crosscity.data_prep import cli as prep_cli
from crosscity.launch.local.run import preflight, run_command

DEMO_CONFIG = Path(str(resources.files("crosscity.launch.local") / "demo.yaml"))


def format_summary(summary: dict, wall_s: float) -> str:
    rows = [f"{'city':<10}{'samples':>10}{'val RMSE':>11}{'persistence':>13}{'val MAE':>10}   (ug/m3)"]
    for c in summary["cities"]:
        rows.append(
            f"{c['name']:<10}{c['samples']:>10}{c['val_rmse']:>11.2f}{c['val_persistence_rmse']:>13.2f}{c['val_mae']:>10.2f}"
        )
    o = summary["overall"]
    rows.append(
        f"{'overall':<10}{sum(c['samples'] for c in summary['cities']):>10}{o['val_rmse']:>11.2f}"
        f"{o['val_persistence_rmse']:>13.2f}{o['val_mae']:>10.2f}"
    )
    rows.append(
        f"WAN bytes sent: {summary['wan_bytes_sent'] / 1e6:.2f} MB in {summary['wan_rounds']} rounds "
        f"({summary['algorithm']}, codec {summary['codec']});  wall time {wall_s:.0f} s"
    )
    if summary.get("wan_reduction"):
        rows.append(
            f"flat data parallel would have sent {summary['flat_dp_wan_bytes'] / 1e6:.0f} MB over the WAN: "
            f"{summary['wan_reduction']:.0f}x more"
        )
    return "\n".join(rows)


def run_demo(out: Path, overrides: list[str]) -> int:
    start = time.perf_counter()
    data_dir = out / "data"
    overrides = [f"data.dir={data_dir}", f"train.run_dir={out}", *overrides]
    preflight(DEMO_CONFIG, overrides)  # a bad key or host fails here, before 420k rows are prepared
    if not all((data_dir / c / "manifest.json").is_file() for c in ("north", "east", "west", "centre")):
        print(
            f"[demo] preparing the shipped Beijing data (12 stations -> 4 cities) into {data_dir}", flush=True
        )
        code = prep_cli.main(["--preset", "beijing", "--out", str(data_dir)])
        if code != 0:
            return code
    code = run_command(DEMO_CONFIG, overrides)
    if code != 0:
        return code
    summary = json.loads((out / "summary.json").read_text())
    print(format_summary(summary, time.perf_counter() - start))
    print(
        f"[demo] run directory: {out} "
        "(config.yaml, metrics/, final/model.pt, summary.json, report.md, plots/)"
    )
    return 0
