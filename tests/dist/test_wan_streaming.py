"""Streaming DiLoCo on real gloo processes and a real coordinator: it is DiLoCo when F=1 and tau=0,
it matches a plain sequential re-statement of the merge rule, its exchanges really overlap compute,
and a checkpoint taken with an exchange in flight resumes to the same parameters."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from crosscity.config import WanConfig
from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology
from crosscity.train.wan.federated import FederatedSync
from crosscity.train.wan.sync import WanRound
from tests.helpers.distributed import run_on_cities
from tests.helpers.federation import run_config
from tests.helpers.wan import INNER_LR, batch_size, by_rank, fresh, inner_step, make_model, run_steps, train

# Generous round timing: on a loaded machine a city may lag by seconds, and a missed round would
# change the numbers these tests compare (timing is tested in tests/unit/test_federation_coordinator.py).
PATIENT = ["wan.round_timeout_s=60", "wan.dead_after_s=20", "wan.heartbeat_s=0.5", "data.batch_size=4"]
STREAMING = ["wan.algorithm=streaming", "wan.outer_lr=0.7", "wan.outer_momentum=0.9", *PATIENT]
# name -> (ranks per city, config overrides): one coordinator (run directory) per experiment
RUNS: dict[str, tuple[int, list[str]]] = {
    "diloco": (2, ["wan.algorithm=diloco", "wan.sync_every=3", *PATIENT]),
    "streaming_f1": (2, [*STREAMING, "wan.sync_every=3", "wan.fragments=1", "wan.overlap_steps=0"]),
    "resume_straight": (
        2,
        [
            *STREAMING,
            "wan.sync_every=4",
            "wan.fragments=2",
            "wan.overlap_steps=2",
            "wan.codec=int8",
            "wan.error_feedback=true",
        ],
    ),
    "resume_stopped": (
        2,
        [
            *STREAMING,
            "wan.sync_every=4",
            "wan.fragments=2",
            "wan.overlap_steps=2",
            "wan.codec=int8",
            "wan.error_feedback=true",
        ],
    ),
    "when_ready_slow": (
        2,
        [
            *STREAMING,
            "wan.sync_every=4",
            "wan.fragments=1",
            "wan.overlap_steps=1",
            "wan.merge=when_ready",
        ],
    ),
    "when_ready_fast": (
        2,
        [
            *STREAMING,
            "wan.sync_every=4",
            "wan.fragments=1",
            "wan.overlap_steps=1",
            "wan.merge=when_ready",
        ],
    ),
    "overlapped": (
        1,
        [*STREAMING, "wan.sync_every=4", "wan.fragments=2", "wan.overlap_steps=1", "wan.warmup_steps=2"],
    ),
    "stalled_1": (
        1,
        [*STREAMING, "wan.sync_every=2", "wan.fragments=1", "wan.overlap_steps=1"],
    ),
    "stalled_0": (
        1,
        [*STREAMING, "wan.sync_every=2", "wan.fragments=1", "wan.overlap_steps=0"],
    ),
}


def _two_ranks_per_city(topo: Topology, groups: Groups, dirs: dict[str, Path]) -> dict[str, Any]:
    diloco = train(topo, groups, dirs["diloco"], steps=10)[0]
    stream = train(topo, groups, dirs["streaming_f1"], steps=10)[0]
    return {
        "diloco_vs_streaming": (diloco, stream),
        "resume": _resume(topo, groups, dirs["resume_straight"], dirs["resume_stopped"]),
        "when_ready": {slow: _when_ready(topo, groups, slow, dirs) for slow in (True, False)},
    }


def _one_rank_per_city(topo: Topology, groups: Groups, dirs: dict[str, Path]) -> dict[str, Any]:
    return {
        "overlapped": train(topo, groups, dirs["overlapped"], steps=13),
        "stalled": _stalled(topo, groups, dirs),
    }


def _experiments(tmp: Path, ranks: int) -> dict[str, Path]:
    return {
        name: tmp / name
        for name, (r, overrides) in RUNS.items()
        if r == ranks and run_config(tmp / name, 2, r, *overrides)
    }


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """2 cities x 2 ranks, one set of processes for every test that needs them (spawns are slow)."""
    dirs = _experiments(tmp_path_factory.mktemp("two"), 2)
    return by_rank(run_on_cities(_two_ranks_per_city, 2, 2, dirs, run_dirs=list(dirs.values())))


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    dirs = _experiments(tmp_path_factory.mktemp("one"), 1)
    return by_rank(run_on_cities(_one_rank_per_city, 2, 1, dirs, run_dirs=list(dirs.values())))


def test_one_fragment_without_overlap_is_diloco(two_ranks: list[dict[str, Any]]) -> None:
    results = [r["diloco_vs_streaming"] for r in two_ranks]
    for diloco, stream in results:
        assert torch.allclose(diloco, stream, atol=1e-6), float((diloco - stream).abs().max())
        assert torch.equal(stream, results[0][1])  # every rank of every city ends equal


def reference(wan: WanConfig, cities: int, steps: int) -> torch.Tensor:
    """Streaming DiLoCo re-stated sequentially, one process, one rank per city, from the docs."""
    models = [make_model() for _ in range(cities)]
    opts = [torch.optim.SGD(m.parameters(), lr=INNER_LR) for m in models]
    start = parameters_to_vector(models[0].parameters()).detach()
    anchors = [nn.Parameter(p.clone(), requires_grad=False) for p in torch.tensor_split(start, wan.fragments)]
    outer = torch.optim.SGD(anchors, lr=wan.outer_lr, momentum=wan.outer_momentum, nesterov=True)
    sizes = [a.numel() for a in anchors]
    samples = [[0] * wan.fragments for _ in range(cities)]  # steps: the coordinator's FedAvg weights
    in_flight: dict[
        int, tuple[int, torch.Tensor, list[torch.Tensor]]
    ] = {}  # f -> (merge step, mean, snapshots)

    def params(c: int) -> list[torch.Tensor]:
        return list(torch.split(parameters_to_vector(models[c].parameters()).detach().clone(), sizes))

    def begin(f: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        weights = torch.tensor([float(samples[c][f]) for c in range(cities)])
        snaps = [params(c)[f] for c in range(cities)]
        mean = sum(w * (anchors[f].detach() - s) for w, s in zip(weights, snaps, strict=True)) / weights.sum()
        for c in range(cities):
            samples[c][f] = 0
        return mean, snaps

    def land(f: int, mean: torch.Tensor, snaps: list[torch.Tensor]) -> None:
        anchors[f].grad = mean
        outer.step()
        anchors[f].grad = None
        for c in range(cities):
            frags = params(c)
            frags[f] = anchors[f].detach() + (frags[f] - snaps[c])
            vector_to_parameters(torch.cat(frags), models[c].parameters())

    for step in range(1, steps + 1):
        for c in range(cities):
            inner_step(models[c], opts[c], c, 0, step, batch_size(c))
            opts[c].step()
            samples[c] = [s + 1 for s in samples[c]]
        if step <= wan.warmup_steps:
            for f in range(wan.fragments):
                land(f, *begin(f))
            continue
        for f in [f for f, (due, _, _) in in_flight.items() if due == step]:
            land(f, *in_flight.pop(f)[1:])
        for f in range(wan.fragments):
            if (step - wan.warmup_steps) % wan.sync_every == (
                f + 1
            ) * wan.sync_every // wan.fragments % wan.sync_every:
                in_flight[f] = (step + wan.overlap_steps, *begin(f))
    for f in sorted(in_flight):
        land(f, *in_flight.pop(f)[1:])
    for f in range(wan.fragments):
        if samples[0][f]:
            land(f, *begin(f))
    return parameters_to_vector(models[0].parameters()).detach()


OVERLAPPED = WanConfig(
    algorithm="streaming",
    outer_lr=0.7,
    outer_momentum=0.9,
    sync_every=4,
    fragments=2,
    overlap_steps=1,
    warmup_steps=2,
)


def test_matches_the_sequential_statement_of_the_merge_rule(one_rank: list[dict[str, Any]]) -> None:
    results = [r["overlapped"] for r in one_rank]
    expected = reference(OVERLAPPED, cities=2, steps=13)
    for params, rounds, _ in results:
        assert torch.allclose(params, expected, atol=1e-5), float((params - expected).abs().max())
        assert torch.equal(params, results[0][0])
        # warm-up rounds at steps 1-2 (both fragments); then fragment 0 starts at steps 4, 8, 12 (phase 2
        # of H=4 after W=2) and lands one step later; fragment 1 starts at 6, 10 and lands at 7, 11
        by_step = {s + 1: r for s, r in enumerate(rounds[:-1]) if r is not None}
        assert sorted(by_step) == [1, 2, 5, 7, 9, 11, 13]
        assert [by_step[s].fragment for s in (5, 7, 9, 11, 13)] == [0, 1, 0, 1, 0]
        sizes = [a.numel() for a in torch.tensor_split(params, 2)]
        for s in (5, 7, 9, 11, 13):  # one stripe of float32 each way, plus the frame's small JSON header
            payload = 4 * sizes[by_step[s].fragment]
            assert (
                payload < by_step[s].bytes_sent < payload + 400
                and payload < by_step[s].bytes_recv < payload + 400
            )
        assert 4 * sum(sizes) < by_step[1].bytes_sent < 4 * sum(sizes) + 800  # warm-up: both fragments
        assert rounds[-1] is not None and rounds[-1].fragment is None  # finish: a full synchronous round
        assert all(r.participants == [0, 1] for r in by_step.values())


LATE_S = 1.5


def _stalled(
    topo: Topology, groups: Groups, dirs: dict[str, Path]
) -> dict[int, tuple[list[float], list[WanRound | None]]]:
    """H=2: the exchange starts at step 2, where city 1 arrives 1.5 s late; with tau=1 every city
    then 'computes' for 2.5 s before step 3, where the exchange lands. (Seconds, not milliseconds:
    the margins must survive a loaded 2-core machine.)"""
    late = {2: LATE_S} if topo.city == 1 else {}
    out = {}
    for tau in (1, 0):
        _, rounds, call_s = train(
            topo, groups, dirs[f"stalled_{tau}"], steps=3, stall={**late, 3: LATE_S + 1.0} if tau else late
        )
        out[tau] = (call_s, rounds)
    return out


def test_exchange_runs_in_the_background(one_rank: list[dict[str, Any]]) -> None:
    """tau=1: city 0 returns from the start step at once, the exchange completes during its compute,
    and the merge does not block; tau=0: the same exchange blocks it for city 1's whole delay."""
    city0 = one_rank[0]["stalled"]
    call_s, rounds = city0[1]
    assert call_s[1] < LATE_S / 2  # step 2 started the exchange without waiting for city 1
    assert rounds[1] is None and rounds[2] is not None and rounds[2].fragment == 0
    assert rounds[2].extra["blocked_s"] < LATE_S / 2  # it landed during the compute of step 3
    assert rounds[2].seconds > LATE_S * 0.8  # yet the exchange itself lasted until city 1 joined
    call_s, rounds = city0[0]
    assert call_s[1] > LATE_S * 0.8 and rounds[1] is not None and rounds[1].extra["blocked_s"] > LATE_S * 0.8


