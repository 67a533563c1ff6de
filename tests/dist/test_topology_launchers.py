"""detect_topology under a real torchrun and a real mpiexec (mpi4py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.launchers import layouts, probe, require_mpiexec


def test_real_torchrun(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs torchrun (installed with torch)")
        pytest.skip("torchrun not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CROSSCITY_"))}
    env["CROSSCITY_NUM_CITIES"] = "2"
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node=2", str(probe(tmp_path))],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert layouts(done.stdout) == {(0, 2, 0, 1), (1, 2, 0, 1)}, (done.stdout[-2000:], done.stderr[-2000:])


def test_real_mpiexec_with_mpi4py() -> None:
    mpiexec = require_mpiexec()
    # Each rank checks the launcher-variable path and the mpi4py path against COMM_WORLD.
    script = (
        "import sys, json; from mpi4py import MPI; "
        "from crosscity.train.distributed.topology_env import detect_topology, from_mpi; import os; "
        "c = MPI.COMM_WORLD; "
        "a = detect_topology(); b = from_mpi({'CROSSCITY_NUM_CITIES': '2'}); "
        "assert (a.local_rank, a.ranks_per_city) == (c.Get_rank(), c.Get_size()), a; "
        "line = 'TOPO ' + json.dumps([b.city, b.num_cities, b.local_rank, b.ranks_per_city]) + chr(10); "
        "os.write(1, line.encode())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CROSSCITY_"))}
    done = subprocess.run(
        [mpiexec, "-n", "2", sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert layouts(done.stdout) == {(0, 2, 0, 1), (1, 2, 0, 1)}, done.stdout + done.stderr
