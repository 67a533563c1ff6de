"""detect_topology on each launcher's environment: crosscity, real srun, real torchrun, real mpiexec."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from crosscity.train.distributed.topology import Topology, TopologyError
from crosscity.train.distributed.topology_env import detect_topology, expand_hostlist, rendezvous_from_env

from tests.test_slurm_cluster import require_slurm, sbatch, wait_finished

# One write(2) per line: ranks share the job's output pipe, and separate writes of "TOPO" and the
# JSON (print under PYTHONUNBUFFERED) interleaved with another rank's line in CI.
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


def test_crosscity_variables_win_over_everything() -> None:
    env = {**Topology(1, 3, 0, 2).to_env(), "SLURM_PROCID": "5", "SLURM_NTASKS": "8"}
    assert detect_topology(env) == Topology(1, 3, 0, 2)


def test_slurm_array_task_is_the_city_and_procid_the_rank() -> None:
    # Rank 3 of 4 sits on the second node with SLURM_LOCALID 1: the city rank is SLURM_PROCID.
    env = {"SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_NTASKS": "4", "SLURM_ARRAY_TASK_ID": "2"}
    assert detect_topology({**env, "SLURM_ARRAY_TASK_COUNT": "3"}) == Topology(2, 3, 3, 4)
    # A split array: chunk-relative task 1 with offset 8 is city 9 of 12.
    split = {**env, "SLURM_ARRAY_TASK_ID": "1", "CROSSCITY_ARRAY_OFFSET": "8", "CROSSCITY_NUM_CITIES": "12"}
    assert detect_topology(split) == Topology(9, 12, 3, 4)
    # mpiexec inside the job: the MPI rank wins over the proxy's SLURM_PROCID.
    mpi = {
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
        "PMI_RANK": "1",
        "PMI_SIZE": "2",
        "SLURM_ARRAY_TASK_ID": "0",
    }
    assert detect_topology({**mpi, "SLURM_ARRAY_TASK_COUNT": "2"}) == Topology(0, 2, 1, 2)
    # Not an array: one city.
    assert detect_topology({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}) == Topology(0, 1, 1, 2)


def test_torchrun_world_is_cut_into_cities() -> None:
    env = {"RANK": "5", "WORLD_SIZE": "6", "LOCAL_RANK": "1", "CROSSCITY_NUM_CITIES": "3"}
    assert detect_topology(env) == Topology(2, 3, 1, 2)
    with pytest.raises(TopologyError, match="not divisible"):
        detect_topology({**env, "CROSSCITY_NUM_CITIES": "4"})


def test_mpi_variables() -> None:
    assert detect_topology({"PMI_RANK": "3", "PMI_SIZE": "4", "CROSSCITY_NUM_CITIES": "2"}) == Topology(
        1, 2, 1, 2
    )
    env = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2"}
    assert detect_topology(env) == Topology(0, 1, 0, 2)


def test_nothing_known_and_bad_values_are_named() -> None:
    with pytest.raises(TopologyError, match="srun .* torchrun .* mpiexec"):
        detect_topology({})
    with pytest.raises(TopologyError, match="SLURM_PROCID='x'"):
        detect_topology({"SLURM_PROCID": "x", "SLURM_NTASKS": "2"})


def test_hostlist_and_rendezvous() -> None:
    assert expand_hostlist("node[1-3,07],login,gpu[08-10]x") == [
        "node1",
        "node2",
        "node3",
        "node07",
        "login",
        "gpu08x",
        "gpu09x",
        "gpu10x",
    ]
    with pytest.raises(ValueError, match="bad range 'a'"):
        expand_hostlist("node[a]")
    env = {"SLURM_JOB_NODELIST": "cn[4-5]", "SLURM_JOB_ID": "77"}
    addr, port = rendezvous_from_env(env)
    assert addr == "cn4" and 20000 <= port < 60000
    assert rendezvous_from_env({**env, "MASTER_ADDR": "h", "MASTER_PORT": "1234"}) == ("h", 1234)
    assert rendezvous_from_env({}) is None


@pytest.mark.slurm
def test_real_srun_in_a_job_array(tmp_path: Path) -> None:
    """2 array tasks (cities) x 2 srun tasks on 2 nodes: every (city, rank) appears exactly once."""
    require_slurm()
    script = probe(tmp_path)
    srun = f"srun {sys.executable} {script}"
    job = sbatch(
        "--array=0-1", "-N2", "--ntasks-per-node=1", "-o", "out_%a.txt", "--wrap", srun, cwd=tmp_path
    )
    states = wait_finished([f"{job}_0", f"{job}_1"], timeout_s=60)
    out = (tmp_path / "out_0.txt").read_text() + (tmp_path / "out_1.txt").read_text()
    assert {s.state for s in states.values()} == {"COMPLETED"}, out
    found = layouts(out)
    assert found == {(c, 2, r, 2) for c in range(2) for r in range(2)}


@pytest.mark.slurm
def test_real_mpiexec_inside_a_slurm_array(tmp_path: Path) -> None:
    """mpiexec in a job: Slurm's task is the per-node proxy, so PMI_RANK (not SLURM_PROCID) is the rank."""
    require_slurm()
    run = f"{require_mpiexec()} -n $SLURM_NTASKS {sys.executable} {probe(tmp_path)}"
    job = sbatch("--array=0-1", "-N1", "--ntasks-per-node=2", "-o", "out_%a.txt", "--wrap", run, cwd=tmp_path)
    states = wait_finished([f"{job}_0", f"{job}_1"], timeout_s=60)
    out = (tmp_path / "out_0.txt").read_text() + (tmp_path / "out_1.txt").read_text()
    assert {s.state for s in states.values()} == {"COMPLETED"}, out
    assert layouts(out) == {(c, 2, r, 2) for c in range(2) for r in range(2)}, out


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