def _resume(
    topo: Topology, groups: Groups, straight_dir: Path, stopped_dir: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fragment 1 starts at step 4 and lands at step 6: a checkpoint at step 5 holds it in flight."""
    straight = train(topo, groups, straight_dir, steps=9)[0]
    model, opt, sync = fresh(topo, groups, stopped_dir)
    run_steps(model, opt, sync, topo, groups, range(1, 6))
    assert isinstance(sync, FederatedSync) and list(sync.in_flight) == [1]
    checkpoint = copy.deepcopy(
        {"model": model.state_dict(), "opt": opt.state_dict(), "sync": sync.state_dict()}
    )
    sync.close()  # the rank is stopped here
    model, opt, sync = fresh(topo, groups, stopped_dir, join=False)
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["opt"])
    sync.load_state_dict(checkpoint["sync"])
    sync.join(fresh=False, step=5)  # registers again; its copy of the global is current: no heal
    run_steps(model, opt, sync, topo, groups, range(6, 10))
    sync.finish()
    return straight, parameters_to_vector(model.parameters()).detach()


def test_resume_with_an_exchange_in_flight_gives_the_same_parameters(two_ranks: list[dict[str, Any]]) -> None:
    for straight, resumed in (r["resume"] for r in two_ranks):
        assert torch.equal(straight, resumed)


def _when_ready(topo: Topology, groups: Groups, city0_slow: bool, dirs: dict[str, Path]) -> dict[str, Any]:
    """H=4, tau=1, merge=when_ready: city 1 starts the step-4 exchange 1.5 s late. City 0 either
    computes 1 s per step from step 5 on (the result lands during step 6) or is fast (it has not
    landed by step 8, where the fragment's next round is due, so that merge must wait)."""
    city0 = {5: 1.0, 6: 1.0, 7: 1.0} if city0_slow else {}
    model, opt, sync = fresh(topo, groups, dirs["when_ready_slow" if city0_slow else "when_ready_fast"])
    rounds, call_s = run_steps(
        model, opt, sync, topo, groups, range(1, 9), {4: LATE_S} if topo.city == 1 else city0
    )
    before_finish = parameters_to_vector(model.parameters()).detach().clone()
    sync.finish()
    merges = {step: r for step, r in enumerate(rounds, start=1) if r is not None}
    return {
        "merges": {s: (r.extra["merged_after_steps"], r.extra["blocked_s"]) for s, r in merges.items()},
        "call_s": call_s,
        "before_finish": before_finish,
        "final": parameters_to_vector(model.parameters()).detach(),
    }


def test_merge_when_ready_neither_waits_at_tau_nor_splits_a_city(two_ranks: list[dict[str, Any]]) -> None:
    slow = [r["when_ready"][True] for r in two_ranks]  # ranks 0, 1: city 0; ranks 2, 3: city 1
    for rank in (0, 1):
        ((step, (after, blocked)),) = slow[rank]["merges"].items()
        assert step in (6, 7) and after == step - 4  # not at start + tau = 5: it had not landed
        assert blocked < LATE_S / 3 and slow[rank]["call_s"][4] < LATE_S / 3  # and never waited
    fast = [r["when_ready"][False] for r in two_ranks]
    for rank in (0, 1):
        (blocked,) = [b for s, (after, b) in fast[rank]["merges"].items() if s == 8 and after == 4]
        assert blocked > LATE_S / 2  # the next round is due at step 8: the merge had to wait for it
    for runs in (slow, fast):
        assert torch.equal(runs[0]["before_finish"], runs[1]["before_finish"])  # one merge step per city
        assert torch.equal(runs[2]["before_finish"], runs[3]["before_finish"])
        assert all(torch.equal(runs[0]["final"], r["final"]) for r in runs)  # anchors agree everywhere
