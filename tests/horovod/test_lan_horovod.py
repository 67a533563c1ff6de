"""`lan.backend=horovod` on real processes: one Horovod world per city, the same model as the torch
gloo path, a preempted city rejoining a fresh Horovod world, Slurm jobs that host their own
rendezvous, and clear config errors (Horovod not built, bf16, flat, one horovodrun for several
cities)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from crosscity.core.rank_pids import rank_pids
from crosscity.train.observe.metrics_log import read_records
from tests.helpers.runs import (
    CONFIG,
    QUICK,
    crosscity,
    final_params,
    start_crosscity,
    wait_for_step,
)
from tests.helpers.slurm import records, require_slurm, submit_and_wait

COMMON = [
    "topology.cities=2",
    "topology.ranks_per_city=2",
    "wan.algorithm=diloco",
    "wan.sync_every=4",
    "optim.name=sgd",
    "optim.lr=0.05",
    "train.steps=32",
    *QUICK,
]


HOROVOD_LIB = "horovod/torch/mpi_lib_v2"


def run_args(data: Path, run_dir: Path, backend: str, grad_dtype: str = "fp32") -> list[str]:
    lan = [f"lan.backend={backend}", f"lan.grad_dtype={grad_dtype}"]
    cities = "data.cities=centre,east"
    return ["run", str(CONFIG), f"data.dir={data}", cities, *COMMON, *lan, f"train.run_dir={run_dir}"]


def require_horovod() -> None:
    """Skip outside CI where Horovod is not built; CI builds it (.ci/build-horovod.sh), so fail there."""
    try:
        import horovod.torch  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("CI needs horovod: bash .ci/build-horovod.sh (docs/horovod.md)")
        pytest.skip("horovod is not built: bash .ci/build-horovod.sh")


@pytest.fixture(scope="module")
def finished_run(small_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """(backend, grad_dtype) -> the run dir of one uninterrupted run, each run once per module."""
    require_horovod()
    runs: dict[tuple[str, str], Path] = {}

    def get(backend: str, grad_dtype: str) -> Path:
        if (backend, grad_dtype) not in runs:
            run_dir = tmp_path_factory.mktemp(f"{backend}_{grad_dtype}") / "run"
            r = crosscity(*run_args(small_dataset, run_dir, backend, grad_dtype))
            assert r.returncode == 0, r.stderr[-3000:]
            runs[backend, grad_dtype] = run_dir
        return runs[backend, grad_dtype]

    return get


def test_each_city_is_its_own_horovod_world(finished_run: Callable[..., Path]) -> None:
    """hvd.rank()/hvd.size() as each rank logged them: the local rank in a world of ranks_per_city,
    so no Horovod negotiation spans two cities."""
    records = read_records(finished_run("horovod", "fp32"), "lan")
    assert sorted(r["global_rank"] for r in records) == [0, 1, 2, 3]
    for r in records:
        assert (r["backend"], r["lan_rank"], r["lan_size"]) == ("horovod", r["local_rank"], 2)


@pytest.mark.parametrize("grad_dtype", ["fp32", "fp16"])
def test_horovod_lan_matches_torch_gloo(finished_run: Callable[..., Path], grad_dtype: str) -> None:
    hvd, gloo = (
        final_params(finished_run("horovod", grad_dtype)),
        final_params(finished_run("gloo", grad_dtype)),
    )
    for name in gloo:
        torch.testing.assert_close(hvd[name], gloo[name], rtol=1e-5, atol=1e-5)


def test_preempted_city_rejoins_a_fresh_horovod_world(small_dataset: Path, tmp_path: Path) -> None:
    """SIGUSR2 to city 1: it checkpoints, starts again, every one of its ranks initialises Horovod in
    a fresh world of its city, heals from the global model, and takes part in rounds again."""
    run_dir = tmp_path / "interrupted"
    launcher = start_crosscity(*run_args(small_dataset, run_dir, "horovod"))
    try:
        wait_for_step(run_dir, rank=2, step=6)
        pids = rank_pids(run_dir)
        for pid in pids.values():  # the LAN sum really runs in Horovod's library
            assert HOROVOD_LIB in Path(f"/proc/{pid}/maps").read_text()
        for (city, _), pid in pids.items():
            if city == 1:
                os.kill(pid, signal.SIGUSR2)
        out, err = launcher.communicate(timeout=240)
    finally:
        launcher.kill()
    assert launcher.returncode == 0, err[-3000:]
    assert "city 1 checkpointed for requeue; starting it again" in out
    events = [r["event"] for r in records(run_dir, 2, "event")]
    assert "preempt" in events and "resume" in events and "heal" in events, events
    for rank in (2, 3):  # one Horovod world of the city's 2 ranks per start
        worlds = [(r["lan_rank"], r["lan_size"]) for r in records(run_dir, rank, "lan")]
        assert worlds == [(rank - 2, 2)] * 2, worlds
    resumed = max(r["time"] for r in records(run_dir, 2, "event") if r["event"] == "resume")
    assert any(1 in r["participants"] for r in records(run_dir, 2, "wan") if r["time"] > resumed)
    assert final_params(run_dir)


@pytest.mark.slurm
def test_slurm_cities_host_their_own_horovod_rendezvous(small_dataset: Path, tmp_path: Path) -> None:
    """`crosscity submit` with lan.backend=horovod: nothing but the ranks themselves serves Horovod's
    rendezvous, and each rank still lands in a Horovod world of exactly its city."""
    require_horovod()
    require_slurm()
    run_dir = tmp_path / "run"
    overrides = [f"data.dir={small_dataset}", "data.cities=north,east", *COMMON, "lan.backend=horovod"]
    submit_and_wait(run_dir, overrides, timeout_s=180)
    records = read_records(run_dir, "lan")
    assert sorted(r["global_rank"] for r in records) == [0, 1, 2, 3]
    assert {(r["backend"], r["lan_rank"] - r["local_rank"], r["lan_size"]) for r in records} == {
        ("horovod", 0, 2)
    }
    assert (run_dir / "final" / "model.pt").is_file()
