"""WAN bytes of the baselines that all-reduce over one world of every rank (flat, PyTorch's averager).

The federated algorithms count what really went into their sockets (federation.transport); these
baselines run gloo's ring all-reduce across cities, whose WAN share follows from the ring's shape.
These are payload bytes; gloo adds ~150 B of header per message and TCP/IP its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from crosscity.train.distributed.topology import Topology


@dataclass
class WanBytes:
    sent: int = 0
    recv: int = 0


def ring_allreduce_bytes(nbytes: int, members: int) -> int:
    """Payload bytes one member sends (and receives) in a ring all-reduce of `nbytes`."""
    return 2 * (members - 1) * nbytes // members


def world_ring_bytes(nbytes: int, topo: Topology) -> WanBytes:
    """WAN bytes of this rank in gloo's ring all-reduce of `nbytes` over EVERY rank. The ring sends to
    rank - 1; with city-major numbering only a city's local rank 0 sends across the WAN (to the
    previous city's last rank) and only local rank R-1 receives from it."""
    if topo.num_cities == 1:
        return WanBytes()
    ring = ring_allreduce_bytes(nbytes, topo.world_size)
    first, last = topo.local_rank == 0, topo.local_rank == topo.ranks_per_city - 1
    return WanBytes(sent=ring if first else 0, recv=ring if last else 0)
