"""`crosscity run`: check the config, the host and the data before any process starts, launch locally,
then pool the cities' results, write the report (the launcher reports; a rank only trains) and end
with the result table (launch/report/summary_table.py) and where the report is."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from crosscity.config import Config
from crosscity.core.exit_codes import EXIT_BAD_INPUT
from crosscity.data_prep.errors import DataPrepError
from crosscity.data_prep.run_checks import RunData, check_run_data
from crosscity.launch.local.host import ThisHost
from crosscity.launch.local.launcher import LocalLauncher
from crosscity.launch.preflight import check_host
from crosscity.launch.report.run_report import report_after_run
from crosscity.launch.report.summary import write_summary
from crosscity.launch.report.summary_table import format_summary
from crosscity.launch.run_dir import load_run, write_run


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


def finished(run_dir: Path, cfg: Config) -> bool:
    """Every city left its final result: rerunning the same config has nothing left to do."""
    return all((run_dir / "final" / f"city{c}.json").is_file() for c in range(cfg.topology.cities))


def preflight(config: str | Path | None, overrides: Sequence[str], run_dir: Path | None = None) -> Config:
    """The config (ConfigError) and this host (HostError): everything checked before data is touched."""
    cfg = load_run(config, overrides, run_dir)
    check_host(cfg, ThisHost())
    return cfg


def run_command(
    config: str | Path | None, overrides: Sequence[str], run_dir: Path | None = None, echo: bool = True
) -> int:
    started = time.perf_counter()
    cfg = preflight(config, overrides, run_dir)
    try:
        data = check_data(cfg)  # before the run dir is even created
    except DataPrepError as exc:
        print(f"crosscity run: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    path = write_run(cfg)
    data.write(path)
    if not finished(path, cfg):
        print(
            f"[launch] {cfg.topology.cities} cities x {cfg.topology.ranks_per_city} ranks, "
            f"wan.algorithm={cfg.wan.algorithm} "
            f"codec={cfg.wan.codec}, run dir {path}\n[launch] {data.line()}",
            flush=True,
        )
        code = LocalLauncher(path, cfg, echo=echo).run()
    else:
        print(f"[launch] {path} has already finished: nothing to run", flush=True)
        code = 0
    summary = write_summary(path, cfg, command_seconds(started), dataset=data)  # whatever cities finished
    if code != 0:
        return code
    report_after_run(path)
    if summary is not None:
        print(format_summary(summary))
    print(f"[run] report: {path / 'report.md'} (plots in {path / 'plots'}; run directory {path})", flush=True)
    return 0
