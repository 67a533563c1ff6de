"""`crosscity run`: resolve the config, check the data before any process starts, launch locally,
end with the result table (launch/report/summary_table.py) and where the report is."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from crosscity.config.schema import Config, load_config
from crosscity.core.atomic_io import atomic_write_text
from crosscity.data_prep.errors import DataPrepError
from crosscity.data_prep.run_checks import RunData, check_run_data
from crosscity.launch.local.launcher import LocalLauncher
from crosscity.launch.report.summary_table import format_summary
from crosscity.launch.run_dir import resolve_run


def check_data(cfg: Config) -> RunData:
    """Fail in the launcher with one line, not in eight ranks with eight tracebacks: the cities (no
    silent subset), a complete dataset version, intact shards, the target, windows that fit, the
    global statistics. Raises DataPrepError."""
    return check_run_data(cfg)


def command_seconds(fallback_start: float) -> float:
    """Wall time of this whole command: the process's age (imports and data checks included)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - fallback_start


def finish_summary(run_dir: Path, data: RunData, wall_s: float) -> dict:
    """summary.json gets the end-to-end wall time (the trainer's is the training loop's alone) and
    the dataset version of each city, recorded here on the launcher side."""
    path = run_dir / "summary.json"
    summary = json.loads(path.read_text())
    summary["train_wall_s"] = summary.get("train_wall_s", summary["wall_s"])
    summary["wall_s"] = wall_s
    summary["dataset"] = asdict(data)
    atomic_write_text(path, json.dumps(summary, indent=2))
    return summary


def run_command(
    config: str | Path | None, overrides: list[str], run_dir: Path | None = None, echo: bool = True
) -> int:
    started = time.perf_counter()
    try:
        data = check_data(load_config(config, overrides))  # before the run dir is even created
    except DataPrepError as exc:
        print(f"crosscity run: {exc}", file=sys.stderr)
        return 2
    cfg, path = resolve_run(config, overrides, run_dir)
    data.write(path)
    print(
        f"[launch] {cfg.topology.cities} cities x {cfg.topology.ranks_per_city} ranks, "
        f"wan.algorithm={cfg.wan.algorithm} "
        f"codec={cfg.wan.codec}, run dir {path}\n[launch] {data.line()}",
        flush=True,
    )
    code = LocalLauncher(path, cfg, echo=echo).run()
    if code != 0:
        return code
    summary = finish_summary(path, data, command_seconds(started))
    print(format_summary(summary))
    print(f"[run] report: {path / 'report.md'} (plots in {path / 'plots'}; run directory {path})", flush=True)
    return 0
