"""A sweep whose points run a tiny payload script instead of training (fast, controllable failures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.helpers.slurm import REPO

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


def sweep(
    sweep_dir: Path, seeds: int, *args: str, data: Path | None = None, sleep_s: float = 1.0
) -> subprocess.CompletedProcess:
    """`data`: a prepared dataset (the sweep checks every point's data before submitting anything)."""
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
        *([f"data.dir={data}", "data.cities=north"] if data else []),
        *args,
    ]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)


def jobs_of(sweep_dir: Path) -> dict:
    return json.loads((sweep_dir / "slurm" / "jobs.json").read_text())
