"""crosscity sweep / report: throttling, splitting past MaxArraySize, failed points and --retry-failed.

The point payload is a small Python script (not the trainer) so that a sweep of several points
finishes in seconds; it records when it ran, so the throttle can be checked from real times.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
from crosscity.launch.slurm.sweep import grid_points, parse_grid

from crosscity.config.schema import ConfigError
from tests.test_slurm_cluster import REPO, max_array_size, require_slurm, wait_finished

CONFIG = REPO / "configs" / "beijing_mlp.yaml"
PAYLOAD = """
import json, sys, time, pathlib, yaml
run_dir = pathlib.Path(sys.argv[1])
seed = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["seed"]
start = time.time()
time.sleep(float(sys.argv[2]))
print(f"payload seed={seed}", flush=True)
if (run_dir.parents[1] / f"fail{seed}").exists():
    print("failing on purpose", flush=True)
    sys.exit(3)
with open(run_dir.parents[1] / "intervals.jsonl", "a") as fh:
    fh.write(json.dumps([start, time.time()]) + "\\n")
summary = {"overall": {"val_rmse": 10.0 - seed, "val_mae": 1.0}, "wall_s": 1.0}
(run_dir / "summary.json").write_text(json.dumps(summary))
"""


def sweep(sweep_dir: Path, seeds: int, *args: str, sleep_s: float = 1.0) -> subprocess.CompletedProcess:
    payload = sweep_dir.parent / "payload.py"
    payload.write_text(PAYLOAD)
    grid = "train.seed=" + ",".join(str(s) for s in range(seeds))
    cmd = [
        sys.executable,
        "-m",
        "crosscity",
        "sweep",
        str(CONFIG),
        "--grid",
        grid,
        "--out",
        str(sweep_dir),
        "--command",
        f"{{python}} {payload} {{run_dir}} {sleep_s}",
        "topology.cities=1",
        "topology.ranks_per_city=1",
        *args,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


def max_overlap(intervals: list[list[float]]) -> int:
    events = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda t: (t[0], t[1])
    )
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def jobs_of(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "slurm" / "jobs.json").read_text())


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


def test_grid_and_random_points() -> None:
    grid = parse_grid(["optim.lr=1e-3,3e-3", "wan.codec=none,int8,fp16"])
    points = grid_points(grid)
    assert len(points) == 6 and points[0] == {"optim.lr": "1e-3", "wan.codec": "none"}
    picked = grid_points(grid, n_random=3, seed=7)
    assert len(picked) == 3 and picked == grid_points(grid, n_random=3, seed=7)
    assert all(p in points for p in picked)
    with pytest.raises(ConfigError, match="expected key=v1,v2"):
        parse_grid(["optim.lr"])


def test_bad_point_is_refused_before_anything_runs(tmp_path: Path) -> None:
    done = sweep(tmp_path / "s", 2, "--grid", "wan.codec=none,int9")
    assert done.returncode == 2 and "int9" in done.stderr and "allowed values" in done.stderr
    assert not (tmp_path / "s" / "slurm").exists()


@pytest.mark.slurm
def test_throttled_sweep_failed_point_report_and_retry(tmp_path: Path) -> None:
    require_slurm()
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    (sweep_dir / "fail2").touch()
    done = sweep(sweep_dir, 4, "--parallel", "2")
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


@pytest.mark.slurm
def test_sweep_larger_than_max_array_size_is_split_and_all_points_run(tmp_path: Path) -> None:
    require_slurm()
    n = max_array_size() + 2
    sweep_dir = tmp_path / "big"
    done = sweep(sweep_dir, n, "--parallel", "4", sleep_s=0.1)
    assert done.returncode == 0, done.stderr
    jobs = jobs_of(sweep_dir)
    assert len(jobs["arrays"]) == 2 and len(jobs["entries"]) == n
    second = (sweep_dir / "slurm" / "sweep-1.sbatch").read_text()
    assert "#SBATCH --array=0-1%4" in second
    states = wait_finished([e["job"] for e in jobs["entries"]], timeout_s=60)
    assert {s.state for s in states.values()} == {"COMPLETED"}
    assert len((sweep_dir / "intervals.jsonl").read_text().splitlines()) == n
    assert max_overlap([json.loads(x) for x in (sweep_dir / "intervals.jsonl").read_text().splitlines()]) <= 4


def test_local_sweep_without_slurm(tmp_path: Path) -> None:
    sweep_dir = tmp_path / "local"
    sweep_dir.mkdir()
    (sweep_dir / "fail1").touch()
    done = sweep(sweep_dir, 3, "--local", "--parallel", "2", sleep_s=0.2)
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
