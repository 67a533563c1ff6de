"""FedProx behind the sync interface, on real gloo processes and a real coordinator: the proximal term
pulls each city towards `global_params()`, the global model it merged last (per fragment: streaming)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn.utils import parameters_to_vector

from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology
from crosscity.train.lan.allreduce import TorchReducer, allreduce_gradients
from crosscity.train.optim import proximal_term
from tests.helpers.distributed import run_on_cities
from tests.helpers.federation import run_config
from tests.helpers.wan import batch, batch_size, by_rank, fresh

H, STEPS = 5, 12  # rounds at steps 5 and 10, the final one at 12
# Generous round timing: a missed round on a loaded machine would change the numbers compared here.
PATIENT = ["wan.round_timeout_s=60", "wan.dead_after_s=20", "wan.heartbeat_s=0.5", f"wan.sync_every={H}"]
ALGORITHMS = {
    "average": ["wan.algorithm=average"],
    "diloco": ["wan.algorithm=diloco"],
    "streaming": ["wan.algorithm=streaming", "wan.fragments=2", "wan.overlap_steps=1"],
}
MU = {"plain": None, "mu0": 0.0, "mu1": 1.0}  # None: no term at all


def _train(
    topo: Topology, groups: Groups, run_dir: Path, mu: float | None
) -> tuple[torch.Tensor, float, float]:
    """The trainer's inner loop with FedProx's term. Returns the final parameters, the drift from the
    global model just before the first round, and the largest gap between the parameters and
    global_params() right after a round."""
    model, opt, sync = fresh(topo, groups, run_dir)
    drift, gap_after_round = 0.0, 0.0
    for step in range(1, STEPS + 1):
        x, y = batch(topo.city, topo.local_rank, step, batch_size(topo.city))
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        if mu is not None:
            loss = loss + proximal_term(model, sync.global_params(), mu)
        loss.backward()
        allreduce_gradients(model, TorchReducer(groups.city), "fp32", [])
        opt.step()
        own = parameters_to_vector(model.parameters()).detach()
        if step == H - 1:
            drift = float((own - sync.global_params()).norm())
        if sync.after_step(step, batch_size(topo.city)) is not None and sync.cfg.algorithm != "streaming":
            own = parameters_to_vector(model.parameters()).detach()
            gap_after_round = max(gap_after_round, float((own - sync.global_params()).abs().max()))
    sync.finish()
    final = parameters_to_vector(model.parameters()).detach()
    sync.leave("finished")
    sync.close()
    return final, drift, gap_after_round


def _every(topo: Topology, groups: Groups, dirs: dict[tuple[str, str], Path]) -> dict[tuple[str, str], Any]:
    return {(alg, name): _train(topo, groups, d, MU[name]) for (alg, name), d in dirs.items()}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[tuple[str, str], Any]]:
    """2 cities x 2 ranks; one coordinator (run directory) per algorithm and variant."""
    tmp = tmp_path_factory.mktemp("fedprox")
    dirs = {(alg, name): tmp / f"{alg}-{name}" for alg in ALGORITHMS for name in MU}
    for (alg, _), d in dirs.items():
        run_config(d, 2, 2, *PATIENT, *ALGORITHMS[alg])
    return by_rank(run_on_cities(_every, 2, 2, dirs, run_dirs=list(dirs.values())))


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_fedprox_with_mu_0_is_the_plain_algorithm_bit_for_bit(
    results: list[dict[tuple[str, str], Any]], algorithm: str
) -> None:
    for rank in results:
        plain, mu0, mu1 = (rank[(algorithm, name)] for name in MU)
        assert torch.equal(mu0[0], plain[0])  # the same bits, not just close
        assert not torch.allclose(mu1[0], plain[0], atol=1e-4)  # the term does act
        assert mu1[1] < plain[1]  # and keeps the city closer to its round model
        assert plain[2] == 0.0  # right after a round, the parameters are the global model
    finals = [rank[(algorithm, "mu1")][0] for rank in results]
    assert all(torch.equal(f, finals[0]) for f in finals)  # every city ends with the same model
