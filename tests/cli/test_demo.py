"""`crosscity demo` end to end, shortened: shipped data -> prep -> 4 x 2 training -> table + run dir."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_prepares_trains_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "crosscity",
            "demo",
            "--out",
            str(out),
            "train.steps=60",
            "train.eval_every=0",
            "train.max_val_windows=500",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    for name in ("north", "east", "west", "centre", "overall"):
        assert any(line.startswith(name) for line in r.stdout.splitlines()), r.stdout
    assert "WAN bytes sent:" in r.stdout and "flat data parallel would have sent" in r.stdout
    for path in ("config.yaml", "summary.json", "final/model.pt", "plots/loss.png", "report.md"):
        assert (out / path).is_file(), path
    assert len(list((out / "metrics").glob("rank*.jsonl"))) == 8
    summary = json.loads((out / "summary.json").read_text())
    assert [c["name"] for c in summary["cities"]] == ["centre", "east", "north", "west"]
    assert all(c["samples"] == 60 * 64 * 2 for c in summary["cities"])
    assert summary["wan_reduction"] > 20  # int8 + H=30 against flat fp32 gradients every step
