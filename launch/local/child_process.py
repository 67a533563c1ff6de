"""What every process the local launcher starts does first (ranks, their fork servers, the coordinator)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal


def die_with_parent() -> None:
    """Linux: the child gets SIGKILL if its parent dies, so no rank is ever orphaned; and a session of
    its own, so a signal to its process group reaches it alone."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    os.setsid()
