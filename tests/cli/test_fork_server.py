"""The fork server (launch/local/fork_server.py): real forks of a process that imported torch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crosscity.launch.local.fork_server import ForkServer
from crosscity.train.distributed.rendezvous import CITY_STORE_ENV
from crosscity.train.distributed.topology import Topology

pytestmark = pytest.mark.cli


def _waiting_rank(run_dir: Path) -> tuple[list[str], dict[str, str]]:
    """Rank 0 of a 2-rank city whose rank 1 never comes: it blocks in the city's rendezvous."""
    run_dir.mkdir(exist_ok=True)
    (run_dir / "config.yaml").write_text("topology: {cities: 1, ranks_per_city: 2}\nlan: {timeout_s: 300}\n")
    env = {**os.environ, **Topology(0, 1, 0, 2).to_env(), CITY_STORE_ENV: str(run_dir / "store")}
    return ["train", str(run_dir)], env


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_child_runs_the_command_with_its_own_env_and_log(tmp_path: Path) -> None:
    server = ForkServer([], dict(os.environ), tmp_path)
    try:
        log = tmp_path / "child.log"
        env = {**os.environ, "CROSSCITY_CITY": "not-a-number"}
        child = server.spawn(["train", str(tmp_path / "nowhere")], env, log)
        assert child.wait(timeout=60) == 2  # bad input: the command's own exit code comes back
        assert "nowhere" in log.read_text()  # its one-line error went to its log
        assert server.proc is not None
        assert Path(f"/proc/{server.proc.pid}").exists(), "the server outlives its children"
        # a second child is a new fork of the same server
        again = server.spawn(["train", str(tmp_path / "elsewhere")], env, log)
        assert again.pid != child.pid and again.wait(timeout=60) == 2
    finally:
        server.close()
    assert server.proc.poll() is not None, "the server exits when its stdin closes"


def test_a_killed_child_reads_as_sigkill_and_a_dead_server_takes_its_children(tmp_path: Path) -> None:
    argv, env = _waiting_rank(tmp_path / "run")
    server = ForkServer([], dict(os.environ), tmp_path / "run")
    try:
        first = server.spawn(argv, env, tmp_path / "first.log")
        assert server.proc is not None
        parent = Path(f"/proc/{first.pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        assert int(parent) == server.proc.pid, "the rank is a fork of the server, not a new interpreter"
        time.sleep(1)
        assert first.poll() is None, "it waits for its peer"
        os.killpg(first.pid, signal.SIGKILL)  # a session of its own: its group is itself
        assert first.wait(timeout=30) == -signal.SIGKILL

        second = server.spawn(argv, env, tmp_path / "second.log")
        server.proc.kill()
        assert second.wait(timeout=30) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while _alive(second.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(second.pid), "a child of a dead server is gone too (PR_SET_PDEATHSIG)"

        third = server.spawn(argv, env, tmp_path / "third.log")  # the next spawn starts a new server
        assert third.poll() is None and _alive(third.pid)
        os.kill(third.pid, signal.SIGKILL)  # maybe before its setsid: no group of its own yet
        assert third.wait(timeout=30) == -signal.SIGKILL
    finally:
        server.close()


def test_the_server_runs_under_the_city_prefix(tmp_path: Path) -> None:
    """The prefix (namespace, cgroup) wraps the server, so every fork runs inside it too."""
    marker = tmp_path / "prefix-ran"
    prefix = ["sh", "-c", f'echo $$ > {marker} && exec "$@"', "prefix"]
    server = ForkServer(prefix, dict(os.environ), tmp_path)
    try:
        child = server.spawn(["train", str(tmp_path / "nowhere")], dict(os.environ), tmp_path / "c.log")
        assert child.wait(timeout=60) == 2
        assert server.proc is not None and int(marker.read_text()) == server.proc.pid
        assert sys.executable.encode() in Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
    finally:
        server.close()


def test_what_the_server_preloads_is_all_a_rank_imports_to_build_its_model_and_optimizer() -> None:
    """A module first imported after the fork is imported again by every rank of every restart: torch's
    first optimizer alone imports torch._dynamo (~800 modules, seconds of a 0.45-core city's outage)."""
    script = (
        "import importlib, sys\n"
        "from crosscity.launch.local.fork_server import PRELOAD\n"
        "for name in PRELOAD: importlib.import_module(name)\n"
        "from crosscity.config.sections import ModelConfig, OptimConfig\n"
        "from crosscity.train.models import build_model\n"
        "from crosscity.train.optim import build_optimizer, build_schedule\n"
        "before = set(sys.modules)\n"
        "for kind in ('mlp', 'gru', 'tcn'):\n"
        "    model = build_model(ModelConfig(kind=kind), 48, 11, 24)\n"
        "    for optim in (OptimConfig(name='adamw'), OptimConfig(name='sgd', schedule='cosine')):\n"
        "        build_schedule(optim, build_optimizer(optim, model), 100)\n"
        "print(sorted(set(sys.modules) - before))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"imported after the fork: {out.stdout.strip()[:300]}"
