"""`crosscity bench NAME`: run one of the benchmarks of `crosscity.bench` (bench/ in a checkout)."""

from __future__ import annotations

import importlib
import sys

# name -> module with `main(argv) -> int`
BENCHES = {
    "wan": "crosscity.bench.wan.run_bench",
    "chaos": "crosscity.bench.chaos.run_bench",
    "data": "crosscity.bench.data.run_bench",
    "monitor": "crosscity.bench.monitor.overhead",
    "quality": "crosscity.bench.quality.run_bench",
}
USAGE = f"usage: crosscity bench {{{','.join(BENCHES)}}} [options]   (each has --help)"


def main(argv: list[str]) -> int:
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        for name, module in BENCHES.items():
            doc = (importlib.import_module(module).__doc__ or "").strip().splitlines()
            print(f"  {name:8s} {doc[0] if doc else ''}")
        return 0
    if not argv or argv[0] not in BENCHES:
        print(f"crosscity bench: {argv[0] + ': unknown benchmark; ' if argv else ''}{USAGE}", file=sys.stderr)
        return 2
    return int(importlib.import_module(BENCHES[argv[0]]).main(argv[1:]) or 0)
