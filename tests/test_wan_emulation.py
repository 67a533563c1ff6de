"""The emulated WAN delivers the configured rate and delay, and gloo works across it.

Needs root (network namespaces, tc, iptables): skipped elsewhere, except in CI (CI=true) where a
missing privilege is a failure. Uses its own prefix and subnet so it cannot collide with a
benchmark run on the same host.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from bench.wan.emulator import WanEmulator
from bench.wan.link_probe import LinkReport, probe

RATE_MBIT, DELAY_MS = 50.0, 20.0
PREFIX, SUBNET, QUEUE = "cct", "10.77.1.0/24", 7701

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0 and os.environ.get("CI") != "true", reason="needs root for network namespaces"
    ),
]


def _emulator() -> WanEmulator:
    return WanEmulator(2, RATE_MBIT, DELAY_MS, prefix=PREFIX, subnet=SUBNET, queue=QUEUE)


def _namespaces() -> list[str]:
    return [
        line.split()[0]
        for line in subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True
        ).stdout.splitlines()
    ]


@pytest.fixture(scope="module")
def report() -> LinkReport:
    with _emulator() as wan:
        return probe(wan, bulk_bytes=16 << 20, allreduce_bytes=4 << 20)


def test_goodput_is_close_to_the_configured_rate(report: LinkReport) -> None:
    assert 0.85 * RATE_MBIT <= report.goodput_mbit <= 1.02 * RATE_MBIT, report


def test_round_trip_is_twice_the_one_way_delay(report: LinkReport) -> None:
    assert 2 * DELAY_MS * 0.97 <= report.rtt_ms <= 2 * DELAY_MS + 8, report


def test_gloo_all_reduce_across_namespaces_takes_bytes_over_rate(report: LinkReport) -> None:
    # Two ranks: each sends half its tensor in the reduce-scatter and half in the all-gather.
    wire_s = report.allreduce_bytes * 8 / (RATE_MBIT * 1e6)
    assert 0.9 * wire_s <= report.allreduce_s <= 2.5 * wire_s, report


def test_teardown_removes_everything_and_leftovers_do_not_block_a_new_run() -> None:
    subprocess.run(["ip", "netns", "add", f"{PREFIX}0"], check=True)  # a crashed run's leftover
    with _emulator() as wan:
        assert {wan.netns(0), wan.netns(1)} <= set(_namespaces())
        chain = subprocess.run(["iptables", "-S", wan.chain], capture_output=True, text=True)
        assert chain.returncode == 0 and "NFQUEUE" in chain.stdout
    assert not {f"{PREFIX}0", f"{PREFIX}1"} & set(_namespaces())
    assert subprocess.run(["iptables", "-S", wan.chain], capture_output=True).returncode != 0
    assert subprocess.run(["ip", "link", "show", wan.bridge], capture_output=True).returncode != 0
