"""Run cities x ranks as processes on this machine: the laptop twin of a Slurm array.

The launcher hosts the rendezvous store, starts one process per rank, and watches them: a rank
that fails (or is killed) stops all others and the run exits non-zero naming it; a city whose
ranks exit with EXIT_REQUEUE (preempted and checkpointed) is started again, like a requeued array
task, while the other cities wait for it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crosscity.config.schema import Config
from crosscity.train.distributed.rendezvous import host_store
from crosscity.train.distributed.topology import Topology
from crosscity.train.trainer import EXIT_REQUEUE

KILL_GRACE_S = 5.0


class LaunchError(RuntimeError):
    """A rank failed; the message names it and shows the end of its log."""


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL if the launcher dies, so no rank is ever orphaned."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setsid()


@dataclass
class RankProcess:
    topo: Topology
    proc: subprocess.Popen
    log_path: Path
    echo_thread: threading.Thread | None = None


@dataclass
class LocalLauncher:
    run_dir: Path
    cfg: Config
    store_host: str = "127.0.0.1"
    city_prefix: Callable[[int], list[str]] | None = None  # e.g. `ip netns exec ccN` for the WAN bench
    city_env: Callable[[int], dict[str, str]] | None = None
    max_requeues: int = 3
    echo: bool = True
    ranks: dict[int, RankProcess] = field(default_factory=dict)

    def _spawn(self, topo: Topology, port: int) -> RankProcess:
        env = {
            **os.environ,
            **topo.to_env(),
            "MASTER_ADDR": self.store_host,
            "MASTER_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
        }
        if self.city_env:
            env.update(self.city_env(topo.city))
        cmd = [
            *(self.city_prefix(topo.city) if self.city_prefix else []),
            sys.executable,
            "-m",
            "crosscity",
            "train",
            str(self.run_dir),
        ]
        log_path = self.run_dir / "logs" / f"city{topo.city}_rank{topo.local_rank}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        echo = self.echo and topo.global_rank == 0
        log = log_path.open("ab")
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE if echo else log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        rank = RankProcess(topo, proc, log_path)
        if echo:
            rank.echo_thread = threading.Thread(target=_tee, args=(proc, log), daemon=True)
            rank.echo_thread.start()
        else:
            log.close()
        return rank

    def _spawn_city(self, city: int, port: int) -> None:
        for local in range(self.cfg.topology.ranks_per_city):
            topo = Topology(city, self.cfg.topology.cities, local, self.cfg.topology.ranks_per_city)
            self.ranks[topo.global_rank] = self._spawn(topo, port)

    def kill_all(self) -> None:
        alive = [r for r in self.ranks.values() if r.proc.poll() is None]
        for r in alive:
            _signal_group(r.proc, signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_S
        for r in alive:
            try:
                r.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                _signal_group(r.proc, signal.SIGKILL)
                r.proc.wait()

    def run(self) -> int:
        store = host_store("0.0.0.0" if self.store_host != "127.0.0.1" else "127.0.0.1")
        requeues = {c: 0 for c in range(self.cfg.topology.cities)}
        for city in range(self.cfg.topology.cities):
            self._spawn_city(city, store.port)
        try:
            while True:
                codes = {g: r.proc.poll() for g, r in self.ranks.items()}
                failed = [g for g, c in codes.items() if c not in (None, 0, EXIT_REQUEUE)]
                if failed:
                    raise LaunchError(self._failure_message(failed[0], codes[failed[0]]))
                requeued = sorted({self.ranks[g].topo.city for g, c in codes.items() if c == EXIT_REQUEUE})
                for city in requeued:
                    if not self._city_exited(city):
                        continue
                    requeues[city] += 1
                    if requeues[city] > self.max_requeues:
                        raise LaunchError(f"city {city} was preempted more than {self.max_requeues} times")
                    print(
                        f"[launch] city {city} checkpointed for requeue; restarting it ({requeues[city]})",
                        flush=True,
                    )
                    self._spawn_city(city, store.port)
                if all(c == 0 for c in codes.values()):
                    return 0
                time.sleep(0.2)
        except LaunchError as exc:
            self.kill_all()
            print(f"crosscity run: {exc}", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            print("crosscity run: interrupted, stopping all ranks", file=sys.stderr, flush=True)
            self.kill_all()
            return 130
        finally:
            for r in self.ranks.values():
                if r.echo_thread:
                    r.echo_thread.join(timeout=2)

    def _city_exited(self, city: int) -> bool:
        return all(r.proc.poll() is not None for r in self.ranks.values() if r.topo.city == city)

    def _failure_message(self, rank: int, code: int) -> str:
        r = self.ranks[rank]
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        tail = _tail(r.log_path, 15)
        return (
            f"rank {rank} (city {r.topo.city}, local rank {r.topo.local_rank}) failed: {how}; "
            f"stopped all ranks. Log {r.log_path}:\n{tail}"
        )


def _signal_group(proc: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def _tee(proc: subprocess.Popen, log) -> None:
    assert proc.stdout is not None
    for line in iter(proc.stdout.readline, b""):
        log.write(line)
        log.flush()
        sys.stdout.write(line.decode(errors="replace"))
        sys.stdout.flush()
    log.close()


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])
