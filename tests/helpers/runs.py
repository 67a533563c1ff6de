"""Running the `crosscity` command in tests: in the foreground, in the background, and what it left."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "beijing_mlp.yaml"
QUICK = ["model.hidden=32", "train.eval_every=0", "train.max_val_windows=200", "train.log_every=1"]


def crosscity(*args: str, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crosscity", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


def start_crosscity(*args: str) -> subprocess.Popen:
    """`crosscity ARGS` in the background, output captured: for tests that signal its ranks."""
    return subprocess.Popen(
        [sys.executable, "-m", "crosscity", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final" / "model.pt", weights_only=True)["model"]


def wait_for_step(run_dir: Path, rank: int, step: int, timeout: float = 120) -> None:
    path = run_dir / "metrics" / f"rank{rank}.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and f'"step": {step},' in path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"rank {rank} never reached step {step}")
