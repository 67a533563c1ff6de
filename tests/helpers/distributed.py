"""Run a function on cities x ranks real gloo processes inside a test (no launcher, no data).

Two shapes, as the trainer has them: by default one world over every rank (the world-spanning
baselines); with `run_dirs`, each city its own world and, in this test process, one real coordinator
per run directory (their config.yaml says which algorithm) - a rank joins whichever it needs.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

from crosscity.train.distributed.process_groups import Groups, destroy_groups, init_city_groups, init_groups
from crosscity.train.distributed.rendezvous import host_store
from crosscity.train.distributed.topology import Topology
from tests.helpers.federation import CoordinatorThread


def _worker(
    global_rank: int,
    fn: Callable,
    cities: int,
    ranks: int,
    port: int,
    stores: list[str] | None,
    queue: Any,
    args: tuple,
) -> None:
    import torch.distributed as dist

    topo = Topology(global_rank // ranks, cities, global_rank % ranks, ranks)
    try:
        if stores is None:
            store = dist.TCPStore("127.0.0.1", port, is_master=False)
            groups: Groups = init_groups(topo, store, "gloo", timeout_s=60)
        else:
            groups = init_city_groups(topo, dist.FileStore(stores[topo.city], ranks), "gloo", timeout_s=60)
        queue.put((global_rank, pickle.dumps(fn(topo, groups, *args)), None))  # plain bytes: no shared memory
    except Exception:
        queue.put((global_rank, None, traceback.format_exc()))
    finally:
        destroy_groups()


def run_on_cities(
    fn: Callable[..., Any], cities: int, ranks: int, *args: Any, run_dirs: list[Path] | None = None
) -> dict[int, Any]:
    """`fn(topo, groups, *args)` on every rank; returns {global rank: result}; re-raises any rank's error."""
    store = host_store("127.0.0.1")
    coordinators = [CoordinatorThread(d) for d in run_dirs or []]
    stores = None
    if run_dirs:
        folder = run_dirs[0] / "city-stores"
        folder.mkdir(parents=True, exist_ok=True)
        stores = [str(folder / f"city{c}") for c in range(cities)]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    try:
        context = mp.start_processes(
            _worker,
            args=(fn, cities, ranks, store.port, stores, queue, args),
            nprocs=cities * ranks,
            join=False,
            start_method="spawn",
        )
        results, errors = {}, []
        for _ in range(cities * ranks):  # drain before joining: a full pipe would block the workers
            rank, value, error = queue.get(timeout=180)
            if error:
                errors.append(f"rank {rank}:\n{error}")
            results[rank] = pickle.loads(value) if value is not None else None
        while not context.join():
            pass
    finally:
        for coordinator in coordinators:
            coordinator.stop()
    if errors:
        raise AssertionError("\n".join(errors))
    return results
