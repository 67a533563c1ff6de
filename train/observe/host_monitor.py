"""Process CPU and memory samples: what a CPU-only rank records where a GPU rank records NVML.

Reads /proc (files kept open) and os.times() only, no psutil: about 0.1 ms a sample; a field the
platform cannot give (no /proc outside Linux) is omitted.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from typing import Any

MIB = 1024 * 1024


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class _ProcFile:
    """A /proc file kept open and re-read with pread: ~20x cheaper than open/read/close each sample."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None
        self._pid = 0

    def read(self) -> str | None:
        try:
            if (
                self._fd is None or self._pid != os.getpid()
            ):  # /proc/self is resolved at open: reopen after fork
                self.close()
                self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
            return os.pread(self._fd, 1 << 16, 0).decode()
        except OSError:
            return None

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


def _field(text: str | None, parse: Callable[[str], int]) -> int | None:
    if text is None:
        return None
    try:
        return parse(text)
    except (IndexError, ValueError):
        return None


def _mem_available_kib(text: str) -> int:
    return next(int(line.split()[1]) for line in text.splitlines() if line.startswith("MemAvailable:"))


class HostSampler:
    """CPU % of this process since the previous sample (100 = one full core), RSS, system load."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), _cpu_seconds())
        self._statm = _ProcFile("/proc/self/statm")
        self._meminfo = _ProcFile("/proc/meminfo")

    def sample(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), _cpu_seconds()
        last_now, last_cpu = self._last
        self._last = (now, cpu)
        record: dict[str, Any] = {"kind": "host", "cpus": os.cpu_count()}
        if now > last_now:
            record["cpu_pct"] = round(100.0 * (cpu - last_cpu) / (now - last_now), 2)
        rss_pages = _field(self._statm.read(), lambda text: int(text.split()[1]))
        if rss_pages is not None:
            record["rss_mib"] = round(rss_pages * os.sysconf("SC_PAGE_SIZE") / MIB, 2)
        # ru_maxrss is KiB on Linux.
        record["rss_peak_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 2)
        available_kib = _field(self._meminfo.read(), _mem_available_kib)
        if available_kib is not None:
            record["sys_mem_available_mib"] = round(available_kib / 1024, 1)
        record["load1"] = round(os.getloadavg()[0], 3)
        return record

    def close(self) -> None:
        self._statm.close()
        self._meminfo.close()
