"""The topology from whatever started this rank: crosscity, Slurm, torchrun, horovodrun or MPI.

Each launcher describes "who am I" in its own variables; this module turns any of them into one
`Topology(city, num_cities, local_rank, ranks_per_city)`, so the trainer never cares how it was
started. Explicit `CROSSCITY_*` variables always win over derived values: a template can export
`CROSSCITY_NUM_CITIES` and let Slurm fill in the rest.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from crosscity.train.distributed.topology import Topology, TopologyError

_CITY = "CROSSCITY_CITY"
_NUM_CITIES = "CROSSCITY_NUM_CITIES"
_LOCAL_RANK = "CROSSCITY_LOCAL_RANK"
_RANKS_PER_CITY = "CROSSCITY_RANKS_PER_CITY"
# An array holds any cities (grouped by per-city resources, split past MaxArraySize) and its tasks
# start again at 0: generated scripts export the array's cities ("3,5,6"; task i is the i-th);
# a hand-written split of contiguous cities may export the first city as the offset instead.
ARRAY_CITIES = "CROSSCITY_ARRAY_CITIES"
ARRAY_OFFSET = "CROSSCITY_ARRAY_OFFSET"
# Variables that MPI launchers export (MPICH/Hydra, Open MPI, PMIx), as (rank, size) pairs.
_MPI_VARS = (
    ("PMI_RANK", "PMI_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("PMIX_RANK", "PMIX_SIZE"),
)


def _int(env: Mapping[str, str], key: str) -> int:
    if key not in env:
        raise TopologyError(f"environment lacks {key}")
    try:
        return int(env[key])
    except ValueError:
        raise TopologyError(f"environment variable {key}={env[key]!r}: expected an integer") from None


def _override(env: Mapping[str, str], key: str, derived: int) -> int:
    return _int(env, key) if key in env else derived


def _first(env: Mapping[str, str], *keys: str) -> int:
    """The first of `keys` that is set: an explicit CROSSCITY_* name goes first."""
    for key in keys:
        if key in env:
            return _int(env, key)
    raise TopologyError(f"environment lacks all of {', '.join(keys)}")


def _split_world(env: Mapping[str, str], rank: int, world: int, source: str) -> Topology:
    """A flat world of `world` ranks cut into CROSSCITY_NUM_CITIES equal contiguous cities."""
    cities = _override(env, _NUM_CITIES, 1)
    if cities < 1 or world % cities:
        raise TopologyError(
            f"{source}: world size {world} is not divisible by {_NUM_CITIES}={cities}; "
            "start the same number of ranks in every city"
        )
    per_city = world // cities
    return Topology(
        city=_override(env, _CITY, rank // per_city),
        num_cities=cities,
        local_rank=_override(env, _LOCAL_RANK, rank % per_city),
        ranks_per_city=_override(env, _RANKS_PER_CITY, per_city),
    )


def from_slurm(env: Mapping[str, str]) -> Topology:
    """One Slurm job (or one array task) is one city; the tasks of its step are the city's ranks.

    SLURM_PROCID is the rank inside the step, i.e. inside the city (SLURM_LOCALID is only the
    rank on this node). Under mpiexec inside the job, Slurm's task is the per-node MPI proxy, so
    the MPI launcher's rank and size win. The array index names the city through the array's
    city list, or shifted by the offset of a contiguous chunk.
    """
    if "SLURM_ARRAY_TASK_ID" in env:
        city = _array_city(env)
        cities = _first(env, _NUM_CITIES, "SLURM_ARRAY_TASK_COUNT")
    else:
        city, cities = _override(env, _CITY, 0), _override(env, _NUM_CITIES, 1)
    mpi = _mpi_env(env)
    if mpi is not None:
        rank, size = _override(env, _LOCAL_RANK, mpi[0]), _override(env, _RANKS_PER_CITY, mpi[1])
    else:
        rank = _first(env, _LOCAL_RANK, "SLURM_PROCID")
        size = _first(env, _RANKS_PER_CITY, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS")
    return Topology(city=city, num_cities=cities, local_rank=rank, ranks_per_city=size)


def _array_city(env: Mapping[str, str]) -> int:
    if _CITY in env:
        return _int(env, _CITY)
    task = _int(env, "SLURM_ARRAY_TASK_ID")
    if ARRAY_CITIES not in env:
        return task + (_int(env, ARRAY_OFFSET) if ARRAY_OFFSET in env else 0)
    listed = env[ARRAY_CITIES].split(",")
    if not all(c.isdigit() for c in listed):
        raise TopologyError(f"{ARRAY_CITIES}={env[ARRAY_CITIES]!r}: expected comma-separated city indexes")
    if task >= len(listed):
        raise TopologyError(
            f"SLURM_ARRAY_TASK_ID={task}: {ARRAY_CITIES}={env[ARRAY_CITIES]!r} lists {len(listed)} cities"
        )
    return int(listed[task])


def from_horovodrun(env: Mapping[str, str]) -> Topology:
    """One horovodrun is one city: its Horovod world is the city's (train/lan_horovod.py), so
    HOROVOD_RANK/SIZE number the city's ranks and CROSSCITY_CITY/NUM_CITIES say which city it is."""
    cities = _override(env, _NUM_CITIES, 1)
    if cities > 1 and _CITY not in env:
        raise TopologyError(
            f"horovodrun: {_NUM_CITIES}={cities} but no {_CITY}; start one horovodrun per city, "
            f"each with its own {_CITY} (docs/horovod.md)"
        )
    return Topology(
        city=_override(env, _CITY, 0),
        num_cities=cities,
        local_rank=_first(env, _LOCAL_RANK, "HOROVOD_RANK"),
        ranks_per_city=_first(env, _RANKS_PER_CITY, "HOROVOD_SIZE"),
    )


