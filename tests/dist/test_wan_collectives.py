"""The WAN weighted mean on real gloo processes: exact (none) or within the codec's bound, the same
on every rank, with byte counts that match both the formula and what the kernel saw written."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import torch

from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology
from crosscity.train.wan.codecs import CODECS, ErrorFeedback, make_codec
from crosscity.train.wan.collectives import WanBytes, average_across_cities, check_participants, stripe_bounds
from tests.helpers.distributed import run_on_cities

NUMEL = 1001  # odd: stripes of 501 and 500 values
THREE_CITY_NUMEL = 30_000
WEIGHTS = [3.0, 1.0, 2.0]  # unequal samples per city


def city_vector(city: int, numel: int = NUMEL) -> torch.Tensor:
    """What city `city` holds: distinct per city, the same on all its ranks, with a spike."""
    x = torch.randn(numel, generator=torch.Generator().manual_seed(100 + city))
    x[17 * (city + 1)] = 50.0
    return x


def exact_mean(cities: list[int], numel: int = NUMEL) -> torch.Tensor:
    total = sum(WEIGHTS[c] for c in cities)
    return sum(WEIGHTS[c] * city_vector(c, numel).double() for c in cities) / total


def _wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no wchar line")


def _outcome(mean: torch.Tensor, cities: list[int], moved: WanBytes, written: int = 0) -> dict[str, Any]:
    """What a rank reports back: small (the harness pipes results), enough to compare ranks."""
    return {
        "digest": hashlib.sha256(mean.numpy().tobytes()).hexdigest(),
        "error": float((mean.double() - exact_mean(cities, mean.numel())).abs().max()),
        "sent": moved.sent,
        "recv": moved.recv,
        "written": written,
    }


def _exchange_every_codec(topo: Topology, groups: Groups, numel: int) -> dict[str, Any]:
    x = city_vector(topo.city, numel)
    average_across_cities(x, 1.0, groups, topo)  # warm up connections outside the measurement
    results = {}
    everyone = list(range(topo.num_cities))
    for name in CODECS:
        before = _wchar()
        mean, moved = average_across_cities(x, WEIGHTS[topo.city], groups, topo, name, ErrorFeedback(), name)
        results[name] = _outcome(mean, everyone, moved, _wchar() - before)
    feedback = ErrorFeedback()  # city 0 sits out: everyone gets the others' mean, its residual stays empty
    mean, moved = average_across_cities(
        x, WEIGHTS[topo.city], groups, topo, "int8", feedback, "s", everyone[1:]
    )
    results["subset"] = {**_outcome(mean, everyone[1:], moved), "residuals": sorted(feedback.residuals)}
    results["accumulated"] = {fb: _accumulated_error(x, topo, groups, fb) for fb in (True, False)}
    return results


ROUNDS = 20


def _accumulated_error(x: torch.Tensor, topo: Topology, groups: Groups, with_feedback: bool) -> float:
    """The same int4 exchange ROUNDS times: how far the sum of the results is from ROUNDS x the mean."""
    feedback = ErrorFeedback() if with_feedback else None
    total = torch.zeros(x.numel(), dtype=torch.float64)
    for _ in range(ROUNDS):
        total += average_across_cities(x, WEIGHTS[topo.city], groups, topo, "int4", feedback, "acc")[
            0
        ].double()
    return float((total - ROUNDS * exact_mean(list(range(topo.num_cities)), x.numel())).abs().max())


def _check_agreement_and_subset(results: dict[int, dict[str, Any]], cities: int, hops: int) -> None:
    for name in [*CODECS, "subset"]:
        assert len({r[name]["digest"] for r in results.values()}) == 1, f"{name}: ranks disagree"
    numel = NUMEL if cities == 2 else THREE_CITY_NUMEL
    largest = torch.stack([city_vector(c, numel) for c in range(cities)]).abs().amax(0)
    for r in results.values():  # error feedback: bounded by the last residuals; without: grows per round
        with_fb, without = r["accumulated"][True], r["accumulated"][False]
        assert with_fb <= hops * 1.1 * make_codec("int4").error_bound(largest), with_fb
        assert without > 5 * with_fb, (without, with_fb)
    others = torch.stack([city_vector(c, numel) for c in range(1, cities)])
    for rank, r in results.items():
        assert r["subset"]["error"] <= hops * make_codec("int8").error_bound(others.abs().amax(0)) + 1e-6
        in_city_0 = rank < len(results) // cities
        if hops == 1:
            assert r["subset"]["residuals"] == ([] if in_city_0 else ["s"])
        else:  # a chunk owner keeps the residual of re-encoding its mean, participant or not
            mine = [] if in_city_0 else ["s/chunk0", "s/chunk1", "s/chunk2"]
            assert r["subset"]["residuals"] == [*mine, "s/owned"]


def test_two_cities_two_ranks_every_codec() -> None:
    results = run_on_cities(_exchange_every_codec, 2, 2, NUMEL)
    for name in CODECS:
        codec = make_codec(name)
        # a weighted mean of values each within its bound is within the largest bound
        bound = max(codec.error_bound(city_vector(c)) for c in (0, 1)) + 1e-6
        for rank, r in results.items():
            assert r[name]["error"] <= bound, (name, rank)
            start, end = stripe_bounds(NUMEL, 2, rank % 2)
            stripe = end - start
            # one peer city: a ring all-reduce of (stripe + weight) floats sends each float once;
            # an all-gather sends this city's payload and 4 weight bytes once
            expected = (stripe + 1) * 4 if name == "none" else codec.payload_bytes(stripe) + 4
            assert r[name]["sent"] == r[name]["recv"] == expected, (name, rank, r[name], expected)
    assert results[0]["int8"]["sent"] == 501 + 4 + 4  # int8 stripe 0: 1 byte/value + 1 chunk scale + weight
    assert results[1]["int4"]["sent"] == 250 + 4 + 4  # int4 stripe 1: 500 values in 250 bytes
    assert results[0]["none"]["error"] < 1e-5
    _check_agreement_and_subset(results, 2, hops=1)


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/<pid>/io")
def test_three_cities_two_hop_codecs_and_bytes_the_kernel_saw_written() -> None:
    """One rank per city, so every byte a rank writes to a socket crosses the (emulated) WAN; gloo's
    tcp transport writes with writev, which /proc/self/io counts as wchar."""
    results = run_on_cities(_exchange_every_codec, 3, 1, THREE_CITY_NUMEL)
    largest = torch.stack([city_vector(c, THREE_CITY_NUMEL) for c in range(3)]).abs().amax(0)
    for rank, r in results.items():
        for name in CODECS:
            codec, got = make_codec(name), r[name]
            # two encodes (the chunk, then its mean), each within the bound for the largest values
            assert got["error"] <= 2 * codec.error_bound(largest) + 1e-5, (rank, name)
            chunk = THREE_CITY_NUMEL // 3
            two_hop = 2 * 2 * (codec.payload_bytes(chunk) + 4)
            expected = 2 * 2 * 4 * (THREE_CITY_NUMEL + 1) // 3 if name == "none" else two_hop
            assert got["sent"] == got["recv"] == expected, (rank, name, got, expected)
            # gloo adds a small header per message; nothing else may be unaccounted for
            assert 0 <= got["written"] - got["sent"] <= 4096, (rank, name, got)
        assert r["int8"]["sent"] < r["none"]["sent"] / 3.9 and r["int4"]["sent"] < r["none"]["sent"] / 7.8
    _check_agreement_and_subset(results, 3, hops=2)


def test_participants_are_validated() -> None:
    topo = Topology(1, 3, 0, 2)
    assert check_participants(None, topo) and check_participants([1, 2], topo)
    assert not check_participants([0], topo)
    for bad in ([], [3], [1, 1], [-1]):
        with pytest.raises(ValueError, match="distinct city ids in 0..2"):
            check_participants(bad, topo)
