"""`crosscity run`: resolve the config, check the data before any process starts, launch locally."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from crosscity.config.schema import Config
from crosscity.data_prep.errors import DatasetError
from crosscity.data_prep.verify import full_check, quick_check
from crosscity.launch.local.launcher import LocalLauncher
from crosscity.launch.report.summary import write_summary
from crosscity.launch.run_dir import resolve_run
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


def run_command(
    config: str | Path | None, overrides: list[str], run_dir: Path | None = None, echo: bool = True
) -> int:
    cfg, path = resolve_run(config, overrides, run_dir)
    try:
        check_data(cfg)
    except (FileNotFoundError, DatasetError) as exc:
        print(f"crosscity run: {exc}", file=sys.stderr)
        return 2
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
    return code
