"""Measure what the emulated WAN really delivers between two city namespaces.

Why: a benchmark on an emulated WAN is only as good as the emulation, so the tests and the
benchmark measure the links for real instead of trusting the configuration: TCP round-trip time,
TCP goodput, and the time of a gloo all_reduce between one process in each of two cities.

`probe(wan)` runs the roles below as subprocesses inside the namespaces
(`python -m crosscity.bench.wan.link_probe ROLE ...`) and returns a LinkReport;
`python -m crosscity.bench.wan.link_probe --cities 2 --rate-mbit 50 --delay-ms 20` prints one (root).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import timedelta

from crosscity.bench.wan.emulator import WanEmulator

PING, DONE = b"p", b"k"


@dataclass
class LinkReport:
    rtt_ms: float  # median TCP round trip of a 1-byte message
    goodput_mbit: float  # TCP payload rate of one bulk transfer, city 0 -> city 1
    allreduce_s: float  # one gloo all_reduce of `allreduce_bytes` between city 0 and city 1
    allreduce_bytes: int


# ------------------------------------------------------------------ roles (run inside a namespace)
def serve() -> None:
    """Echo 1-byte pings; drain bulk data; answer DONE when the peer half-closes."""
    with socket.socket() as lsock:
        lsock.bind(("0.0.0.0", 0))
        lsock.listen(1)
        print(lsock.getsockname()[1], flush=True)
        conn, _ = lsock.accept()
        with conn:
            while data := conn.recv(1 << 16):
                if data == PING:
                    conn.sendall(PING)
            conn.sendall(DONE)


def client(addr: str, port: int, pings: int, bulk_bytes: int) -> dict[str, float]:
    with socket.create_connection((addr, port), timeout=60) as conn:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rtts = []
        for _ in range(pings):
            start = time.perf_counter()
            conn.sendall(PING)
            conn.recv(1)
            rtts.append(time.perf_counter() - start)
        chunk = b"x" * (1 << 20)
        start = time.perf_counter()
        for offset in range(0, bulk_bytes, len(chunk)):
            conn.sendall(chunk[: bulk_bytes - offset])
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)
        seconds = time.perf_counter() - start
    return {"rtt_ms": sorted(rtts)[len(rtts) // 2] * 1000, "goodput_mbit": bulk_bytes * 8 / seconds / 1e6}


def allreduce(store_addr: str, store_port: int, rank: int, world: int, nbytes: int) -> dict[str, float]:
    """Time one all_reduce after a warm-up one (which pays the gloo connection setup)."""
    import torch
    import torch.distributed as dist

    store = dist.TCPStore(store_addr, store_port, is_master=False, timeout=timedelta(seconds=60))
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    x = torch.ones(nbytes // 4)
    dist.all_reduce(torch.ones(16))
    dist.barrier()
    start = time.perf_counter()
    dist.all_reduce(x)
    seconds = time.perf_counter() - start
    if not torch.all(x == world):
        raise RuntimeError(f"all_reduce gave {x[:4].tolist()}..., expected {world}")
    dist.destroy_process_group()
    return {"seconds": seconds}


# ------------------------------------------------------------------ orchestration (host side)
def _spawn(wan: WanEmulator, city: int, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **wan.rank_env()}
    cmd = [*wan.exec_prefix(city), sys.executable, "-m", "crosscity.bench.wan.link_probe", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen[str], timeout: float) -> str:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(proc.args)} failed (exit {proc.returncode}): {err.strip()}")
    return out


def probe(wan: WanEmulator, bulk_bytes: int = 12 << 20, allreduce_bytes: int = 4 << 20) -> LinkReport:
    """Measure RTT, goodput and a gloo all_reduce between cities 0 and 1 of a running emulator."""
    import torch.distributed as dist

    server = _spawn(wan, 1, "serve")
    assert server.stdout is not None
    port = server.stdout.readline().strip()
    cli = _spawn(wan, 0, "client", wan.addr(1), port, "--pings", "10", "--bulk-bytes", str(bulk_bytes))
    link = json.loads(_result(cli, timeout=120))
    _result(server, timeout=10)

    store = dist.TCPStore(
        wan.host_addr, 0, is_master=True, timeout=timedelta(seconds=60), wait_for_workers=False
    )
    ranks = [
        _spawn(wan, c, "allreduce", wan.host_addr, str(store.port), str(c), "2", str(allreduce_bytes))
        for c in (0, 1)
    ]
    seconds = max(json.loads(_result(p, timeout=120))["seconds"] for p in ranks)
    return LinkReport(link["rtt_ms"], link["goodput_mbit"], seconds, allreduce_bytes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="measure the emulated WAN (root)")
    sub = parser.add_subparsers(dest="role")
    sub.add_parser("serve")
    c = sub.add_parser("client")
    c.add_argument("addr")
    c.add_argument("port", type=int)
    c.add_argument("--pings", type=int, default=10)
    c.add_argument("--bulk-bytes", type=int, default=12 << 20)
    a = sub.add_parser("allreduce")
    a.add_argument("store_addr")
    a.add_argument("store_port", type=int)
    a.add_argument("rank", type=int)
    a.add_argument("world", type=int)
    a.add_argument("nbytes", type=int)
    parser.add_argument("--cities", type=int, default=2)
    parser.add_argument("--rate-mbit", type=float, default=50.0)
    parser.add_argument("--delay-ms", type=float, default=20.0)
    args = parser.parse_args(argv)
    if args.role == "serve":
        serve()
    elif args.role == "client":
        print(json.dumps(client(args.addr, args.port, args.pings, args.bulk_bytes)))
    elif args.role == "allreduce":
        print(json.dumps(allreduce(args.store_addr, args.store_port, args.rank, args.world, args.nbytes)))
    else:
        with WanEmulator(args.cities, args.rate_mbit, args.delay_ms) as wan:
            print(json.dumps(asdict(probe(wan))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
