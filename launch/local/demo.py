"""`crosscity demo`: shipped Beijing data -> 4 city datasets -> 4 x 2 hierarchical training -> table."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from crosscity.data_prep import cli as prep_cli
from crosscity.launch.local.run import preflight, run_command

DEMO_CONFIG = Path(str(resources.files("crosscity.launch.local") / "demo.yaml"))


def run_demo(out: Path, overrides: list[str]) -> int:
    data_dir = out / "data"
    overrides = [f"data.dir={data_dir}", f"train.run_dir={out}", *overrides]
    preflight(DEMO_CONFIG, overrides)  # a bad key or host fails here, before 420k rows are prepared
    print(f"[demo] the shipped Beijing data (12 stations -> 4 cities) in {data_dir}", flush=True)
    code = prep_cli.main(["--preset", "beijing", "--out", str(data_dir)])  # a no-op once prepared
    if code != 0:
        return code
    code = run_command(DEMO_CONFIG, overrides)
    if code != 0:
        return code  # run_command printed the table (wall time = the whole demo, prep included)
    print(
        f"[demo] run directory: {out} "
        "(config.yaml, metrics/, final/model.pt, summary.json, report.md, plots/)"
    )
    return 0
