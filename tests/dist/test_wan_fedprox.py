"""FedProx behind the sync interface: the proximal term pulls each city towards `global_params()`, the
global model of its last round (average: the consensus; diloco: the anchor; streaming: fragment anchors)."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import parameters_to_vector

from crosscity.config.schema import WanConfig
from crosscity.train.lan.allreduce import TorchReducer, allreduce_gradients
from crosscity.train.optim import proximal_term
from tests.helpers.distributed import run_on_cities
from tests.helpers.wan import batch, batch_size, by_rank, fresh

H, STEPS = 5, 12  # rounds at steps 5 and 10, the final one at 12


def _train(topo, groups, cfg: WanConfig, mu: float | None) -> tuple[torch.Tensor, float, float]:
    """The trainer's inner loop with FedProx's term (mu None: no term at all). Returns the final
    parameters, the drift from the global model just before the first round, and the largest gap
    between the parameters and global_params() right after a round."""
    model, opt, sync = fresh(topo, groups, cfg)
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
        if sync.after_step(step, batch_size(topo.city)) is not None and cfg.algorithm != "streaming":
            own = parameters_to_vector(model.parameters()).detach()
            gap_after_round = max(gap_after_round, float((own - sync.global_params()).abs().max()))
    sync.finish()
    return parameters_to_vector(model.parameters()).detach(), drift, gap_after_round


def _three(topo, groups, cfg: WanConfig) -> dict[str, tuple[torch.Tensor, float, float]]:
    return {name: _train(topo, groups, cfg, mu) for name, mu in (("plain", None), ("mu0", 0.0), ("mu1", 1.0))}


@pytest.mark.parametrize("algorithm", ["average", "diloco", "streaming"])
def test_fedprox_with_mu_0_is_the_plain_algorithm_bit_for_bit(algorithm: str) -> None:
    cfg = WanConfig(algorithm=algorithm, sync_every=H, fragments=2, overlap_steps=1)
    results = by_rank(run_on_cities(_three, 2, 2, cfg))
    for rank in results:
        assert torch.equal(rank["mu0"][0], rank["plain"][0])  # the same bits, not just close
        assert not torch.allclose(rank["mu1"][0], rank["plain"][0], atol=1e-4)  # the term does act
        assert rank["mu1"][1] < rank["plain"][1]  # and keeps the city closer to its round model
        assert rank["plain"][2] == 0.0  # right after a round, the parameters are the global model
    finals = [rank["mu1"][0] for rank in results]
    assert all(torch.equal(f, finals[0]) for f in finals)  # every city ends with the same model
