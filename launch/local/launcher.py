"""Run cities x ranks as processes on this machine: the laptop twin of a Slurm array.

The launcher starts the run's coordinator (a process of its own) and each city as a unit of R rank
processes, and supervises them as a batch system would:
- a city whose rank fails (crash, kill, a stuck LAN collective) is killed as a whole and started
  again from its checkpoints (at once, or after a backoff when it keeps failing soon after its start),
  up to `train.max_city_restarts` times; the other cities never stop; a city that gives up leaves the
  run, which ends with exit 1 naming it;
- a city's ranks are forked from its fork server (`train.fork_server`, launch/local/fork_server.py),
  which imported torch once: a restart does not pay Python's and torch's start-up again;
- a city whose ranks exit with EXIT_REQUEUE (preempted, checkpointed) is started again at once,
  as a requeued array task is; no number of preemptions is fatal;
- the coordinator is restarted whenever it dies (it reloads its state from the run directory);
- SIGTERM, SIGINT or the requeue signal to the launcher is passed to every rank: they checkpoint and
  stop, the launcher exits with EXIT_REQUEUE, and running the same command again resumes.
The two world-spanning baselines (flat, PyTorch's averager) keep one world over every city instead:
there a failed rank stops the run, and a preempted city is waited for (`WorldLauncher`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crosscity.config import Config
from crosscity.config.sections import WORLD_ALGORITHMS
from crosscity.core.exit_codes import EXIT_REQUEUE
from crosscity.federation.endpoints import INSECURE_WARNING, city_names
from crosscity.launch.local.child_process import die_with_parent
from crosscity.launch.local.fork_server import ForkedProcess, ForkServer
from crosscity.launch.restart_policy import failure_streak, restart_delay
from crosscity.train.distributed.rendezvous import CITY_STORE_ENV
from crosscity.train.distributed.topology import Topology

KILL_GRACE_S = 5.0
POLL_S = 0.2


class LaunchError(RuntimeError):
    """A rank failed; the message names it and shows the end of its log."""


@dataclass
class RankProcess:
    topo: Topology
    proc: subprocess.Popen | ForkedProcess
    log_path: Path
    echo_thread: threading.Thread | None = None


@dataclass
class City:
    """One city's current start: its ranks, and what happened to it so far."""

    index: int
    ranks: list[RankProcess] = field(default_factory=list)
    attempt: int = 0
    failures: int = 0
    restart_at: float | None = None  # a failed city waits out its backoff before it starts again
    started_at: float = 0.0
    streak: int = 0  # failures in a row, each soon after its start (launch/restart_policy.py)
    done: bool = False
    gave_up: str = ""

    def exit_codes(self) -> list[int | None]:
        return [r.proc.poll() for r in self.ranks]


