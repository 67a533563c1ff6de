"""`crosscity run`: check the config, the host and the data before any process starts, launch locally,
then write the report (the launcher reports; a rank only trains)."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from crosscity.config import Config
from crosscity.core.exit_codes import EXIT_BAD_INPUT
from crosscity.data_prep.errors import DatasetError
from crosscity.data_prep.verify import full_check, quick_check
from crosscity.launch.local.host import ThisHost
from crosscity.launch.local.launcher import LocalLauncher
from crosscity.launch.preflight import check_host
from crosscity.launch.report.run_report import report_after_run
from crosscity.launch.report.summary import write_summary
from crosscity.launch.run_dir import load_run, write_run
from crosscity.train.trainer import city_names


def check_data(cfg: Config) -> None:
    """Fail in the launcher with one line, not in eight ranks with eight tracebacks."""
    for name in city_names(cfg):
        city_dir = Path(cfg.data.dir) / name
        if not (city_dir / "manifest.json").is_file():
            raise FileNotFoundError(
                f"data.dir={cfg.data.dir}: city {name!r} has no manifest.json; run `crosscity prep`"
            )
        if cfg.data.verify == "full":
            full_check(city_dir)
        elif cfg.data.verify == "quick":
            quick_check(city_dir)


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
    cfg = preflight(config, overrides, run_dir)
    try:
        check_data(cfg)
    except (FileNotFoundError, DatasetError) as exc:
        print(f"crosscity run: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    path = write_run(cfg)
    if finished(path, cfg):
        print(f"[launch] {path} has already finished: nothing to run", flush=True)
        return 0
    print(
        f"[launch] {cfg.topology.cities} cities x {cfg.topology.ranks_per_city} ranks, "
        f"wan.algorithm={cfg.wan.algorithm} "
        f"codec={cfg.wan.codec}, run dir {path}",
        flush=True,
    )
    start = time.perf_counter()
    code = LocalLauncher(path, cfg, echo=echo).run()
    write_summary(path, cfg, time.perf_counter() - start)  # what the cities that finished left behind
    if code == 0:
        report_after_run(path)
    return code
