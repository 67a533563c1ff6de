"""The emulated WAN delivers the configured rate and delay, gloo works across it, and the CI-sized
WAN benchmark shows hierarchical averaging moving far fewer bytes than flat DDP.

Needs root (network namespaces, tc, iptables): skipped elsewhere, except in CI (CI=true) where a
missing privilege is a failure. Uses its own prefix and subnet so it cannot collide with a
benchmark run on the same host.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from crosscity.bench.chaos.faults import read_events
from crosscity.bench.wan.emulator import WanEmulator
from crosscity.bench.wan.link_probe import LinkReport, probe
from crosscity.bench.wan.run_bench import run_method
from crosscity.federation.codecs import make_codec

RATE_MBIT, DELAY_MS = 50.0, 20.0
PREFIX, SUBNET, QUEUE = "cct", "10.77.1.0/24", 7701

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 and os.environ.get("CI") != "true", reason="needs root for network namespaces"
    ),
]


def _emulator() -> WanEmulator:
    return WanEmulator(2, RATE_MBIT, DELAY_MS, prefix=PREFIX, subnet=SUBNET, queue=QUEUE)


def _namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


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
    for leftover in (f"{PREFIX}0", f"{PREFIX}5"):  # a crashed, larger run's namespaces
        subprocess.run(["ip", "netns", "add", leftover], check=True)
    with _emulator() as wan:
        assert {wan.netns(0), wan.netns(1)} <= set(_namespaces())
        assert f"{PREFIX}5" not in _namespaces()
        chain = subprocess.run(["iptables", "-S", wan.chain], capture_output=True, text=True)
        assert chain.returncode == 0 and "NFQUEUE" in chain.stdout
    assert not {f"{PREFIX}0", f"{PREFIX}1"} & set(_namespaces())
    assert subprocess.run(["iptables", "-S", wan.chain], capture_output=True).returncode != 0
    assert subprocess.run(["ip", "link", "show", wan.bridge], capture_output=True).returncode != 0


def test_ci_bench_hierarchical_moves_sync_every_times_codec_ratio_fewer_bytes_than_flat(
    small_dataset: Path, tmp_path: Path
) -> None:
    """2 cities x 1 rank on the shaped WAN: flat DDP vs DiLoCo (H steps, int8) on the same budget.

    Flat sends a ring all-reduce of the fp32 gradient every step; DiLoCo sends one int8 payload
    every H steps to the coordinator on the hub, so the expected factor is H x (4 bytes / int8 bytes
    per value, scales included). Checked on the trainer's accounting and on the IP bytes that really
    crossed the emulated WAN (the cities' and the hub's).
    """
    sync_every, codec, steps = 10, "int8", 30
    overrides = [
        f"data.dir={small_dataset}",
        "data.cities=centre,east",
        "topology.cities=2",
        "topology.ranks_per_city=1",
        f"train.steps={steps}",
        "train.eval_every=0",
        "train.max_val_windows=200",
        f"wan.sync_every={sync_every}",
    ]
    with _emulator() as wan:
        flat = run_method(wan, "flat", tmp_path / "flat", overrides)
        ours = run_method(wan, f"diloco+{codec}", tmp_path / "diloco", overrides)
    n = 1 << 20
    expected = sync_every * 4 * n / make_codec(codec).payload_bytes(n)
    assert flat.wan_rounds == steps and ours.wan_rounds == steps // sync_every
    assert 0.85 * expected <= flat.wan_bytes / ours.wan_bytes <= 1.15 * expected, (flat, ours, expected)
    assert flat.wire_bytes is not None and ours.wire_bytes is not None
    # Once per run, not per round: the first city hands the coordinator the initial model (fp32).
    initial = next(e for e in read_events(tmp_path / "diloco") if e["event"] == "initial_model")
    ours_rounds = ours.wire_bytes - 4 * initial["values"]
    assert 0.75 * expected <= flat.wire_bytes / ours_rounds <= 1.25 * expected, (flat, ours, expected)
    # The accounting matches what crossed the wire (IP + TCP headers and ACKs add a few percent).
    assert flat.wan_bytes <= flat.wire_bytes <= 1.1 * flat.wan_bytes, flat
    assert ours.wan_bytes <= ours_rounds <= 1.1 * ours.wan_bytes, ours
    # The coordinator (on the hub) answered each city's upload with a payload of the same size.
    assert ours.hub_bytes is not None and 0.9 * ours.wan_bytes <= ours.hub_bytes <= 1.15 * ours.wan_bytes, (
        ours
    )
