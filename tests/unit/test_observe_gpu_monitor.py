"""GPU monitor against a thin NVML fake (no GPU here) and the real pynvml's no-GPU path."""

from __future__ import annotations

import logging
import threading
import time

import pynvml
import pytest

from crosscity.train.observe import gpu_monitor
from crosscity.train.observe.gpu_monitor import (
    THROTTLE_REASONS,
    GpuMonitor,
    decode_throttle_reasons,
    device_for_cuda_index,
    read_device,
    resolve_devices,
    visible_devices,
)
from crosscity.train.observe.host_monitor import HostSampler
from tests.helpers.fake_pynvml import FakeGpu, FakeNvml, typical_values

UUID_A = "GPU-aaaa1111-0000-0000-0000-000000000000"
UUID_B = "GPU-bbbb2222-0000-0000-0000-000000000000"
MIG_1 = "MIG-1111aaaa-0000-0000-0000-000000000000"
MIG_2 = "MIG-2222bbbb-0000-0000-0000-000000000000"


@pytest.fixture(autouse=True)
def _fresh_once_messages():
    gpu_monitor._said.clear()


def two_gpus_one_with_mig() -> FakeNvml:
    mig_values = {"memory": typical_values()["memory"]}
    migs = [
        FakeGpu(MIG_1, values=mig_values, unsupported={"utilization"}, gi_ci=(1, 0)),
        FakeGpu(MIG_2, values=mig_values, unsupported={"utilization"}, gi_ci=(2, 0)),
    ]
    return FakeNvml(
        [FakeGpu(UUID_A, values=typical_values()), FakeGpu(UUID_B, values=typical_values(), migs=migs)]
    )


def test_throttle_bits_match_nvml_header_and_decode():
    for bit, name in THROTTLE_REASONS:
        camel = "".join(word.capitalize() for word in name.split("_"))
        assert getattr(pynvml, f"nvmlClocksEventReason{camel}") == bit
    assert decode_throttle_reasons(0) == []
    assert decode_throttle_reasons(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert decode_throttle_reasons(0x1 | 0x3000) == ["gpu_idle", "unknown_0x3000"]


def test_fields_are_decoded_to_units():
    nvml = FakeNvml([FakeGpu(UUID_A, values=typical_values())])
    (dev,) = resolve_devices(nvml, None)
    r = read_device(nvml, dev)
    assert r["kind"] == "gpu" and r["gpu"] == 0 and r["uuid"] == UUID_A and r["name"] == "NVIDIA Fake 80GB"
    assert (r["util_gpu_pct"], r["util_mem_pct"]) == (87, 41)
    assert (r["mem_used_mib"], r["mem_total_mib"], r["mem_used_pct"]) == (40960.0, 81920.0, 50.0)
    assert (r["power_w"], r["power_limit_w"], r["power_pct"]) == (350.5, 700.0, 50.07)
    assert r["energy_j"] == pytest.approx(12345.678)
    assert (r["temp_c"], r["clock_sm_mhz"], r["clock_mem_mhz"]) == (64, 1755, 2619)
    assert r["throttle_mask"] == 0x1004 and r["throttle"] == ["sw_power_cap", "unknown_0x1000"]
    assert (r["ecc_corrected"], r["ecc_uncorrected"]) == (3, 0)
    assert (r["pcie_tx_mib_s"], r["pcie_rx_mib_s"], r["pcie_replays"]) == (2.0, 4.0, 0)
    assert r["xid_count"] == 0 and "mig" not in r


def test_not_supported_is_omitted_and_not_asked_again_while_other_errors_are_retried():
    gpu = FakeGpu(
        UUID_A, values=typical_values(), unsupported={"power", "ecc_corrected"}, failing={"temperature"}
    )
    nvml = FakeNvml([gpu])
    (dev,) = resolve_devices(nvml, None)
    r = read_device(nvml, dev)
    for key in ("power_w", "power_pct", "ecc_corrected", "temp_c"):
        assert key not in r
    assert r["power_limit_w"] == 700.0 and r["ecc_uncorrected"] == 0
    assert dev.unsupported == {"power", "ecc_corrected"}
    gpu.unsupported.clear()
    gpu.failing.clear()
    r = read_device(nvml, dev)
    assert "power_w" not in r  # NotSupported is permanent: cached
    assert r["temp_c"] == 64  # a transient error is retried


def test_visible_devices_parses_like_cuda():
    assert visible_devices({}) is None
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "0,2"}) == [0, 2]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": f"{UUID_B}, {MIG_1}"}) == [UUID_B, MIG_1]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "1,bogus,2"}) == [1]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert device_for_cuda_index(1, {"CUDA_VISIBLE_DEVICES": "3,1"}) == 1
    assert device_for_cuda_index(0, {"CUDA_VISIBLE_DEVICES": MIG_2}) == MIG_2
    assert device_for_cuda_index(2, {}) == 2
    with pytest.raises(ValueError, match="lists 2 device"):
        device_for_cuda_index(2, {"CUDA_VISIBLE_DEVICES": "3,1"})


def test_device_mapping_indexes_uuid_prefixes_and_mig(caplog):
    nvml = two_gpus_one_with_mig()
    assert [d.uuid for d in resolve_devices(nvml, None)] == [UUID_A, UUID_B]
    assert [d.uuid for d in resolve_devices(nvml, [1, 0])] == [UUID_B, UUID_A]
    assert [d.uuid for d in resolve_devices(nvml, ["GPU-bbbb"])] == [UUID_B]
    (mig,) = resolve_devices(nvml, [MIG_2[:10]])
    assert (mig.uuid, mig.index, mig.mig, mig.board_uuid) == (MIG_2, 1, True, UUID_B)
    (legacy,) = resolve_devices(nvml, [f"MIG-{UUID_B}/1/0"])
    assert legacy.uuid == MIG_1
    with caplog.at_level(logging.WARNING):
        assert resolve_devices(nvml, [7, "GPU-", "GPU-cccc", "MIG-GPU-x/1"]) == []
    assert "GPU index 7" in caplog.text and "'GPU-' matches 2 device(s)" in caplog.text
    assert "expected MIG-GPU-<uuid>/<gi>/<ci>" in caplog.text


