"""Where ranks meet.

A city's ranks meet through a FileStore: a file on the city's own (shared) filesystem that the
launcher names for each start of the city (CROSSCITY_CITY_STORE). Nothing listens on a port, so
nobody outside the city can reach it; a restarted city gets a fresh file.

The world-spanning baselines (flat, PyTorch's averager) meet at one TCPStore hosted OUTSIDE the
ranks (launcher or coordinator job): the store, and its `generation` counter, survive one city
leaving (preemption) and coming back; each generation builds its groups under its own key prefix.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from crosscity.federation.service import read_address
from crosscity.train.distributed.topology import Topology

FINISHED_KEY = "finished_ranks"  # each rank adds 1 when it is done with the store


CITY_STORE_ENV = "CROSSCITY_CITY_STORE"


def city_store(topo: Topology, timeout_s: float) -> dist.FileStore:
    """The city's rendezvous file (from CROSSCITY_CITY_STORE); its ranks all name the same path."""
    path = os.environ.get(CITY_STORE_ENV)
    if not path:
        raise RuntimeError(f"no city rendezvous: {CITY_STORE_ENV} must name a file the city's ranks share")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    store = dist.FileStore(path, topo.ranks_per_city)
    store.set_timeout(timedelta(seconds=timeout_s))
    return store


def host_store(host: str = "127.0.0.1", port: int = 0) -> dist.TCPStore:
    """The master store; port 0 picks a free port (read it back from `.port`)."""
    return dist.TCPStore(host, port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))


def connect_store(run_dir: Path, timeout_s: float = 300.0) -> dist.TCPStore:
    """MASTER_ADDR/MASTER_PORT if set, else the address the coordinator wrote into the run dir."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (host and port):
        try:
            host, port = read_address(Path(run_dir))
        except OSError as exc:
            raise RuntimeError(
                f"no rendezvous: set MASTER_ADDR/MASTER_PORT or start a coordinator ({exc})"
            ) from None
    return dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=timeout_s))


def generation(store: dist.Store) -> int:
    return int(store.add("generation", 0))


def advance_generation(store: dist.Store) -> int:
    return int(store.add("generation", 1))


def generation_store(store: dist.Store, gen: int) -> dist.PrefixStore:
    return dist.PrefixStore(f"gen{gen}/", store)
