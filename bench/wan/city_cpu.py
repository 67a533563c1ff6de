"""A fixed CPU budget per emulated city: each city's ranks run in a cgroup with a CPU quota.

Why: on one host the emulated cities share the cores. A city that waits on the WAN then lends its
CPU to the others, and the cities drift apart by the scheduler's whims rather than by their own
speed, so a method that hides its WAN traffic behind compute still ends up waiting for whichever
city the scheduler slowed down. Real sites are separate machines of fixed speed; a quota per city
(`cpu.cfs_quota_us` on cgroup v1, `cpu.max` on v2) emulates exactly that: every city computes at
the same steady rate, and the share of a city that stalls on the WAN is lost, as on real hardware.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 10_000  # short: a ~40 ms step sees a steady rate, not 100 ms bursts and stalls


class CityCpuError(RuntimeError):
    """No cgroup CPU controller to put the cities in; the message says how to run without one."""


def auto_cpus(cities: int, cores: int | None = None) -> float:
    """90% of the host's cores split evenly: the rest serves the delay daemon and the bench itself."""
    return round(0.9 * (cores or os.cpu_count() or 1) / cities, 3)


def _cpu_hierarchy(root: Path) -> tuple[Path, bool]:
    """(directory of the CPU controller's hierarchy, is it cgroup v2)."""
    controllers = root / "cgroup.controllers"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return root, True
    if (root / "cpu" / "cpu.cfs_quota_us").exists():
        return root / "cpu", False
    raise CityCpuError(
        f"no cgroup CPU controller under {root} (neither cgroup v2 with 'cpu' in cgroup.controllers "
        "nor a v1 'cpu' hierarchy): pass --city-cpus 0 to let the cities share the host's cores"
    )


class CityCpu:
    """Context manager: `with CityCpu(cities=4, cpus=0.45) as cpu: [*cpu.exec_prefix(c), *cmd]`."""

    def __init__(
        self, cities: int, cpus: float, *, name: str = "crosscity-wan", root: Path = CGROUP_ROOT
    ) -> None:
        cores = os.cpu_count() or 1
        if not 0 < cpus * cities <= cores:
            raise ValueError(
                f"cpus per city={cpus:g}: allowed > 0 and at most cores / cities = {cores / cities:g}"
            )
        self.cities, self.cpus = cities, cpus
        self.name, self.root = name, root
        self.base: Path | None = None

    def city_dir(self, city: int) -> Path:
        if self.base is None:
            raise RuntimeError("CityCpu is used outside its `with` block")
        if not 0 <= city < self.cities:
            raise ValueError(f"city {city} outside 0..{self.cities - 1}")
        return self.base / f"city{city}"

    def exec_prefix(self, city: int) -> list[str]:
        """Joins the city's cgroup, then runs the rest of the command line (children inherit it)."""
        procs = self.city_dir(city) / "cgroup.procs"
        return ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "city-cpu"]

    def __enter__(self) -> CityCpu:
        hierarchy, v2 = _cpu_hierarchy(self.root)
        self.base = hierarchy / self.name
        if v2:  # v2 hands a controller down one level at a time: root -> base -> the cities
            (hierarchy / "cgroup.subtree_control").write_text("+cpu\n")
        self.base.mkdir(exist_ok=True)
        if v2:
            (self.base / "cgroup.subtree_control").write_text("+cpu\n")
        quota = max(1000, int(self.cpus * PERIOD_US))
        for c in range(self.cities):
            d = self.city_dir(c)
            d.mkdir(exist_ok=True)
            if v2:
                (d / "cpu.max").write_text(f"{quota} {PERIOD_US}\n")
            else:
                (d / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
                (d / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Removes the cgroups; one that still holds a process stays (and is reused next time)."""
        if self.base is None:
            return
        for d in [*(self.base.glob("city*")), self.base]:
            try:
                d.rmdir()
            except FileNotFoundError:
                continue
            except OSError as exc:
                log.warning("cgroup %s not removed: %s", d, exc)
        self.base = None
