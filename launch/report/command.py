"""`crosscity report DIR`: a run directory gets a run report, a sweep directory a sweep table."""

from __future__ import annotations

import sys
from pathlib import Path

from crosscity.launch.slurm.sweep import is_sweep_dir, report_main


def main(argv: list[str]) -> int:
    target = next((a for a in argv if not a.startswith("-")), None)
    if target is not None and is_sweep_dir(Path(target)):
        return report_main(argv)
    if target is not None and not Path(target).is_dir():
        print(
            f"crosscity report: {target} is not a directory (expected a run or sweep directory)",
            file=sys.stderr,
        )
        return 2
    from crosscity.launch.report.run_report import main as run_report_main

    return run_report_main(argv)