@dataclass
class LocalLauncher:
    run_dir: Path
    cfg: Config
    store_host: str = "127.0.0.1"  # where the coordinator (or the baselines' store) listens
    city_prefix: Callable[[int], list[str]] | None = None  # e.g. `ip netns exec ccN` for the WAN bench
    coordinator_prefix: list[str] = field(default_factory=list)  # e.g. `ip netns exec cchub`
    city_env: Callable[[int], dict[str, str]] | None = None
    echo: bool = True
    only: list[int] | None = None  # start these cities alone (the others run elsewhere and join)
    ranks: dict[int, RankProcess] = field(default_factory=dict)
    fork_servers: dict[int, ForkServer] = field(default_factory=dict)

    def run(self) -> int:
        if self.cfg.wan.algorithm in WORLD_ALGORITHMS:
            return WorldLauncher(self).run()
        return FederatedLauncher(self).run()

    # ------------------------------------------------------------------ processes, shared by both

    def spawn(self, topo: Topology, extra_env: dict[str, str]) -> RankProcess:
        env = {**self._city_base_env(topo.city), **topo.to_env(), **extra_env}
        if self.city_env:
            env.update(self.city_env(topo.city))
        argv = ["train", str(self.run_dir)]
        log_path = self.run_dir / "logs" / f"city{topo.city}_rank{topo.local_rank}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.touch()
        offset = log_path.stat().st_size
        proc: subprocess.Popen | ForkedProcess
        if self.cfg.train.fork_server:
            proc = self._fork_server(topo.city).spawn(argv, env, log_path)
        else:
            with log_path.open("ab") as log:
                proc = subprocess.Popen(
                    [*self._prefix(topo.city), sys.executable, "-m", "crosscity", *argv],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent,
                )
        rank = RankProcess(topo, proc, log_path)
        if self.echo and topo.global_rank == 0:
            rank.echo_thread = threading.Thread(target=_follow, args=(proc, log_path, offset), daemon=True)
            rank.echo_thread.start()
        self.ranks[topo.global_rank] = rank
        return rank

    def _prefix(self, city: int) -> list[str]:
        return self.city_prefix(city) if self.city_prefix else []

    def _city_base_env(self, city: int) -> dict[str, str]:
        """What every process of a city sees, its fork server included (torch reads OMP_NUM_THREADS
        when it is imported)."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        return {**env, **(self.city_env(city) if self.city_env else {})}

    def start_fork_servers(self, cities: list[int]) -> None:
        """Before the first spawn: every city's fork server imports at the same time."""
        if self.cfg.train.fork_server:
            for city in cities:
                self._fork_server(city).start()

    def _fork_server(self, city: int) -> ForkServer:
        if city not in self.fork_servers:
            self.fork_servers[city] = ForkServer(self._prefix(city), self._city_base_env(city), self.run_dir)
        return self.fork_servers[city]

    def topologies(self, city: int) -> list[Topology]:
        t = self.cfg.topology
        return [Topology(city, t.cities, k, t.ranks_per_city) for k in range(t.ranks_per_city)]

    def finish(self) -> None:
        """After the last rank: the end of rank 0's output, and the fork servers go."""
        for r in self.ranks.values():
            if r.echo_thread:
                r.echo_thread.join(timeout=2)
        for server in self.fork_servers.values():
            server.close()


