"""Run a function on cities x ranks real gloo processes inside a test (no launcher, no data)."""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp

from crosscity.train.distributed.process_groups import Groups, destroy_groups, init_groups
from crosscity.train.distributed.rendezvous import host_store
from crosscity.train.distributed.topology import Topology


def _worker(
    global_rank: int, fn: Callable, cities: int, ranks: int, port: int, queue: Any, args: tuple
) -> None:
    import torch.distributed as dist

    topo = Topology(global_rank // ranks, cities, global_rank % ranks, ranks)
    try:
        store = dist.TCPStore("127.0.0.1", port, is_master=False)
        groups: Groups = init_groups(topo, store, "gloo", timeout_s=60)
        queue.put((global_rank, pickle.dumps(fn(topo, groups, *args)), None))  # plain bytes: no shared memory
    except Exception:
        queue.put((global_rank, None, traceback.format_exc()))
    finally:
        destroy_groups()


def run_on_cities(fn: Callable[..., Any], cities: int, ranks: int, *args: Any) -> dict[int, Any]:
    """`fn(topo, groups, *args)` on every rank; returns {global rank: result}; re-raises any rank's error."""
    store = host_store("127.0.0.1")
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    context = mp.start_processes(
        _worker,
        args=(fn, cities, ranks, store.port, queue, args),
        nprocs=cities * ranks,
        join=False,
        start_method="spawn",
    )
    results, errors = {}, []
    for _ in range(cities * ranks):  # drain before joining: a full pipe would block the workers
        rank, value, error = queue.get(timeout=120)
        if error:
            errors.append(f"rank {rank}:\n{error}")
        results[rank] = pickle.loads(value) if value is not None else None
    while not context.join():
        pass
    if errors:
        raise AssertionError("\n".join(errors))
    return results
