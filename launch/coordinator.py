"""`crosscity coordinator RUN_DIR`: the service the cities of a run meet at.

For the federated algorithms it is the coordinator (crosscity.federation: membership, rounds, the
global model); for the world-spanning baselines (flat, PyTorch's averager) it hosts their TCPStore.
Either way its address goes into RUN_DIR/coordinator.json, where the cities look for it. SIGTERM or
SIGINT stop it cleanly (its state is on disk after every round; starting it again resumes).
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from pathlib import Path

from crosscity.config import load_config
from crosscity.config.sections import WORLD_ALGORITHMS
from crosscity.core.atomic_io import atomic_write_text
from crosscity.federation.service import COORDINATOR_FILE, serve


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="crosscity coordinator",
        description="Serve the cities of a run (membership, rounds, the global model); write its address "
        "into RUN_DIR/coordinator.json.",
        epilog="example:\n  crosscity coordinator runs/exp1 --host 10.0.0.5 --port 29400",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--port", type=int, default=0, help="port to listen on (0 = any free port)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on, and the one the cities are told (default 127.0.0.1: this host only)",
    )
    args = p.parse_args(argv)
    cfg = load_config(args.run_dir / "config.yaml")
    if cfg.wan.algorithm in WORLD_ALGORITHMS:
        return _host_world_store(
            args.run_dir, args.host, args.port, cfg.topology.cities * cfg.topology.ranks_per_city
        )
    stop, stop_run = threading.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # the requeue signal: stop the RUN at the next round (every city checkpoints), keep serving
    signal.signal(getattr(signal, f"SIG{cfg.train.requeue_signal}"), lambda *_: stop_run.set())
    return serve(args.run_dir, args.host, args.port, stop=stop, stop_run=stop_run)


def _host_world_store(run_dir: Path, host: str, port: int, ranks: int) -> int:
    """The baselines' store; it lives until every rank checked in after its last collective."""
    from crosscity.train.distributed.rendezvous import FINISHED_KEY, host_store  # torch: this mode only

    store = host_store(host, port)
    atomic_write_text(
        run_dir / COORDINATOR_FILE, json.dumps({"host": host, "port": store.port, "kind": "store"})
    )
    print(f"[coordinator] store at {host}:{store.port}", flush=True)
    while store.add(FINISHED_KEY, 0) < ranks:
        time.sleep(1.0)
    return 0
