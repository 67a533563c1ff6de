"""crosscity sweep as one throttled array on the real dev cluster: failures, report, retry, MaxArraySize."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.slurm import REPO, max_array_size, require_slurm, wait_finished
from tests.helpers.sweep import jobs_of, sweep


def max_overlap(intervals: list[list[float]]) -> int:
    events = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda t: (t[0], t[1])
    )
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def report(sweep_dir: Path) -> str:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from crosscity.launch.slurm.sweep import report_main; "
            f"sys.exit(report_main([{str(sweep_dir)!r}]))",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_throttled_sweep_failed_point_report_and_retry(small_dataset: Path, tmp_path: Path) -> None:
    require_slurm()
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    (sweep_dir / "fail2").touch()
    done = sweep(sweep_dir, 4, "--parallel", "2", data=small_dataset)
    assert done.returncode == 0, done.stderr
    jobs = jobs_of(sweep_dir)
    assert len(jobs["arrays"]) == 1
    assert "#SBATCH --array=0-3%2" in (sweep_dir / "slurm" / "sweep-0.sbatch").read_text()
    states = wait_finished([e["job"] for e in jobs["entries"]], timeout_s=60)
    assert sorted(s.state for s in states.values()) == ["COMPLETED", "COMPLETED", "COMPLETED", "FAILED"]
    intervals = [json.loads(line) for line in (sweep_dir / "intervals.jsonl").read_text().splitlines()]
    assert len(intervals) == 3 and max_overlap(intervals) <= 2
    text = report(sweep_dir)
    rows = list(csv.DictReader((sweep_dir / "report.csv").open()))
    assert [r["point"] for r in rows] == ["p003", "p001", "p000", "p002"]  # sorted by val_rmse, failed last
    assert rows[-1]["state"] == "FAILED" and "failing on purpose" in text
    assert (sweep_dir / "report.png").stat().st_size > 1000 and "| p003 |" in (
        sweep_dir / "report.md"
    ).read_text()

    (sweep_dir / "fail2").unlink()
    retry = subprocess.run(
        [sys.executable, "-m", "crosscity", "sweep", "--retry-failed", str(sweep_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert retry.returncode == 0 and "retrying 1 failed point(s): p002" in retry.stdout, retry.stderr
    jobs = jobs_of(sweep_dir)
    assert len(jobs["arrays"]) == 2
    retried = next(e for e in jobs["entries"] if e["name"] == "p002")
    assert retried["job"] == f"{jobs['arrays'][1]}_0"
    assert wait_finished([retried["job"]], timeout_s=60)[retried["job"]].state == "COMPLETED"
    assert len((sweep_dir / "intervals.jsonl").read_text().splitlines()) == 4  # only p002 ran again
    report(sweep_dir)
    rows = list(csv.DictReader((sweep_dir / "report.csv").open()))
    assert {r["state"] for r in rows} == {"COMPLETED"} and len(rows) == 4


def test_sweep_larger_than_max_array_size_is_split_and_all_points_run(
    small_dataset: Path, tmp_path: Path
) -> None:
    require_slurm()
    n = max_array_size() + 2
    sweep_dir = tmp_path / "big"
    done = sweep(sweep_dir, n, "--parallel", "4", data=small_dataset, sleep_s=0.1)
    assert done.returncode == 0, done.stderr
    jobs = jobs_of(sweep_dir)
    assert len(jobs["arrays"]) == 2 and len(jobs["entries"]) == n
    second = (sweep_dir / "slurm" / "sweep-1.sbatch").read_text()
    assert "#SBATCH --array=0-1%4" in second
    states = wait_finished([e["job"] for e in jobs["entries"]], timeout_s=60)
    assert {s.state for s in states.values()} == {"COMPLETED"}
    assert len((sweep_dir / "intervals.jsonl").read_text().splitlines()) == n
    assert max_overlap([json.loads(x) for x in (sweep_dir / "intervals.jsonl").read_text().splitlines()]) <= 4
