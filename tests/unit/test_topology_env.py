"""detect_topology on each launcher's environment variables: crosscity, Slurm, torchrun, MPI."""

from __future__ import annotations

import pytest

from crosscity.train.distributed.topology import Topology, TopologyError
from crosscity.train.distributed.topology_env import detect_topology


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
