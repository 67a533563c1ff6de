"""A coordinator in a thread and protocol-speaking cities made of plain numpy: no torch, no trainer.

`ScriptedCity` drives the real wire protocol through the real client (`Link`, `CityAgent`) with the
updates a test chooses, so the coordinator's rules (quorum, weights, outer step, persistence,
refusals) are tested exactly; the same class plays a misbehaving city in the attack tests.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from crosscity.config import Config, load_config, save_config
from crosscity.federation import protocol as p
from crosscity.federation.client import CityAgent, Link, Unreachable
from crosscity.federation.coordinator import config_fingerprint
from crosscity.federation.endpoints import city_endpoint, run_certs
from crosscity.federation.layout import Layout, stripe_bounds
from crosscity.federation.service import read_address, serve
from crosscity.federation.wire import Message

FAST = [
    "wan.round_timeout_s=2.0",
    "wan.heartbeat_s=0.1",
    "wan.dead_after_s=0.6",
    "wan.start_timeout_s=5",
]


def run_config(run_dir: Path, cities: int, ranks: int, *overrides: str) -> Config:
    """A run directory for `cities` cities named city0, city1, ... with the run's own CA (mutual TLS,
    as a real run has) unless the overrides say security.insecure=true."""
    run_dir.mkdir(parents=True, exist_ok=True)
    names = [f"city{c}" for c in range(cities)]
    topology = [
        f"topology.cities={cities}",
        f"topology.ranks_per_city={ranks}",
        f"data.cities={','.join(names)}",
    ]
    cfg = load_config(None, [*topology, *FAST, *overrides])
    save_config(cfg, run_dir / "config.yaml")
    run_certs(cfg, run_dir, names, ["127.0.0.1"])
    return cfg


class CoordinatorThread:
    """The real service on 127.0.0.1 in this process; `stop()` ends it like a SIGTERM would."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.stop_event = run_dir, threading.Event()
        (run_dir / "coordinator.json").unlink(missing_ok=True)
        self.thread = threading.Thread(
            target=serve, args=(run_dir, "127.0.0.1", 0), kwargs={"stop": self.stop_event}
        )
        self.thread.start()
        for _ in range(200):
            if (run_dir / "coordinator.json").exists():
                break
            self.stop_event.wait(0.02)

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=10)


class ScriptedCity:
    def __init__(
        self,
        run_dir: Path,
        cfg: Config,
        city: int,
        n_params: int,
        heartbeats: bool = True,
        name: str = "",
        n_extra: int = 0,
    ) -> None:
        name = name or f"city{city}"
        self.cfg, self.city = cfg, city
        self.ranks = cfg.topology.ranks_per_city
        run = config_fingerprint((run_dir / "config.yaml").read_text())
        fragments = cfg.wan.fragments if cfg.wan.algorithm == "streaming" else 1
        self.layout = Layout(n_params, fragments, self.ranks)

        tls = city_endpoint(cfg, run_dir, name)

        def link(rank: int) -> Link:
            return Link(lambda: read_address(run_dir), city, rank, run, 1 << 26, tls, connect_timeout_s=2)

        self.links = [link(k) for k in range(self.ranks)]
        self.agent = CityAgent(
            lambda: link(0), name, n_params, n_extra, cfg.wan.heartbeat_s, log=lambda _: None
        )
        self.heartbeats = heartbeats
        self.attempt = 0
        self.pool = ThreadPoolExecutor(max_workers=self.ranks)

    def join(self, initial: np.ndarray, versions: list[int] | None = None) -> Message:
        reply = self.agent.register(versions or [0] * self.layout.fragments, 0, "", timeout_s=10)
        if reply.fields["need_initial"]:
            for f in range(self.layout.fragments):
                a, _ = self.layout.fragment(f)
                for k in range(self.ranks):
                    s0, s1 = self.layout.stripe(f, k)
                    msg = Message(p.INITIAL, {"fragment": f, "stripe": k}, [initial[a + s0 : a + s1]])
                    self.links[k].call(msg, 10)
        if self.heartbeats:
            self.agent.start_heartbeats()
        return reply

    def start(self) -> Message:
        return self.agent.wait_start(30)

    def exchange(
        self,
        pseudo_grad: np.ndarray,
        base_version: int,
        steps: int,
        fragment: int = 0,
        extra: np.ndarray | None = None,
    ) -> list[Message]:
        """Every rank uploads its stripe at once (as the city's ranks do), with its stripe of `extra`
        (SCAFFOLD's delta c_i) if given; the replies, by stripe."""
        self.attempt += 1

        def upload(k: int) -> Message:
            s0, s1 = self.layout.stripe(fragment, k)
            fields = {
                "fragment": fragment,
                "stripe": k,
                "attempt": self.attempt,
                "base_version": base_version,
                "steps": steps,
            }
            arrays = [pseudo_grad[s0:s1]]
            if extra is not None:
                e0, e1 = stripe_bounds(extra.size, self.ranks, k)
                arrays.append(extra[e0:e1])
            return self.links[k].call(Message(p.EXCHANGE, fields, arrays), 30)

        return list(self.pool.map(upload, range(self.ranks)))

    def fetch(self, fragment: int = 0, patience_s: float = 15.0) -> tuple[np.ndarray, int]:
        """The global fragment, retrying while the coordinator is unreachable (as a healing city does)."""
        deadline = time.monotonic() + patience_s
        replies = []
        for k in range(self.ranks):
            while True:
                try:
                    replies.append(
                        self.links[k].call(Message(p.FETCH, {"fragment": fragment, "stripe": k}), 10)
                    )
                    break
                except Unreachable:
                    assert time.monotonic() < deadline, "coordinator unreachable"
                    time.sleep(0.1)
        return np.concatenate([r.arrays[0] for r in replies]), replies[0].fields["version"]

    def close(self) -> None:
        self.agent.close()
        for link in self.links:
            link.close()
        self.pool.shutdown()


def global_of(replies: list[Message]) -> np.ndarray:
    """The float32 global a FULL-mode round reply carries, stripes in order."""
    assert all(r.fields["mode"] == p.FULL for r in replies)
    return np.concatenate([r.arrays[0] for r in replies])
