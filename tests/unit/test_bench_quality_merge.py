"""`crosscity bench quality --report-only --merge`: one table from runs of several invocations."""

from __future__ import annotations

from pathlib import Path

import pytest

from crosscity.bench.quality.run_bench import main, merged

BASE = ["crosscity", "bench", "quality"]


def _payload(command: list[str], runs: list[tuple[str, str, int]], complete: bool = True) -> dict:
    return {
        "command": BASE + command,
        "runs": [{"split": s, "row": r, "seed": k, "from": command} for s, r, k in runs],
        "seconds": 60.0,
        "complete": complete,
    }


def test_merged_runs_follow_the_plan_and_theirs_replace_ours() -> None:
    ours = _payload([], [("standard", "pooled", 0), ("standard", "per-city", 0)])
    theirs = _payload(
        ["--rows", "diloco+int8+ef,per-city"],
        [("standard", "diloco+int8+ef", 0), ("standard", "per-city", 0), ("hard", "pooled", 0)],
    )
    out = merged(ours, theirs, Path("theirs.json"))
    keys = [(r["split"], r["row"], r["seed"]) for r in out["runs"]]
    assert keys == [
        ("standard", "pooled", 0),
        ("standard", "per-city", 0),
        ("standard", "diloco+int8+ef", 0),
        ("hard", "pooled", 0),
    ]
    assert out["runs"][1]["from"] == ["--rows", "diloco+int8+ef,per-city"]  # the later file wins
    assert out["commands"] == [BASE, BASE + ["--rows", "diloco+int8+ef,per-city"]]
    assert out["seconds"] == 120.0 and out["complete"]
    assert not merged(ours, _payload([], [], complete=False), Path("x"))["complete"]


def test_runs_of_another_recipe_are_refused() -> None:
    ours = _payload([], [("standard", "pooled", 0)])
    theirs = _payload(["train.steps=500"], [("standard", "pooled", 1)])
    with pytest.raises(
        ValueError, match=r"--merge other.json: its runs used the overrides \['train.steps=500'\]"
    ):
        merged(ours, theirs, Path("other.json"))


def test_merge_needs_report_only(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--merge", str(tmp_path / "r.json")]) == 2
    assert "--merge works with --report-only only" in capsys.readouterr().err
    (tmp_path / "results.json").write_text('{"command": ["crosscity", "bench", "quality"], "runs": []}')
    assert main(["--report-only", "--results", str(tmp_path), "--merge", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: not a readable results.json" in capsys.readouterr().err