def test_a_board_nvml_cannot_open_is_left_out(caplog):
    nvml = FakeNvml([FakeGpu(UUID_A, failing={"handle"}), FakeGpu(UUID_B, values=typical_values())])
    with caplog.at_level(logging.WARNING):
        assert [(d.index, d.uuid) for d in resolve_devices(nvml, None)] == [(1, UUID_B)]
        assert [d.uuid for d in resolve_devices(nvml, [1, 0])] == [UUID_B]
    assert "GPU 0 cannot be opened" in caplog.text and "GPU index 0: NVML opened GPU(s) [1]" in caplog.text


def test_mig_instance_reads_memory_from_instance_and_power_from_board():
    nvml = two_gpus_one_with_mig()
    nvml.gpus[1].values["memory"].used = 0  # the board's memory differs from the instance's
    (mig,) = resolve_devices(nvml, [MIG_1])
    r = read_device(nvml, mig)
    assert r["mig"] is True and r["gpu"] == 1 and r["uuid"] == MIG_1
    assert r["mem_used_mib"] == 40960.0  # instance handle
    assert r["power_w"] == 350.5 and r["temp_c"] == 64  # board handle
    assert "util_gpu_pct" not in r


def test_no_gpu_says_so_once_and_records_host(caplog):
    records: list[dict] = []
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            mon = GpuMonitor(
                records.append, 60.0, nvml=FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
            )
            mon.start()
            mon.stop()
    assert [r["kind"] for r in records] == ["host", "host"]
    assert caplog.text.count("no GPU via NVML") == 1
    nvml = FakeNvml([FakeGpu(UUID_A, values=typical_values())])
    cpu_rank = GpuMonitor(records.append, 60.0, devices=[], nvml=nvml)
    cpu_rank._open()
    assert [r["kind"] for r in cpu_rank.sample()] == ["host"] and not nvml.initialized


def test_real_pynvml_on_this_machine():
    """The real binding: without a GPU it must fall back to host samples; with one, read it."""
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        has_gpu = True
    except pynvml.NVMLError:
        has_gpu = False
    mon = GpuMonitor(lambda r: None, 60.0, devices=None)
    mon._open()
    kinds = [r["kind"] for r in mon.sample()]
    mon._close()
    assert kinds[-1] == "host"
    assert ("gpu" in kinds) == has_gpu


def test_thread_samples_periodically_and_stops(caplog):
    nvml = two_gpus_one_with_mig()
    nvml.pending_xids.append((nvml.gpus[0], 79))
    records: list[dict] = []
    lock = threading.Lock()

    def sink(record: dict) -> None:
        with lock:
            records.append(record)

    with GpuMonitor(sink, 0.02, devices=[0, MIG_2], nvml=nvml) as mon:
        assert nvml.initialized
        deadline = time.monotonic() + 10
        while sum(r["kind"] == "host" for r in records) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        thread = mon._thread
    assert not thread.is_alive() and not nvml.initialized
    with lock:
        seen = list(records)
    time.sleep(0.06)
    assert len(records) == len(seen)  # nothing after stop
    gpus = [r for r in seen if r["kind"] == "gpu"]
    assert {r["uuid"] for r in gpus} == {UUID_A, MIG_2}
    (xid,) = [r for r in seen if r["kind"] == "event"]
    assert (xid["event"], xid["xid"], xid["gpu"], xid["uuid"]) == ("gpu_xid", 79, 0, UUID_A)
    assert [r["xid_count"] for r in gpus if r["uuid"] == UUID_A][-1] == 1
    assert sum(r["kind"] == "host" for r in seen) >= 3
    with GpuMonitor(sink, 60.0, devices=[0], nvml=nvml):  # a restart uses the same binding
        assert nvml.initialized


def test_interval_zero_is_off_and_a_broken_sink_ends_only_telemetry(caplog):
    records: list[dict] = []
    mon = GpuMonitor(records.append, 0.0, nvml=FakeNvml([]))
    mon.start()
    assert mon._thread is None
    mon.stop()
    assert records == []

    def broken(record: dict) -> None:
        raise OSError("disk full")

    with caplog.at_level(logging.WARNING):
        mon = GpuMonitor(broken, 0.01, nvml=FakeNvml([FakeGpu(UUID_A, values=typical_values())])).start()
        mon._thread.join(timeout=5)
        assert not mon._thread.is_alive()
        mon.stop()
    assert "disk full" in caplog.text


def test_host_sampler_measures_cpu_and_rss():
    sampler = HostSampler()
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    r = sampler.sample()
    assert r["kind"] == "host"
    assert 10 < r["cpu_pct"] <= 100 * r["cpus"] + 5
    assert 1 < r["rss_mib"] <= r["rss_peak_mib"] + 1
    assert r["load1"] >= 0 and r["sys_mem_available_mib"] > 0
    block = bytearray(64 * 1024 * 1024)  # touched: resident
    grown = sampler.sample()
    assert grown["rss_mib"] - r["rss_mib"] > 50  # the kept-open /proc file is re-read, not cached
    del block
    sampler.close()
    assert sampler.sample()["rss_mib"] > 0  # reopens after close
