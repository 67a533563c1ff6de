"""Process CPU and memory samples: what a CPU-only rank records where a GPU rank records NVML.

Reads /proc (files kept open) and the process CPU clock only, no psutil: about 0.1 ms a sample; a
field the platform cannot give (no /proc outside Linux) is omitted. CPU time comes from
CLOCK_PROCESS_CPUTIME_ID (ns), not os.times() (10 ms ticks: one tick over a 0.3 ms first interval
read as 2937% of a core), and no cpu_pct is given for an interval under MIN_CPU_INTERVAL_S: that
sample's CPU time is carried into the next one. RSS and its peak come from one read of
/proc/self/status (VmRSS, VmHWM), so the peak is never below the current value.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from typing import Any

MIB = 1024 * 1024
MIN_CPU_INTERVAL_S = 0.05


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
    except (IndexError, ValueError, StopIteration):
        return None


def _kib(key: str) -> Callable[[str], int]:
    """Parser of one `Key:   1234 kB` line of /proc/meminfo or /proc/self/status."""
    return lambda text: next(int(line.split()[1]) for line in text.splitlines() if line.startswith(key))


class HostSampler:
    """CPU % of this process since the previous sample (100 = one full core), RSS, system load."""

    def __init__(self) -> None:
        self._last = (time.monotonic(), time.process_time())
        self._status = _ProcFile("/proc/self/status")
        self._meminfo = _ProcFile("/proc/meminfo")
        self._peak_mib = 0.0

    def sample(self) -> dict[str, Any]:
        now, cpu = time.monotonic(), time.process_time()
        last_now, last_cpu = self._last
        record: dict[str, Any] = {"kind": "host", "cpus": os.cpu_count()}
        if now - last_now >= MIN_CPU_INTERVAL_S:
            record["cpu_pct"] = round(100.0 * (cpu - last_cpu) / (now - last_now), 2)
            self._last = (now, cpu)
        status = self._status.read()
        rss_kib, hwm_kib = _field(status, _kib("VmRSS:")), _field(status, _kib("VmHWM:"))
        # ru_maxrss (KiB on Linux) where /proc is missing; never report a peak below the current RSS
        peak_kib = hwm_kib if hwm_kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if rss_kib is not None:
            record["rss_mib"] = round(rss_kib / 1024, 2)
        self._peak_mib = max(self._peak_mib, peak_kib / 1024, record.get("rss_mib", 0.0))
        record["rss_peak_mib"] = round(self._peak_mib, 2)
        available_kib = _field(self._meminfo.read(), _kib("MemAvailable:"))
        if available_kib is not None:
            record["sys_mem_available_mib"] = round(available_kib / 1024, 1)
        record["load1"] = round(os.getloadavg()[0], 3)
        return record

    def close(self) -> None:
        self._status.close()
        self._meminfo.close()
