"""Host telemetry: no CPU share from a tiny first interval, no clock-tick quantisation, peak >= RSS."""

from __future__ import annotations

import statistics
import time

from crosscity.train.observe.host_monitor import MIN_CPU_INTERVAL_S, HostSampler


def busy(cpu_s: float) -> None:
    end = time.process_time() + cpu_s
    while time.process_time() < end:
        pass


def test_a_tiny_first_interval_gives_no_cpu_share_and_is_carried_into_the_next() -> None:
    sampler = HostSampler()
    first = sampler.sample()  # microseconds after start: os.times() ticks read this as 2937%
    assert "cpu_pct" not in first and first["kind"] == "host"
    busy(0.2)
    second = sampler.sample()
    assert 20 < second["cpu_pct"] <= 100 * second["cpus"] + 5  # one busy core, on a loaded machine


def test_cpu_share_of_short_intervals_is_not_quantised_to_clock_ticks() -> None:
    """3 ms of CPU per ~60 ms: 10 ms ticks mostly give 0% (sometimes ~17%), the CPU clock ~5%."""
    sampler = HostSampler()
    time.sleep(MIN_CPU_INTERVAL_S)
    sampler.sample()
    shares = []
    for _ in range(8):
        busy(0.003)
        time.sleep(0.057)
        shares.append(sampler.sample()["cpu_pct"])
    assert 1.5 < statistics.median(shares) < 9, shares


def test_rss_never_exceeds_its_peak() -> None:
    sampler = HostSampler()
    seen = []
    for size in (64, 256, 0, 128):
        block = bytearray(size * 1024 * 1024)  # zero-filled: resident
        r = sampler.sample()
        seen.append(r)
        assert r["rss_mib"] <= r["rss_peak_mib"], r
        del block
    assert seen[1]["rss_mib"] - seen[0]["rss_mib"] > 150  # re-read, not cached
    assert seen[2]["rss_peak_mib"] >= seen[1]["rss_mib"]  # the peak stays after the memory is freed
    sampler.close()
    assert sampler.sample()["rss_mib"] > 0  # reopens after close
