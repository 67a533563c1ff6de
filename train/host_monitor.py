"""Process CPU and memory samples: what a CPU-only rank records where a GPU rank records NVML.

Reads /proc and os.times() only (no psutil), so it costs a few microseconds and works everywhere
the trainer does; a field the platform cannot give is omitted.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def _rss_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _mem_available_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        return None
    return None


class HostSampler:
    """CPU % of this process since the previous sample (100 = one full core), RSS, system load."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), _cpu_seconds())

    def sample(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), _cpu_seconds()
        last_now, last_cpu = self._last
        self._last = (now, cpu)
        record: dict[str, Any] = {"kind": "host", "cpus": os.cpu_count()}
        if now > last_now:
            record["cpu_pct"] = round(100.0 * (cpu - last_cpu) / (now - last_now), 2)
        rss = _rss_bytes()
        if rss is not None:
            record["rss_mib"] = round(rss / MIB, 2)
        # ru_maxrss is KiB on Linux.
        record["rss_peak_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 2)
        available = _mem_available_bytes()
        if available is not None:
            record["sys_mem_available_mib"] = round(available / MIB, 1)
        record["load1"] = round(os.getloadavg()[0], 3)
        return record
