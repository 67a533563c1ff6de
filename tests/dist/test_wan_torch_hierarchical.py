"""Our `average` against PyTorch's own averagers on real gloo processes (2 cities x 2 ranks).

PyTorch's averagers count calls from 0 and average when count % H == 0, i.e. after inner steps
1, H+1, 2H+1, ...; our schedule with warm-up W=1 syncs at steps 1, 1+H, 1+2H, ...: the same clock.
With equal city sizes FedAvg weights are equal, so the parameters must agree - ours through the
coordinator with each city its own world, PyTorch's over one world of every rank.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.distributed.algorithms.model_averaging.averagers import PeriodicModelAverager
from torch.nn.utils import parameters_to_vector

from crosscity.config import WanConfig
from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology
from crosscity.train.wan.collectives import ring_allreduce_bytes
from tests.helpers.distributed import run_on_cities
from tests.helpers.federation import run_config
from tests.helpers.wan import by_rank, fresh, run_steps, train

H, STEPS, BATCH = 3, 10, 8


def equal_size(city: int) -> int:
    return BATCH


def _pytorch_periodic(topo: Topology, groups: Groups) -> torch.Tensor:
    """PyTorch's documented loop: average_parameters after every optimizer step."""
    model, opt, _ = fresh(topo, groups, WanConfig(algorithm="flat"))
    averager = PeriodicModelAverager(period=H, warmup_steps=0)

    class Periodic:  # after_step is where our trainer calls a sync: call PyTorch's averager there
        def after_step(self, step: int, samples: int) -> None:
            averager.average_parameters(model.parameters())

    run_steps(model, opt, Periodic(), topo, groups, range(1, STEPS + 1), sizes=equal_size)  # type: ignore[arg-type]
    return parameters_to_vector(model.parameters()).detach()


def _ours(topo: Topology, groups: Groups, aligned: Path, unaligned: Path) -> dict[str, Any]:
    """Our `average` through the coordinator, each city its own world."""
    return {
        "ours": train(topo, groups, aligned, STEPS, sizes=equal_size),
        "ours_unaligned": train(topo, groups, unaligned, STEPS, sizes=equal_size),
    }


def _all_averagers(topo: Topology, groups: Groups) -> dict[str, Any]:
    """PyTorch's averagers over one world of every rank."""
    with_intra = WanConfig(
        algorithm="torch_hierarchical", sync_every=H, torch_intra_every=1
    )  # {1: R, H: world}
    return {
        "periodic": _pytorch_periodic(topo, groups),
        "hierarchical": train(
            topo, groups, WanConfig(algorithm="torch_hierarchical", sync_every=H), STEPS, sizes=equal_size
        ),
        "hierarchical_intra": train(topo, groups, with_intra, STEPS, sizes=equal_size)[0],
        "n_params": sum(p.numel() for p in fresh(topo, groups, WanConfig(algorithm="flat"))[0].parameters()),
    }


def test_average_equals_pytorch_averagers_on_the_same_schedule(tmp_path: Path) -> None:
    patient = [
        "wan.round_timeout_s=60",
        "wan.dead_after_s=20",
        "wan.heartbeat_s=0.5",
        f"data.batch_size={BATCH}",
    ]
    aligned, unaligned = tmp_path / "aligned", tmp_path / "unaligned"
    run_config(aligned, 2, 2, "wan.algorithm=average", f"wan.sync_every={H}", "wan.warmup_steps=1", *patient)
    run_config(unaligned, 2, 2, "wan.algorithm=average", f"wan.sync_every={H}", *patient)
    ours = by_rank(run_on_cities(_ours, 2, 2, aligned, unaligned, run_dirs=[aligned, unaligned]))
    results = [{**o, **t} for o, t in zip(ours, by_rank(run_on_cities(_all_averagers, 2, 2)), strict=True)]
    for rank, r in enumerate(results):
        ours, rounds, _ = r["ours"]
        hierarchical, torch_rounds, _ = r["hierarchical"]
        assert torch.allclose(ours, r["periodic"], atol=1e-6), float((ours - r["periodic"]).abs().max())
        assert torch.allclose(ours, hierarchical, atol=1e-6)
        assert torch.allclose(ours, r["hierarchical_intra"], atol=1e-6)
        assert torch.equal(ours, results[0]["ours"][0])
        # the same clock: rounds after steps 1, 4, 7, 10, and no final round needed
        assert [i + 1 for i, x in enumerate(rounds[:-1]) if x] == [1, 4, 7, 10] and rounds[-1] is None
        assert [i + 1 for i, x in enumerate(torch_rounds[:-1]) if x] == [1, 4, 7, 10] and torch_rounds[
            -1
        ] is None
        # without the aligned warm-up our clock (3, 6, 9) differs from PyTorch's (1, 4, 7, 10)
        assert not torch.allclose(r["ours_unaligned"][0], r["periodic"], atol=1e-4)
        # world ring all-reduce of fp32 params: local rank 0 sends to the previous city, rank 1 receives
        ring = ring_allreduce_bytes(4 * r["n_params"], 4)
        first = rank % 2 == 0
        assert all(x.bytes_sent == (ring if first else 0) for x in torch_rounds if x)
        assert all(x.bytes_recv == (0 if first else ring) for x in torch_rounds if x)
