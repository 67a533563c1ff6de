"""`lan.backend=horovod`: the city's gradient sum through Horovod, one Horovod world per city.

Each city's ranks form their own Horovod world (gloo controller): Horovod rank = local rank, size =
ranks per city, so the world is the city's process set. Horovod's background loop negotiates every
cycle across its whole world; one world spanning all cities made each city wait on the others' step
times (27-47x slower LAN sums, docs/horovod.md) and would put that coordination on the WAN every
step. With one world per city no Horovod traffic crosses cities: torch.distributed keeps every other
collective (WAN stripes, stop votes, barriers). `wan.algorithm=flat`, whose sum spans all cities, is
rejected at load (train/config.py).

Horovod's gloo controller meets at an HTTP rendezvous server, one per world. horovodrun (one per
city) hosts one and exports HOROVOD_GLOO_RENDEZVOUS_ADDR/PORT; under `crosscity run` the launcher
hosts one server per city and store generation and publishes their addresses in that generation's
store. Fresh servers per generation are what let a preempted city rejoin: every rank re-initialises
Horovod, and the old servers still hold the old worlds' addresses.
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

_ADDR, _PORT = "HOROVOD_GLOO_RENDEZVOUS_ADDR", "HOROVOD_GLOO_RENDEZVOUS_PORT"
_HOSTNAME = "localhost"  # the local launcher's ranks all share this host
RENDEZVOUS_TIMEOUT_S = 120.0


def rendezvous_key(city: int) -> str:
    """Where each generation's store holds `city`'s Horovod rendezvous, as "host:port"."""
    return f"horovod_rendezvous/city{city}"


def horovod_env(topo: Topology, loopback: bool) -> dict[str, str]:
    """What horovodrun's gloo_run exports for one rank of a city's world, all on this host."""
    env = {
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
        "HOROVOD_HOSTNAME": _HOSTNAME,
        "HOROVOD_RANK": str(topo.local_rank),
        "HOROVOD_SIZE": str(topo.ranks_per_city),
        "HOROVOD_LOCAL_RANK": str(topo.local_rank),
        "HOROVOD_LOCAL_SIZE": str(topo.ranks_per_city),
        "HOROVOD_CROSS_RANK": "0",
        "HOROVOD_CROSS_SIZE": "1",
    }
    if loopback:  # as horovodrun does for localhost-only runs; otherwise gloo uses the host name
        env["HOROVOD_GLOO_IFACE"] = "lo"
    return env


def _serve(ranks: int) -> tuple[Any, int]:
    """A started rendezvous server for one world of `ranks` ranks on `_HOSTNAME`, and its port."""
    from horovod.runner.common.util.hosts import SlotInfo
    from horovod.runner.http.http_server import RendezvousServer

    server = RendezvousServer()
    port = server.start()
    server.init([SlotInfo(_HOSTNAME, r, r, 0, ranks, ranks, 1) for r in range(ranks)])
    return server, port


class RendezvousHost:
    """The launcher's side: per store generation, one Horovod rendezvous server per city."""

    def __init__(self, store: dist.Store, host: str, cities: int, ranks_per_city: int) -> None:
        self.store, self.host, self.cities, self.ranks_per_city = store, host, cities, ranks_per_city
        self.gen = -1
        self.servers: list[Any] = []
        self.poll()

    def poll(self) -> None:
        """Serve the store's current generation (the launcher calls this from its watch loop)."""
        gen = generation(self.store)
        if gen == self.gen:
            return
        started = [_serve(self.ranks_per_city) for _ in range(self.cities)]
        gen_store = generation_store(self.store, gen)
        for city, (_, port) in enumerate(started):
            gen_store.set(rendezvous_key(city), f"{self.host}:{port}")
        self.stop()  # every rank of the old generation met long ago: it trained since
        self.servers, self.gen = [server for server, _ in started], gen

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers = []


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


def _rendezvous_env(store: dist.Store, city: int) -> dict[str, str]:
    """horovodrun's server when it exported one, else the one the launcher published for my city."""
    if _PORT in os.environ:
        return {}
    key = rendezvous_key(city)
    try:
        store.wait([key], timedelta(seconds=RENDEZVOUS_TIMEOUT_S))
    except RuntimeError:
        raise RuntimeError(
            f"lan.backend=horovod: no Horovod rendezvous was published within {RENDEZVOUS_TIMEOUT_S:.0f} s; "
            "start the run with `crosscity run` (or one horovodrun per city): Slurm jobs do not host one"
        ) from None
    host, port = store.get(key).decode().rsplit(":", 1)
    return {_ADDR: host, _PORT: port}


class HorovodReducer:
    """The LAN sum in my city's own Horovod world (all of it: the world is the city)."""

    def __init__(self, topo: Topology, store: dist.Store, device: torch.device) -> None:
        import horovod.torch as hvd

        if device.type == "cuda" and not hvd.cuda_built():
            raise RuntimeError(
                "lan.backend=horovod on GPU needs a Horovod built with CUDA (HOROVOD_GPU_OPERATIONS)"
            )
        with _exported(_rendezvous_env(store, topo.city)):
            hvd.init()
        if hvd.rank() != topo.local_rank or hvd.size() != topo.ranks_per_city:
            raise RuntimeError(
                f"Horovod rank {hvd.rank()} of {hvd.size()} is not local rank {topo.local_rank} of the "
                f"{topo.ranks_per_city} ranks of city {topo.city}: each city needs its own Horovod world "
                "(one horovodrun per city, docs/horovod.md)"
            )
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()

    def sum_(self, wire: torch.Tensor) -> None:
        self.hvd.allreduce_(wire, op=self.hvd.Sum)

    def close(self) -> None:
        self.hvd.shutdown()
