"""One process per city that imported torch once and forks the city's ranks from it.

Why: a restarted city spent most of its outage starting Python and importing torch in every rank
(about 3 s of CPU per rank, 20 s of wall time for two ranks on the chaos benchmark's 0.45-core city).
A fork of a process that has imported everything starts training at once, and costs no CPU that the
city's training would miss. The server is started like a rank (in the city's namespace and CPU
quota), so what it forks runs there too.

Protocol (JSON lines; no pickle: the launcher is the only peer): the launcher writes
`{"argv": [...], "env": {...}, "log": PATH}`; the server answers `{"pid": N}`, and
`{"exited": N, "code": C}` when that child ends (C as subprocess.Popen's returncode: -signal when
killed). The server is single-threaded (select on its stdin and a SIGCHLD wake-up pipe), so a fork
never copies a lock held by another thread of ours. It exits when its stdin closes; its children get
SIGKILL then (PR_SET_PDEATHSIG), as a rank of a dead launcher does.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

from crosscity.launch.local.child_process import die_with_parent

# What a rank imports before its first step; the rest (Horovod, MPI) is left to the child, since
# mpi4py initialises MPI at import, and an initialised MPI must not be forked. torch._dynamo is not
# imported by torch but by the first torch.optim.Optimizer (its __init__ is wrapped to disable
# dynamo): about 800 modules (sympy, mpmath), which were 4-10 s of every restarted rank's start.
PRELOAD = ("crosscity.launch.cli", "crosscity.train.trainer", "torch._dynamo")


def serve(requests: int, replies: int) -> None:
    """The server's loop: fork one child per request, report each child's exit."""
    for name in PRELOAD:
        importlib.import_module(name)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    children: set[int] = set()
    pending = b""
    while True:
        ready, _, _ = select.select([requests, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(children, replies)
        if requests not in ready:
            continue
        data = os.read(requests, 1 << 16)
        if not data:
            return
        *lines, pending = (pending + data).split(b"\n")
        for line in lines:
            pid = os.fork()
            if pid == 0:
                os.close(wake_r)
                os.close(wake_w)
                _child(json.loads(line), replies)
            children.add(pid)
            _send(replies, {"pid": pid})


def _reap(children: set[int], replies: int) -> None:
    for pid in list(children):
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            children.discard(pid)
            _send(replies, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def _send(fd: int, message: dict[str, Any]) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def _child(request: dict[str, Any], replies: int) -> None:
    """In the fork: become the rank (own session, log as stdout/stderr, its env), run it, exit."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        die_with_parent()
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.close(replies)  # the launcher hears of this child from the server only
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        os.close(null)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = ["crosscity", *request["argv"]]
        runpy.run_module("crosscity", run_name="__main__")  # what `python -m crosscity ARGV` runs
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


# ------------------------------------------------------------------ the launcher's side


class ForkedProcess:
    """A child of the fork server, with the part of subprocess.Popen the launcher uses."""

    def __init__(self, pid: int, server: ForkServer) -> None:
        self.pid, self.server = pid, server
        self.returncode: int | None = None
        self.exit_order = 0  # 1, 2, ...: in which order the server's children ended

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self.server.changed:
            if not self.server.changed.wait_for(lambda: self.returncode is not None, timeout):
                raise subprocess.TimeoutExpired(f"rank pid {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode


class ForkServer:
    """Starts the server process (`cmd_prefix` puts it in the city's namespace and cgroup) and forks
    ranks from it. If the server itself dies, its children die with it and read as SIGKILLed; the
    next `spawn` starts a new server."""

    def __init__(self, cmd_prefix: list[str], env: dict[str, str], run_dir: Path) -> None:
        self.cmd = [*cmd_prefix, sys.executable, "-m", "crosscity.launch.local.fork_server", str(run_dir)]
        self.env = env
        self.proc: subprocess.Popen | None = None
        self.changed = threading.Condition()
        self.children: dict[int, ForkedProcess] = {}
        self.pending: list[int] = []  # pids answered to spawn requests, in order
        self.exits = 0

    def start(self) -> None:
        """The server process, if not running yet (spawn starts it too): start every city's early, so
        their imports overlap instead of queueing behind each other's first spawn."""
        with self.changed:
            if self.proc is None or self.proc.poll() is not None:
                self._start()

    def spawn(self, argv: list[str], env: dict[str, str], log: Path) -> ForkedProcess:
        self.start()
        with self.changed:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write((json.dumps({"argv": argv, "env": env, "log": str(log)}) + "\n").encode())
            self.proc.stdin.flush()
            if not self.changed.wait_for(lambda: self.pending or self.proc.poll() is not None, 120):
                raise RuntimeError(f"the fork server ({' '.join(self.cmd)}) did not answer in 120 s")
            if not self.pending:
                raise RuntimeError(f"the fork server ({' '.join(self.cmd)}) exited with {self.proc.poll()}")
            child = self.children[self.pending.pop(0)]
        return child

    def close(self) -> None:
        """Closes the server's stdin: it exits (after its children, which the launcher stopped)."""
        if self.proc is not None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)

    def _start(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            message = json.loads(line)
            with self.changed:
                if "pid" in message:
                    self.children[message["pid"]] = ForkedProcess(message["pid"], self)
                    self.pending.append(message["pid"])
                else:
                    child = self.children[message["exited"]]
                    self.exits += 1
                    child.returncode, child.exit_order = message["code"], self.exits
                self.changed.notify_all()
        proc.wait()
        with self.changed:  # the server is gone, and its children with it (PR_SET_PDEATHSIG)
            for child in self.children.values():
                if child.returncode is None:
                    child.returncode = -signal.SIGKILL
            self.changed.notify_all()


if __name__ == "__main__":
    serve(sys.stdin.fileno(), sys.stdout.fileno())
