"""`lan.backend=horovod`: the city's gradient sum through Horovod, one static process set per city.

Every rank joins one Horovod world (gloo controller) whose process sets are the cities, built from
the topology like the torch.distributed city groups. torch.distributed keeps every other
collective (WAN stripes, stop votes, barriers): only the per-step LAN sum moves to Horovod.

Horovod's gloo controller meets at an HTTP rendezvous server. horovodrun hosts one and exports
HOROVOD_GLOO_RENDEZVOUS_ADDR/PORT; under `crosscity run` the launcher hosts one server per store
generation and publishes its address in that generation's store. A fresh server per generation is
what lets a preempted city rejoin: the surviving ranks re-initialise Horovod, and the old server
still holds the old world's addresses.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from train.rendezvous import generation, generation_store
from train.topology import Topology

RENDEZVOUS_KEY = "horovod_rendezvous"  # in each generation's store: "host:port"
_ADDR, _PORT = "HOROVOD_GLOO_RENDEZVOUS_ADDR", "HOROVOD_GLOO_RENDEZVOUS_PORT"
_HOSTNAME = "localhost"  # the local launcher's ranks all share this host
RENDEZVOUS_TIMEOUT_S = 120.0


def horovod_env(topo: Topology, loopback: bool) -> dict[str, str]:
    """What horovodrun's gloo_run exports for one rank, for ranks that all run on this host."""
    env = {
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
        "HOROVOD_HOSTNAME": _HOSTNAME,
        "HOROVOD_RANK": str(topo.global_rank),
        "HOROVOD_SIZE": str(topo.world_size),
        "HOROVOD_LOCAL_RANK": str(topo.global_rank),
        "HOROVOD_LOCAL_SIZE": str(topo.world_size),
        "HOROVOD_CROSS_RANK": "0",
        "HOROVOD_CROSS_SIZE": "1",
    }
    if loopback:  # as horovodrun does for localhost-only runs; otherwise gloo uses the host name
        env["HOROVOD_GLOO_IFACE"] = "lo"
    return env


class RendezvousHost:
    """The launcher's side: one Horovod rendezvous server per store generation, published in it."""

    def __init__(self, store: dist.Store, host: str, world_size: int) -> None:
        self.store, self.host, self.world_size = store, host, world_size
        self.gen = -1
        self.server: Any = None
        self.poll()

    def poll(self) -> None:
        """Serve the store's current generation (the launcher calls this from its watch loop)."""
        gen = generation(self.store)
        if gen == self.gen:
            return
        from horovod.runner.common.util.hosts import SlotInfo
        from horovod.runner.http.http_server import RendezvousServer

        server = RendezvousServer()
        port = server.start()
        w = self.world_size
        server.init([SlotInfo(_HOSTNAME, r, r, 0, w, w, 1) for r in range(w)])
        generation_store(self.store, gen).set(RENDEZVOUS_KEY, f"{self.host}:{port}")
        self.stop()  # every rank of the old generation met long ago: it trained since
        self.server, self.gen = server, gen

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


@contextlib.contextmanager
def _exported(env: dict[str, str]) -> Iterator[None]:
    """Set `env` for Horovod's C++ side to read during init, then restore the previous values, so
    that the next generation still tells the launcher's rendezvous from horovodrun's."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _rendezvous_env(store: dist.Store) -> dict[str, str]:
    """horovodrun's server when it exported one, else the one the launcher published for this generation."""
    if _PORT in os.environ:
        return {}
    try:
        store.wait([RENDEZVOUS_KEY], timedelta(seconds=RENDEZVOUS_TIMEOUT_S))
    except RuntimeError:
        raise RuntimeError(
            f"lan.backend=horovod: no Horovod rendezvous was published within {RENDEZVOUS_TIMEOUT_S:.0f} s; "
            "start the run with `crosscity run` (or under horovodrun): Slurm jobs do not host one"
        ) from None
    host, port = store.get(RENDEZVOUS_KEY).decode().rsplit(":", 1)
    return {_ADDR: host, _PORT: port}


class HorovodReducer:
    """The LAN sum in my city's Horovod process set (the global set for the flat baseline)."""

    def __init__(self, topo: Topology, world: bool, store: dist.Store, device: torch.device) -> None:
        import horovod.torch as hvd

        if device.type == "cuda" and not hvd.cuda_built():
            raise RuntimeError(
                "lan.backend=horovod on GPU needs a Horovod built with CUDA (HOROVOD_GPU_OPERATIONS)"
            )
        # One city is the whole world: Horovod refuses a process set equal to its global one.
        n = topo.num_cities if topo.num_cities > 1 else 0
        cities = [hvd.ProcessSet(topo.city_ranks(c)) for c in range(n)]
        with _exported(_rendezvous_env(store)):
            hvd.init(process_sets=cities)
        if hvd.rank() != topo.global_rank or hvd.size() != topo.world_size:
            raise RuntimeError(
                f"Horovod rank {hvd.rank()} of {hvd.size()} is not global rank {topo.global_rank} of "
                f"{topo.world_size}: HOROVOD_RANK must number ranks like the topology"
            )
        self.hvd = hvd
        self.process_set = cities[topo.city] if cities and not world else hvd.global_process_set
        self.size = self.process_set.size()

    def sum_(self, wire: torch.Tensor) -> None:
        self.hvd.allreduce_(wire, op=self.hvd.Sum, process_set=self.process_set)

    def close(self) -> None:
        self.hvd.shutdown()
