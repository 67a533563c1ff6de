"""SCAFFOLD behind the sync interface, on real gloo processes and real coordinators: the correction
c - c_i on every inner gradient, c_i in the city's checkpoint, c at the coordinator."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.nn.utils import parameters_to_vector

from crosscity.train.distributed.process_groups import Groups
from crosscity.train.distributed.topology import Topology
from crosscity.train.lan.allreduce import TorchReducer, allreduce_gradients
from crosscity.train.optim import add_to_gradients
from tests.helpers.distributed import run_on_cities
from tests.helpers.federation import run_config
from tests.helpers.wan import batch, batch_size, by_rank, fresh

H, STEPS = 5, 12  # rounds at steps 5 and 10, the final one at 12
PATIENT = ["wan.round_timeout_s=60", "wan.dead_after_s=20", "wan.heartbeat_s=0.5", f"wan.sync_every={H}"]
RUNS = {  # name: (cities, overrides)
    "pair": (2, ["wan.algorithm=diloco", "wan.scaffold=true"]),
    "alone": (1, ["wan.algorithm=diloco", "wan.scaffold=true"]),
    "alone-plain": (1, ["wan.algorithm=diloco"]),
}


def _train(topo: Topology, groups: Groups, run_dir: Path) -> dict[str, Any]:
    """The trainer's inner loop with the sync's gradient correction; then a checkpoint round trip."""
    model, opt, sync = fresh(topo, groups, run_dir)
    corrections = []
    for step in range(1, STEPS + 1):
        x, y = batch(topo.city, topo.local_rank, step, batch_size(topo.city))
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        allreduce_gradients(model, TorchReducer(groups.city), "fp32", [])
        correction = sync.gradient_correction()
        if correction is not None:
            corrections.append(float(correction.abs().max()))
            add_to_gradients(model, correction)
        opt.step()
        sync.after_step(step, batch_size(topo.city))
    sync.finish()
    out: dict[str, Any] = {
        "final": parameters_to_vector(model.parameters()).detach(),
        "corrections": corrections,
    }
    if sync.scaffold is not None:
        buffer = io.BytesIO()
        torch.save(sync.state_dict(), buffer)
        before = sync.scaffold.state_dict()
        sync.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
        after = sync.scaffold.state_dict()
        out["restored"] = all(torch.equal(before[k], after[k]) for k in ("mine", "server"))
        out["mine"], out["server"] = sync.scaffold.mine.copy(), sync.scaffold.server.copy()
    sync.leave("finished")
    sync.close()
    return out


def _every(topo: Topology, groups: Groups, dirs: dict[str, Path]) -> dict[str, Any]:
    """Both cities run the pair; city 0 then also the one-city runs, alone."""
    names = ["pair"] if topo.city else list(RUNS)
    return {name: _train(topo, groups, dirs[name]) for name in names}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """2 cities x 2 ranks."""
    tmp = tmp_path_factory.mktemp("scaffold")
    dirs = {name: tmp / name for name in RUNS}
    for name, (cities, overrides) in RUNS.items():
        run_config(dirs[name], cities, 2, *PATIENT, *overrides)
    return by_rank(run_on_cities(_every, 2, 2, dirs, run_dirs=list(dirs.values())))


def test_scaffold_with_one_city_is_the_plain_algorithm_bit_for_bit(results: list[dict[str, Any]]) -> None:
    """Alone, c = c_i after every round: the correction is exactly 0 and changes no bit."""
    for rank in results[:2]:  # city 0's ranks
        alone, plain = rank["alone"], rank["alone-plain"]
        assert torch.equal(alone["final"], plain["final"])
        assert max(alone["corrections"]) == 0.0 and plain["corrections"] == []
        assert np.array_equal(alone["mine"], alone["server"]) and np.abs(alone["mine"]).max() > 0


def test_scaffold_corrects_each_city_and_they_end_on_one_model(results: list[dict[str, Any]]) -> None:
    pair = [rank["pair"] for rank in results]
    assert all(torch.equal(p["final"], pair[0]["final"]) for p in pair)  # every city ends on the global
    assert all(max(p["corrections"]) > 1e-3 for p in pair)  # c - c_i acts after the first round
    assert all(p["restored"] for p in pair)  # c_i and c survive a weights_only checkpoint
    assert np.array_equal(pair[0]["mine"], pair[1]["mine"])  # the city's ranks agree ...
    assert not np.allclose(pair[0]["mine"], pair[2]["mine"])  # ... the cities do not
    # equal FedAvg weights (the config's batch x steps): c is the cities' mean c_i
    np.testing.assert_allclose(pair[0]["server"], (pair[0]["mine"] + pair[2]["mine"]) / 2, atol=1e-5)
