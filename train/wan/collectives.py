"""WAN exchange primitive: a weighted mean across cities, striped over the ranks of each city.

Each of a city's R ranks owns 1/R of the flat vector; rank k of every city exchanges stripe k
(R parallel inter-city streams), then the city all-gathers the stripes over the LAN.

Three wire algorithms, each leaving the bit-identical result on every member:
- codec none: one ring all-reduce of [w * x, w] (sum), divided by the summed weight.
- a lossy codec, C <= 2 cities: a ring all-gather of every city's encoded payload and its float32
  weight; each member decodes all of them in city order and averages locally. (Quantised values
  cannot be summed on the wire without decoding at every hop, which would compound the error.)
- a lossy codec, C >= 3: "two hop": an all-to-all of encoded chunks (member j gets everyone's
  chunk j and averages it), then an all-gather of the re-encoded chunk means. Twice the codec's
  error bound, but each member moves 2(C-1)/C payloads instead of C-1.

Bytes this rank moves over the WAN per call (n = stripe values, C = cities in the stripe group,
P(m) = codec.payload_bytes(m), all sent = recv):
- none:         2 (C-1) * 4 (n+1) / C, integer floor    (ring reduce-scatter + all-gather)
- codec, C = 2: (C-1) * (P(n) + 4)                       (ring all-gather)
- codec, C > 2: 2 (C-1) * (P(ceil(n / C)) + 4)           (all-to-all + ring all-gather)
These are payload bytes; gloo adds ~150 B of header per message and TCP/IP its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology
from crosscity.train.wan.codecs import Codec, ErrorFeedback, make_codec


@dataclass
class WanBytes:
    sent: int = 0
    recv: int = 0

    def __add__(self, other: WanBytes) -> WanBytes:
        return WanBytes(self.sent + other.sent, self.recv + other.recv)


def stripe_bounds(numel: int, parts: int, index: int) -> tuple[int, int]:
    """[start, end) of part `index` when `numel` values are split into `parts` near-equal parts."""
    base, extra = divmod(numel, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


def ring_allreduce_bytes(nbytes: int, members: int) -> int:
    """Payload bytes one member sends (and receives) in a ring all-reduce of `nbytes`."""
    return 2 * (members - 1) * nbytes // members


def world_ring_bytes(nbytes: int, topo: Topology) -> WanBytes:
    """WAN bytes of this rank in gloo's ring all-reduce of `nbytes` over EVERY rank (the flat and
    PyTorch baselines). The ring sends to rank - 1; with city-major numbering only a city's local rank 0
    sends across the WAN (to the previous city's last rank) and only local rank R-1 receives from it."""
    if topo.num_cities == 1:
        return WanBytes()
    ring = ring_allreduce_bytes(nbytes, topo.world_size)
    first, last = topo.local_rank == 0, topo.local_rank == topo.ranks_per_city - 1
    return WanBytes(sent=ring if first else 0, recv=ring if last else 0)


def ring_allgather_bytes(nbytes: int, members: int) -> int:
    """Payload bytes one member sends (and receives) in a ring all-gather of `nbytes` per member."""
    return (members - 1) * nbytes


def _as_codec(codec: Codec | str | None) -> Codec:
    return make_codec(codec or "none") if codec is None or isinstance(codec, str) else codec


def _pack(payload: list[torch.Tensor], weight: float) -> torch.Tensor:
    """All payload tensors and the weight as one byte vector: one all_gather per exchange."""
    parts = [t.contiguous().view(torch.uint8) for t in payload]
    parts.append(torch.tensor([weight], dtype=torch.float32, device=parts[0].device).view(torch.uint8))
    return torch.cat(parts)


def _unpack(codec: Codec, raw: torch.Tensor, numel: int) -> tuple[list[torch.Tensor], float]:
    payload, offset = [], 0
    for shape, dtype in codec.payload_shapes(numel):
        size = torch.empty(shape, dtype=dtype).numel() * torch.empty((), dtype=dtype).element_size()
        payload.append(raw[offset : offset + size].clone().view(dtype).view(shape))
        offset += size
    return payload, float(raw[offset : offset + 4].clone().view(torch.float32))


def _mean_of(codec: Codec, rows: list[torch.Tensor], numel: int, key: str) -> tuple[torch.Tensor, float]:
    """Weighted mean of the packed payloads in `rows` (members in group order) and their total weight."""
    summed, total = torch.zeros(numel, dtype=torch.float64, device=rows[0].device), 0.0
    for raw in rows:
        payload, weight = _unpack(codec, raw, numel)
        if weight > 0:
            summed += weight * codec.decode(payload, numel).to(torch.float64)
            total += weight
    if total <= 0:
        raise ValueError(f"exchange {key!r}: total weight across participants is {total}; nobody contributed")
    return (summed / total).to(torch.float32), total


def _encode(codec: Codec, x: torch.Tensor, feedback: ErrorFeedback | None, key: str) -> list[torch.Tensor]:
    return feedback.encode(codec, x, key) if feedback is not None else codec.encode(x)


def _all_gather_rows(mine: torch.Tensor, group: dist.ProcessGroup, members: int) -> list[torch.Tensor]:
    rows = [torch.empty_like(mine) for _ in range(members)]
    dist.all_gather(rows, mine, group=group)
    return rows


def _ring_mean(
    x: torch.Tensor, weight: float, group: dist.ProcessGroup, members: int, key: str
) -> tuple[torch.Tensor, int]:
    packed = torch.cat([x * weight, torch.tensor([weight], dtype=torch.float32, device=x.device)])
    dist.all_reduce(packed, group=group)
    if packed[-1] <= 0:
        raise ValueError(
            f"exchange {key!r}: total weight across participants is {float(packed[-1])}; nobody contributed"
        )
    return packed[:-1] / packed[-1], ring_allreduce_bytes(packed.numel() * 4, members)


def _gathered_mean(
    x: torch.Tensor,
    weight: float,
    group: dist.ProcessGroup,
    members: int,
    codec: Codec,
    feedback: ErrorFeedback | None,
    key: str,
) -> tuple[torch.Tensor, int]:
    mine = _pack(_encode(codec, x, feedback, key), weight)
    mean, _ = _mean_of(codec, _all_gather_rows(mine, group, members), x.numel(), key)
    return mean, ring_allgather_bytes(mine.numel(), members)


def _two_hop_mean(
    x: torch.Tensor,
    weight: float,
    group: dist.ProcessGroup,
    members: int,
    codec: Codec,
    feedback: ErrorFeedback | None,
    owner_feedback: ErrorFeedback | None,
    key: str,
) -> tuple[torch.Tensor, int]:
    """Compressed reduce-scatter (all-to-all of encoded chunks; member j averages chunk j), then a
    compressed all-gather of the averaged chunks: 2(C-1)/C of a payload instead of C-1 payloads,
    at the price of a second encode (its residual is kept by the chunk's owner)."""
    bounds = [stripe_bounds(x.numel(), members, j) for j in range(members)]
    width = bounds[0][1] - bounds[0][0]
    send = []
    for j, (a, b) in enumerate(bounds):
        chunk = torch.zeros(width, device=x.device)
        chunk[: b - a] = x[a:b]  # zero padding changes no chunk's scale
        send.append(_pack(_encode(codec, chunk, feedback, f"{key}/chunk{j}"), weight))
    sent = torch.cat(send)
    received = torch.empty_like(sent)
    dist.all_to_all_single(received, sent, group=group)
    mine, total = _mean_of(codec, list(received.view(members, -1)), width, key)
    row = _pack(_encode(codec, mine, owner_feedback, f"{key}/owned"), total)
    means = [_mean_of(codec, [r], width, key)[0] for r in _all_gather_rows(row, group, members)]
    out = torch.cat([m[: b - a] for m, (a, b) in zip(means, bounds, strict=True)])
    return out, 2 * (members - 1) * row.numel()


def weighted_mean(
    x: torch.Tensor,
    weight: float,
    group: dist.ProcessGroup,
    codec: Codec | str | None = None,
    feedback: ErrorFeedback | None = None,
    key: str = "",
    participate: bool = True,
) -> tuple[torch.Tensor, WanBytes]:
    """sum_c w_c x_c / sum_c w_c over the members of `group`, and the bytes this rank moved.

    A member with participate=False still joins the collective (the group's call order must not
    change) but contributes weight 0 and zeros, and leaves its error-feedback residual alone.
    Every member gets the same result, so a non-participant is brought back in step.
    """
    codec = _as_codec(codec)
    if weight < 0:
        raise ValueError(f"weight={weight}: must be >= 0 (samples processed since the last round)")
    x = x.detach().to(torch.float32).flatten()
    if not participate:
        x, weight = torch.zeros_like(x), 0.0
    members = dist.get_world_size(group)
    mine_feedback = feedback if participate else None
    if codec.name == "none":
        mean, moved = _ring_mean(x, weight, group, members, key)
    elif members <= 2:
        mean, moved = _gathered_mean(x, weight, group, members, codec, mine_feedback, key)
    else:
        mean, moved = _two_hop_mean(x, weight, group, members, codec, mine_feedback, feedback, key)
    return mean, WanBytes(sent=moved, recv=moved)


def check_participants(participants: list[int] | None, topo: Topology) -> bool:
    """Validate a round's participant list; returns whether this rank's city takes part."""
    if participants is None:
        return True
    bad = [c for c in participants if not 0 <= c < topo.num_cities]
    if not participants or bad or len(set(participants)) != len(participants):
        raise ValueError(
            f"participants={participants}: need distinct city ids in 0..{topo.num_cities - 1}, at least one"
        )
    return topo.city in participants


def gather_stripes(stripe: torch.Tensor, numel: int, group: dist.ProcessGroup, parts: int) -> torch.Tensor:
    """LAN all-gather of the R stripes of a `numel` vector (padded: gloo wants equal sizes)."""
    if parts == 1:
        return stripe
    width = stripe_bounds(numel, parts, 0)[1]
    padded = torch.zeros(width, dtype=stripe.dtype, device=stripe.device)
    padded[: stripe.numel()] = stripe
    pieces = [torch.empty_like(padded) for _ in range(parts)]
    dist.all_gather(pieces, padded, group=group)
    sizes = [b - a for a, b in (stripe_bounds(numel, parts, k) for k in range(parts))]
    return torch.cat([piece[:size] for piece, size in zip(pieces, sizes, strict=True)])


def average_across_cities(
    flat: torch.Tensor,
    weight: float,
    groups: Groups,
    topo: Topology,
    codec: Codec | str | None = None,
    feedback: ErrorFeedback | None = None,
    key: str = "",
    participants: list[int] | None = None,
) -> tuple[torch.Tensor, WanBytes]:
    """Weighted mean of `flat` across the participating cities, the same on every rank of every city.

    `participants` are the city ids taking part this round (None = all); the others still call
    this (collective) and receive the mean. WanBytes counts this rank's inter-city payload only.
    """
    participate = check_participants(participants, topo)
    start, end = stripe_bounds(flat.numel(), topo.ranks_per_city, topo.local_rank)
    stripe, moved = weighted_mean(flat[start:end], weight, groups.stripe, codec, feedback, key, participate)
    return gather_stripes(stripe, flat.numel(), groups.city, topo.ranks_per_city), moved
