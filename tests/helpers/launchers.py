"""Probes that print the topology each launcher's rank detects, and mpiexec discovery."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

PROBE = """
import json, os, sys
from crosscity.train.distributed.topology_env import detect_topology
t = detect_topology()
os.write(1, ("TOPO " + json.dumps([t.city, t.num_cities, t.local_rank, t.ranks_per_city]) + "\\n").encode())
"""


def require_mpiexec() -> str:
    """Path of mpiexec with mpi4py importable; skip outside CI, fail in CI (pip install mpi4py mpich)."""
    mpiexec = shutil.which("mpiexec")
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        mpiexec = None
    if mpiexec is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs mpi4py and mpiexec: pip install mpi4py mpich")
        pytest.skip("mpi4py/mpiexec not installed (pip install mpi4py mpich)")
    return mpiexec


def probe(folder: Path) -> Path:
    """A script that prints its rank's detected topology as one JSON line."""
    path = folder / "probe.py"
    path.write_text(PROBE)
    return path


def layouts(text: str) -> set[tuple[int, ...]]:
    """(city, cities, rank, ranks) per probe line; launcher chatter such as `[mpiexec@vm] ...` is skipped."""
    return {tuple(json.loads(line[5:])) for line in text.splitlines() if line.startswith("TOPO ")}
