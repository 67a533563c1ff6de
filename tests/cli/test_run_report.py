"""A rank trains, the launcher reports: `crosscity run` (here through the public API) writes report.md
and plots after the ranks finished, and a report that fails is a warning, never a failed run."""

from __future__ import annotations

from pathlib import Path

import pytest

import crosscity
from tests.helpers.runs import CONFIG, QUICK
from tests.helpers.runs import crosscity as crosscity_command


def test_report_failure_after_a_run_is_a_warning_and_exit_0(
    small_dataset: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "plots").parent.mkdir()
    (run_dir / "plots").write_text("a file where the plots folder should be")  # the report cannot write
    overrides = [
        f"data.dir={small_dataset}",
        "data.cities=north,east",
        "topology.cities=2",
        "train.steps=4",
        *QUICK,
    ]
    assert crosscity.run_local(CONFIG, overrides, run_dir=run_dir, echo=False) == 0
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("[warning]")]
    assert len(warnings) == 1 and "its report was not written" in warnings[0], err
    assert (run_dir / "summary.json").is_file() and (run_dir / "final" / "model.pt").is_file()
    assert not (run_dir / "report.md").exists()
    (run_dir / "plots").unlink()
    done = crosscity_command("report", str(run_dir))  # any time later
    assert done.returncode == 0, done.stderr
    assert (run_dir / "report.md").is_file() and (run_dir / "plots" / "loss.png").is_file()
