"""Config rules through real `crosscity` processes (all of them in-process: tests/unit)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.runs import CONFIG, crosscity


def test_real_commands_refuse_before_preparing_or_scheduling(tmp_path: Path) -> None:
    """A representative set through real processes: `run`, `submit` and `demo` (which would otherwise
    prepare 420k rows first)."""
    cases = [
        ("run", str(CONFIG), "data.cities=north,north", "topology.cities=2", "wan.optimizer_state=average"),
        ("run", str(CONFIG), "wan.algorithm=streaming", "wan.optimizer_state=reset"),
        ("submit", str(CONFIG), "train.device=cuda"),
        ("demo", "--out", str(tmp_path / "demo"), "wan.codec=int7"),
    ]
    for args in cases:
        r = crosscity(*args, f"train.run_dir={tmp_path / 'run'}")
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (args, r.stderr)
        assert r.stdout == "", (args, r.stdout)
    assert not (tmp_path / "run").exists() and not (tmp_path / "demo").exists()
