"""Each emulated city gets its own CPU budget (a real cgroup quota), and bad budgets are refused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from crosscity.bench.wan.city_cpu import CityCpu, CityCpuError, auto_cpus

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("CI") != "true", reason="needs root for cgroups"
)

BUSY = """
import time
wall, cpu = time.time(), time.process_time()
while time.time() - wall < 1.5:
    pass
print((time.process_time() - cpu) / (time.time() - wall))
"""


@needs_root
def test_a_city_computes_at_its_quota_and_its_cgroup_is_removed_after() -> None:
    with CityCpu(2, 0.3, name="crosscity-test") as cpu:
        city_dir = cpu.city_dir(1)
        out = subprocess.run(
            [*cpu.exec_prefix(1), sys.executable, "-c", BUSY], capture_output=True, text=True, check=True
        )
        assert city_dir.is_dir()
    share = float(out.stdout)
    assert 0.2 <= share <= 0.36, f"a busy loop in a 0.3-CPU city used {share:.2f} CPU"
    assert not city_dir.exists() and not city_dir.parent.exists()


def test_quota_beyond_the_cores_is_refused_with_the_allowed_range() -> None:
    cores = os.cpu_count() or 1
    with pytest.raises(ValueError, match=r"at most cores / cities"):
        CityCpu(4, cores / 4 + 0.5)
    with pytest.raises(ValueError, match=r"allowed > 0"):
        CityCpu(4, 0)


def test_auto_leaves_a_tenth_of_the_host_to_the_bench() -> None:
    assert auto_cpus(4, cores=2) == pytest.approx(0.45)
    assert auto_cpus(3, cores=16) == pytest.approx(4.8)


def test_a_host_without_a_cpu_controller_says_how_to_run_anyway(tmp_path: Path) -> None:
    with pytest.raises(CityCpuError, match=r"--city-cpus 0"), CityCpu(1, 0.1, root=tmp_path):
        pass
