"""`crosscity coordinator RUN_DIR`: host the rendezvous store for cities started by a batch system.

The cities may start in any order and on any node; they find the store through
RUN_DIR/coordinator.json. It lives until every rank has finished (or the job is cancelled).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from crosscity.config import load_config
from crosscity.core.atomic_io import atomic_write_text
from crosscity.train.distributed.rendezvous import COORDINATOR_FILE, FINISHED_KEY, advertised_host, host_store


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="crosscity coordinator",
        description="Host the TCPStore the cities of a run meet at; write its address into RUN_DIR.",
        epilog="example:\n  crosscity coordinator runs/exp1 --port 29400",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path)
    p.add_argument("--port", type=int, default=0, help="port to listen on (0 = any free port)")
    p.add_argument("--host", default=None, help="address the cities should use (default: this host's name)")
    args = p.parse_args(argv)
    store = host_store("0.0.0.0", args.port)
    info = {"host": args.host or advertised_host(), "port": store.port}
    args.run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.run_dir / COORDINATOR_FILE, json.dumps(info))
    print(f"[coordinator] store at {info['host']}:{info['port']}", flush=True)
    world = load_config(args.run_dir / "config.yaml").topology
    ranks = world.cities * world.ranks_per_city
    # Every rank checks in after its last collective; only then may the store go away.
    while store.add(FINISHED_KEY, 0) < ranks:
        time.sleep(1.0)
    return 0
