"""`crosscity bench NAME`: run a benchmark from the repository's bench/ folder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH_ROOT = Path(__file__).resolve().parents[1] / "bench"
BENCHES = {"wan": "wan/run_bench.py", "data": "data/run_bench.py", "monitor": "monitor/run_bench.py"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHES:
        print(
            f"usage: crosscity bench {{{','.join(BENCHES)}}} [options]  "
            f"(run from a clone: needs {BENCH_ROOT})",
            file=sys.stderr,
        )
        return 2
    path = BENCH_ROOT / BENCHES[argv[0]]
    if not path.is_file():
        print(
            f"crosscity bench: {path} not found; benchmarks run from a git clone of crosscity",
            file=sys.stderr,
        )
        return 2
    spec = importlib.util.spec_from_file_location(f"crosscity_bench_{argv[0]}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return int(module.main(argv[1:]) or 0)
