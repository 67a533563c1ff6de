"""`crosscity bench quality --quick` end to end: datasets, every layout, eval, tables and plots."""

from __future__ import annotations

import json
import re
from pathlib import Path

from crosscity.bench.quality.results import finite
from tests.helpers.runs import crosscity


def test_quick_bench_writes_a_finite_table_for_every_row(tmp_path: Path) -> None:
    r = crosscity("bench", "quality", "--quick", "--work", str(tmp_path), timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert re.search(r"\[bench\] +100\.0% .*rank-steps/s, elapsed .* ETA 0\.0 min", r.stdout), r.stdout
    results = tmp_path / "results"
    payload = json.loads((results / "results.json").read_text())
    assert payload["complete"] and finite(payload)
    assert [run["row"] for run in payload["runs"]] == ["pooled", "per-city", "average", "fedprox-0.01"]
    for run in payload["runs"]:
        assert set(run["cities"]) == {"centre", "north"}
        assert all(set(run["cities"][c]) == {"val", "test"} for c in run["cities"])
        assert len(run["by_hour"]["test"]) == 24 and run["curve"] and run["curve"][-1][0] == 30
    text = (results / "RESULTS.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    for row in ("pooled", "per-city", "average", "fedprox-0.01", "persistence"):
        line = next(t for t in table if t.startswith(f"| {row} |"))
        numbers = re.findall(r"-?\d+\.\d+", line)
        assert numbers and all(n not in ("nan", "inf") for n in numbers), line
    assert "within 1% of pooled" in text and "24 h horizon" in text
    assert (results / "quick_rmse_by_hour.png").stat().st_size > 1000
    assert (results / "quick_learning_curves.png").stat().st_size > 1000