class FederatedLauncher:
    """Cities as independent units around a coordinator process (the default algorithms)."""

    def __init__(self, launcher: LocalLauncher) -> None:
        self.l, self.cfg = launcher, launcher.cfg
        wanted = launcher.only if launcher.only is not None else range(self.cfg.topology.cities)
        self.cities = [City(c) for c in wanted]
        self.coordinator: subprocess.Popen | None = None
        self.coordinator_starts = 0
        self.stopping = False
        self.stop_deadline: float | None = None  # stopping: when the ranks get the signal themselves

    def run(self) -> int:
        if city_names(self.cfg, self.l.run_dir) is None:
            raise LaunchError(f"{self.l.run_dir}: no dataset.json and no data.cities: which cities?")
        if self.cfg.security.insecure:
            print(INSECURE_WARNING, flush=True)
        # Signals reach the main thread only: a launcher run from another thread (a benchmark, a
        # test) is stopped by its caller instead.
        main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, self._forward) for s in _stop_signals(self.cfg)} if main else {}
        try:
            self._start_coordinator()
            self.l.start_fork_servers([c.index for c in self.cities])
            for city in self.cities:
                self._start_city(city)
            while not all(c.done or c.gave_up for c in self.cities):
                if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
                    self._signal_ranks()
                self._watch_coordinator()
                for city in self.cities:
                    self._watch_city(city)
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            print("crosscity run: interrupted twice, stopping every rank now", file=sys.stderr, flush=True)
            for city in self.cities:
                _stop(city.ranks)
            return 130
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._stop_coordinator()
            self.l.finish()
        failed = [c for c in self.cities if c.gave_up]
        for city in failed:
            print(f"crosscity run: {city.gave_up}", file=sys.stderr, flush=True)
        if self.stopping:
            print("[launch] every city checkpointed: run the same command again to resume", flush=True)
            return EXIT_REQUEUE
        return 1 if failed else 0

    def _forward(self, signum: int, frame: object) -> None:
        """Checkpoint-then-stop. The coordinator tells every city in one round (so they all stop at
        the same step and a rerun resumes exactly); if cities are still running after a grace period
        (the coordinator is away), each gets the requeue signal and stops after its next round.
        A second SIGINT kills."""
        if self.stopping and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.stopping = True
        self.stop_deadline = time.monotonic() + 3 * self.cfg.wan.round_timeout_s
        print(f"[launch] {signal.Signals(signum).name}: every city checkpoints and stops", flush=True)
        if self.coordinator is not None and self.coordinator.poll() is None:
            _signal_group(self.coordinator, self._requeue)
        else:
            self._signal_ranks()

    @property
    def _requeue(self) -> signal.Signals:
        return getattr(signal, f"SIG{self.cfg.train.requeue_signal}")

    def _signal_ranks(self) -> None:
        self.stop_deadline = None
        for city in self.cities:
            for r in city.ranks:
                _signal_group(r.proc, self._requeue)

    # ------------------------------------------------------------------ the coordinator

    def _start_coordinator(self) -> None:
        self.coordinator_starts += 1
        (self.l.run_dir / "coordinator.json").unlink(missing_ok=True)
        (self.l.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        log = (self.l.run_dir / "logs" / "coordinator.log").open("ab")
        cmd = [
            *self.l.coordinator_prefix,
            sys.executable,
            "-m",
            "crosscity",
            "coordinator",
            str(self.l.run_dir),
            "--host",
            self.l.store_host,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.coordinator = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )
        log.close()

    def _watch_coordinator(self) -> None:
        assert self.coordinator is not None
        code = self.coordinator.poll()
        if code is None or code == 0:  # 0: every city told it that it finished
            return
        print(f"[launch] the coordinator exited ({_how(code)}); starting it again", flush=True)
        self._start_coordinator()

    def _stop_coordinator(self) -> None:
        if self.coordinator is not None and self.coordinator.poll() is None:
            _stop_processes([self.coordinator])

    # ------------------------------------------------------------------ cities

    def _start_city(self, city: City) -> None:
        city.attempt += 1
        city.restart_at, city.started_at = None, time.monotonic()
        store = self.l.run_dir / "cities" / f"city{city.index}" / f"store-{city.attempt}"
        store.parent.mkdir(parents=True, exist_ok=True)
        store.unlink(missing_ok=True)
        # A city's ranks share this host: their gloo sockets listen on loopback only (a launcher that
        # spreads a city over hosts, or the WAN bench's namespaces, sets its own interface).
        env = {CITY_STORE_ENV: str(store), "GLOO_SOCKET_IFNAME": "lo"}
        city.ranks = [self.l.spawn(t, env) for t in self.l.topologies(city.index)]

    def _watch_city(self, city: City) -> None:
        if city.done or city.gave_up:
            return
        if city.restart_at is not None:
            if time.monotonic() >= city.restart_at and not self.stopping:
                self._start_city(city)
            return
        codes = city.exit_codes()
        failed = [(r, c) for r, c in zip(city.ranks, codes, strict=True) if c not in (None, 0, EXIT_REQUEUE)]
        if failed:
            self._city_failed(city, *min(failed, key=lambda rc: _blame(rc[0])))
        elif all(c == 0 for c in codes):
            city.done = True
        elif all(c is not None for c in codes):  # checkpointed after the requeue signal
            if self.stopping:
                city.done = True
            else:
                print(f"[launch] city {city.index} checkpointed for requeue; starting it again", flush=True)
                self._start_city(city)

    def _city_failed(self, city: City, rank: RankProcess, code: int) -> None:
        # SIGKILL at once: the others wait in a collective with the failed rank, so they could neither
        # checkpoint nor stop; the city restarts from the checkpoints its ranks all have.
        _kill(city.ranks)
        city.failures += 1
        city.streak = failure_streak(city.streak, time.monotonic() - city.started_at)
        budget = self.cfg.train.max_city_restarts
        what = f"city {city.index} (rank {rank.topo.local_rank} {_how(code)})"
        if city.failures > budget:
            city.gave_up = f"{what} failed {city.failures} times, more than train.max_city_restarts={budget}"
            city.gave_up += f"; the other cities went on. Log {rank.log_path}:\n{_tail(rank.log_path, 15)}"
            return
        delay = restart_delay(city.streak)
        print(
            f"[launch] {what} failed; restarting it in {delay:.0f} s ({city.failures}/{budget})", flush=True
        )
        city.restart_at = time.monotonic() + delay


class WorldLauncher:
    """The baselines' one world: the launcher hosts its store; a failed rank stops every rank; a
    preempted city is started again while the others wait in the next store generation."""

    def __init__(self, launcher: LocalLauncher, max_requeues: int = 3) -> None:
        self.l, self.cfg, self.max_requeues = launcher, launcher.cfg, max_requeues

    def run(self) -> int:
        from crosscity.train.distributed.rendezvous import host_store  # torch: only this mode needs it

        store = host_store(self.l.store_host)
        env = {"MASTER_ADDR": self.l.store_host, "MASTER_PORT": str(store.port)}
        requeues = {c: 0 for c in range(self.cfg.topology.cities)}
        self.l.start_fork_servers(list(range(self.cfg.topology.cities)))
        for city in range(self.cfg.topology.cities):
            for t in self.l.topologies(city):
                self.l.spawn(t, env)
        ranks = self.l.ranks
        try:
            while True:
                codes = {g: r.proc.poll() for g, r in ranks.items()}
                failed = [g for g, c in codes.items() if c not in (None, 0, EXIT_REQUEUE)]
                if failed:
                    first = min(failed, key=lambda g: _blame(ranks[g]))
                    raise LaunchError(_failure_message(ranks[first], codes[first]))
                requeued = sorted({ranks[g].topo.city for g, c in codes.items() if c == EXIT_REQUEUE})
                for city in requeued:
                    if not all(r.proc.poll() is not None for r in ranks.values() if r.topo.city == city):
                        continue
                    requeues[city] += 1
                    if requeues[city] > self.max_requeues:
                        raise LaunchError(f"city {city} was preempted more than {self.max_requeues} times")
                    print(f"[launch] city {city} checkpointed for requeue; restarting it", flush=True)
                    for t in self.l.topologies(city):
                        self.l.spawn(t, env)
                if all(c == 0 for c in codes.values()):
                    return 0
                time.sleep(POLL_S)
        except LaunchError as exc:
            _stop(list(ranks.values()))
            print(f"crosscity run: {exc}", file=sys.stderr, flush=True)
            return 1
        except KeyboardInterrupt:
            print("crosscity run: interrupted, stopping all ranks", file=sys.stderr, flush=True)
            _stop(list(ranks.values()))
            return 130
        finally:
            self.l.finish()


# ------------------------------------------------------------------ helpers


def _stop_signals(cfg: Config) -> list[signal.Signals]:
    return sorted({signal.SIGTERM, signal.SIGINT, getattr(signal, f"SIG{cfg.train.requeue_signal}")})


def _stop(ranks: list[RankProcess]) -> None:
    _stop_processes([r.proc for r in ranks if r.proc.poll() is None])


def _kill(ranks: list[RankProcess]) -> None:
    for r in ranks:
        if r.proc.poll() is None:
            _signal_group(r.proc, signal.SIGKILL)
    for r in ranks:
        r.proc.wait()


def _stop_processes(procs: list[subprocess.Popen] | list[subprocess.Popen | ForkedProcess]) -> None:
    """SIGTERM to each process group, SIGKILL whoever is still there after the grace period."""
    for proc in procs:
        _signal_group(proc, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_S
    for proc in procs:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen | ForkedProcess, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # a rank forked a moment ago, before its setsid: the process alone
            os.kill(proc.pid, sig)


def _blame(rank: RankProcess) -> tuple[bool, int, int]:
    """Which of several failed ranks the message names: the cause, not the ranks that failed because
    it did (their collective broke): one killed by a signal first, then the first to exit."""
    code = rank.proc.poll()
    return (code is None or code >= 0, getattr(rank.proc, "exit_order", 0), rank.topo.global_rank)


def _how(code: int | None) -> str:
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _failure_message(r: RankProcess, code: int) -> str:
    return (
        f"rank {r.topo.global_rank} (city {r.topo.city}, local rank {r.topo.local_rank}) failed: "
        f"{_how(code)}; stopped all ranks. Log {r.log_path}:\n{_tail(r.log_path, 15)}"
    )


def _follow(proc: subprocess.Popen | ForkedProcess, path: Path, offset: int) -> None:
    """Rank 0's log on the launcher's stdout as it grows, until the rank has exited."""
    with path.open("rb") as fh:
        fh.seek(offset)
        while True:
            done = proc.poll() is not None
            chunk = fh.read()
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
            elif done:
                return
            else:
                time.sleep(0.1)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])
