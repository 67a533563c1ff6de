"""crosscity sweep --local: the same sweep without Slurm."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers.slurm import REPO
from tests.helpers.sweep import jobs_of, sweep


def test_local_sweep_without_slurm(small_dataset: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "local"
    sweep_dir.mkdir()
    (sweep_dir / "fail1").touch()
    done = sweep(sweep_dir, 3, "--local", "--parallel", "2", data=small_dataset, sleep_s=0.2)
    assert done.returncode == 1 and "3/3 points done (1 failed)" in done.stdout, done.stdout + done.stderr
    assert "ETA" in done.stdout
    jobs = jobs_of(sweep_dir)
    assert {e["name"]: e["exit_code"] for e in jobs["entries"]} == {"p000": 0, "p001": 3, "p002": 0}
    (sweep_dir / "fail1").unlink()
    retry = subprocess.run(
        [sys.executable, "-m", "crosscity", "sweep", "--retry-failed", str(sweep_dir), "--local"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert retry.returncode == 0, retry.stdout + retry.stderr
    assert [e["exit_code"] for e in jobs_of(sweep_dir)["entries"]] == [0, 0, 0]
