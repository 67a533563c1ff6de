"""Where ranks meet: one TCPStore hosted OUTSIDE the ranks (launcher or coordinator job).

Hosting the store outside the ranks is what lets one city leave (preemption) and come back
without tearing down the others: the store, and its `generation` counter, survive. Each
generation builds its process groups under its own key prefix.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

COORDINATOR_FILE = "coordinator.json"
FINISHED_KEY = "finished_ranks"  # each rank adds 1 when it is done with the store


def host_store(host: str = "0.0.0.0", port: int = 0) -> dist.TCPStore:
    """The master store; port 0 picks a free port (read it back from `.port`)."""
    return dist.TCPStore(host, port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60))


def connect_store(run_dir: Path, timeout_s: float = 300.0) -> dist.TCPStore:
    """MASTER_ADDR/MASTER_PORT if set, else the address the coordinator wrote into the run dir."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not (host and port):
        path = Path(run_dir) / COORDINATOR_FILE
        if not path.is_file():
            raise RuntimeError(
                f"no rendezvous: set MASTER_ADDR/MASTER_PORT or start a coordinator that writes {path}"
            )
        info = json.loads(path.read_text())
        host, port = info["host"], str(info["port"])
    return dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=timeout_s))


def generation(store: dist.Store) -> int:
    return int(store.add("generation", 0))


def advance_generation(store: dist.Store) -> int:
    return int(store.add("generation", 1))


def generation_store(store: dist.Store, gen: int) -> dist.PrefixStore:
    return dist.PrefixStore(f"gen{gen}/", store)


def advertised_host() -> str:
    """An address other hosts can reach this one at (the coordinator writes it for the cities)."""
    return socket.getfqdn() or "127.0.0.1"
