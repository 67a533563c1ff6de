"""`lan.backend=horovod`: the city's gradient sum through Horovod, one Horovod world per city.

Each city's ranks form their own Horovod world (gloo controller): Horovod rank = local rank, size =
ranks per city, so the world is the city's process set. Horovod's background loop negotiates every
cycle across its whole world; one world spanning all cities made each city wait on the others' step
times (27-47x slower LAN sums, docs/horovod.md) and would put that coordination on the WAN every
step. With one world per city no Horovod traffic crosses cities: torch.distributed keeps every other
collective (WAN stripes, stop votes, barriers). `wan.algorithm=flat`, whose sum spans all cities, is
rejected at load (train/config.py).

Horovod's gloo controller meets at an HTTP rendezvous server, one per world. Under horovodrun (one
per city) its server is used (HOROVOD_GLOO_RENDEZVOUS_ADDR/PORT). Otherwise, under `crosscity run`,
Slurm or submitit alike, the city's local rank 0 hosts one in a thread for the generation and
passes its address to the other ranks over the city's torch group; every rank exports what
horovodrun would (its slot: host, rank, local and cross rank) for `hvd.init()`. A server per
generation is what lets a preempted city rejoin: every rank re-initialises Horovod against a fresh
world.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from crosscity.train.distributed.topology import Topology

_ADDR, _PORT = "HOROVOD_GLOO_RENDEZVOUS_ADDR", "HOROVOD_GLOO_RENDEZVOUS_PORT"
_LOOPBACK = "localhost"  # every rank of the city on this host: Horovod's gloo stays on `lo`


@dataclass(frozen=True)
class Slot:
    """Where one rank of the city's world sits, as horovodrun would number it."""

    hostname: str
    rank: int
    local_rank: int
    cross_rank: int
    size: int
    local_size: int
    cross_size: int


def city_slots(hosts: list[str]) -> list[Slot]:
    """Slots for the city's ranks in local-rank order, `hosts[k]` being local rank k's host name;
    ranks on one host are numbered in order, hosts in order of their first rank."""
    order = list(dict.fromkeys(hosts))
    if len(order) == 1:
        hosts = [_LOOPBACK] * len(hosts)
    slots = []
    for rank, host in enumerate(hosts):
        same = [r for r, h in enumerate(hosts) if h == host]
        cross = order.index(host) if len(order) > 1 else 0
        slots.append(Slot(host, rank, same.index(rank), cross, len(hosts), len(same), len(order)))
    return slots


def slot_env(slot: Slot) -> dict[str, str]:
    """What horovodrun's gloo_run exports for the rank in `slot`."""
    env = {
        "HOROVOD_CONTROLLER": "gloo",
        "HOROVOD_CPU_OPERATIONS": "gloo",
        "HOROVOD_HOSTNAME": slot.hostname,
        "HOROVOD_RANK": str(slot.rank),
        "HOROVOD_SIZE": str(slot.size),
        "HOROVOD_LOCAL_RANK": str(slot.local_rank),
        "HOROVOD_LOCAL_SIZE": str(slot.local_size),
        "HOROVOD_CROSS_RANK": str(slot.cross_rank),
        "HOROVOD_CROSS_SIZE": str(slot.cross_size),
    }
    if slot.hostname == _LOOPBACK:
        env["HOROVOD_GLOO_IFACE"] = "lo"  # as horovodrun does for localhost-only runs
    elif "HOROVOD_GLOO_IFACE" not in os.environ and "GLOO_SOCKET_IFNAME" in os.environ:
        env["HOROVOD_GLOO_IFACE"] = os.environ["GLOO_SOCKET_IFNAME"]  # the NIC torch's gloo uses
    return env


def _serve(slots: list[Slot]) -> tuple[Any, int]:
    """A started rendezvous server for the city's world, and its port."""
    from horovod.runner.common.util.hosts import SlotInfo
    from horovod.runner.http.http_server import RendezvousServer

    server = RendezvousServer()
    port = server.start()
    server.init([SlotInfo(**vars(slot)) for slot in slots])
    return server, port


@contextlib.contextmanager
def _exported(env: dict[str, str]) -> Iterator[None]:
    """Set `env` for Horovod's C++ side to read during init, then restore the previous values, so
    that the next generation still tells horovodrun's rendezvous (exported) from ours (hosted anew)."""
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


class HorovodReducer:
    """The LAN sum in my city's own Horovod world (all of it: the world is the city)."""

    def __init__(self, topo: Topology, city: dist.ProcessGroup, device: torch.device) -> None:
        import horovod.torch as hvd

        if device.type == "cuda" and not hvd.cuda_built():
            raise RuntimeError(
                "lan.backend=horovod on GPU needs a Horovod built with CUDA (HOROVOD_GPU_OPERATIONS)"
            )
        self.server: Any = None
        env = {} if _PORT in os.environ else self._host_rendezvous(topo, city, device)
        with _exported(env):
            hvd.init()
        if hvd.rank() != topo.local_rank or hvd.size() != topo.ranks_per_city:
            raise RuntimeError(
                f"Horovod rank {hvd.rank()} of {hvd.size()} is not local rank {topo.local_rank} of the "
                f"{topo.ranks_per_city} ranks of city {topo.city}: each city needs its own Horovod world "
                "(one horovodrun per city, docs/horovod.md)"
            )
        self.hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()

    def _host_rendezvous(
        self, topo: Topology, city: dist.ProcessGroup, device: torch.device
    ) -> dict[str, str]:
        """Local rank 0 serves the city's rendezvous; every rank gets its slot and the address."""
        hosts: list[Any] = [None] * topo.ranks_per_city
        dist.all_gather_object(hosts, socket.gethostname(), group=city)
        slots = city_slots(hosts)
        address: list[Any] = [None]
        if topo.local_rank == 0:
            self.server, port = _serve(slots)
            address = [f"{slots[0].hostname}:{port}"]
        src = dist.get_global_rank(city, 0)  # 0 in a city of its own, the city's first rank in a world
        dist.broadcast_object_list(address, src=src, group=city, device=device)
        host, port = address[0].rsplit(":", 1)
        return {**slot_env(slots[topo.local_rank]), _ADDR: host, _PORT: port}

    def sum_(self, wire: torch.Tensor) -> None:
        self.hvd.allreduce_(wire, op=self.hvd.Sum)

    def close(self) -> None:
        self.hvd.shutdown()
        if self.server is not None:
            self.server.stop()
