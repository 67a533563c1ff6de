"""Which process is which rank: every rank writes RUN_DIR/cities/city<C>/rank<K>.pid when it starts.

Why a file: a rank forked from its city's fork server (launch/local/fork_server.py) has the server's
command line and environment in /proc, so /proc alone cannot tell its city and rank. Tools that signal
ranks (the chaos benchmark, the fault-tolerance tests) read these files; whatever launcher started a
rank (local, Slurm, MPI), the file is there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from crosscity.core.atomic_io import atomic_write_text

_NAME = re.compile(r"rank(\d+)\.pid")


def pid_path(run_dir: Path, city: int, local_rank: int) -> Path:
    return Path(run_dir) / "cities" / f"city{city}" / f"rank{local_rank}.pid"


def write_pid_file(run_dir: Path, city: int, local_rank: int) -> None:
    atomic_write_text(pid_path(run_dir, city, local_rank), f"{os.getpid()}\n")


def _alive(pid: int, marker: bytes) -> bool:
    """Running (not a zombie) and still a process of this run (its command line names the run dir)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X") and marker in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return False


def rank_pids(run_dir: Path) -> dict[tuple[int, int], int]:
    """(city, local rank) -> pid of every live rank process of this run."""
    found = {}
    marker = str(Path(run_dir)).encode()
    for path in sorted((Path(run_dir) / "cities").glob("city*/rank*.pid")):
        match = _NAME.fullmatch(path.name)
        try:
            city, pid = int(path.parent.name.removeprefix("city")), int(path.read_text())
        except (OSError, ValueError):
            continue
        if match and _alive(pid, marker):
            found[(city, int(match.group(1)))] = pid
    return found