def from_torchrun(env: Mapping[str, str]) -> Topology:
    """torchrun numbers one flat world; CROSSCITY_NUM_CITIES cuts it into cities."""
    return _split_world(env, _int(env, "RANK"), _int(env, "WORLD_SIZE"), "torchrun")


def _mpi_env(env: Mapping[str, str]) -> tuple[int, int] | None:
    for rank_key, size_key in _MPI_VARS:
        if rank_key in env and size_key in env:
            return _int(env, rank_key), _int(env, size_key)
    return None


def mpi_rank_size(env: Mapping[str, str]) -> tuple[int, int] | None:
    """(rank, size) from the MPI launcher's variables, else from mpi4py if the program imported it.

    The variables come first so that merely asking never calls MPI_Init as a side effect.
    """
    found = _mpi_env(env)
    if found is not None:
        return found
    if "mpi4py.MPI" in sys.modules:
        comm = sys.modules["mpi4py.MPI"].COMM_WORLD
        return comm.Get_rank(), comm.Get_size()
    return None


def from_mpi(env: Mapping[str, str]) -> Topology:
    found = mpi_rank_size(env)
    if found is None:
        raise TopologyError("no MPI rank found: neither PMI_*/OMPI_*/PMIX_* variables nor an imported mpi4py")
    return _split_world(env, *found, "MPI")


def detect_topology(env: Mapping[str, str] | None = None) -> Topology:
    """CROSSCITY_* (complete) > torchrun > horovodrun > Slurm step > MPI; error naming what was looked for."""
    env = os.environ if env is None else env
    keys = (_CITY, _NUM_CITIES, _LOCAL_RANK, _RANKS_PER_CITY)
    if all(k in env for k in keys):
        return Topology(*(_int(env, k) for k in keys))
    # torchrun inside a Slurm job also has SLURM_PROCID (of the torchrun process): torchrun wins.
    if "TORCHELASTIC_RUN_ID" in env or ("RANK" in env and "WORLD_SIZE" in env and "SLURM_PROCID" not in env):
        return from_torchrun(env)
    if "HOROVOD_RANK" in env and "HOROVOD_SIZE" in env:
        return from_horovodrun(env)
    if "SLURM_PROCID" in env:
        return from_slurm(env)
    if mpi_rank_size(env) is not None:
        return from_mpi(env)
    raise TopologyError(
        "cannot tell this rank's place: set CROSSCITY_CITY/NUM_CITIES/LOCAL_RANK/RANKS_PER_CITY, "
        "or start it with srun (SLURM_PROCID), torchrun (RANK/WORLD_SIZE), horovodrun or mpiexec"
    )
