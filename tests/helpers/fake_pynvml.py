"""Thin stand-in for the `pynvml` module: only the calls train/gpu_monitor.py makes.

Allowed as a fake because the hardware is missing here (no GPU, no driver). Error classes and
constants come from the real nvidia-ml-py, so the monitor's `except` clauses and enum arguments
are exercised against the real definitions; only the device answers are scripted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml as _real


def nvml_error(code: int) -> _real.NVMLError:
    """The real binding's exception for an NVML return code (its __new__ picks the subclass)."""
    return _real.NVMLError(code)


@dataclass(eq=False)
class FakeGpu:
    """One board or MIG instance. `values` holds the raw NVML answers (mW, mJ, KB/s, bytes)."""

    uuid: str
    name: str = "NVIDIA Fake 80GB"
    values: dict[str, Any] = field(default_factory=dict)
    unsupported: set[str] = field(default_factory=set)  # answers raising NVMLError_NotSupported
    failing: set[str] = field(
        default_factory=set
    )  # answers raising NVMLError_Unknown ("handle": NoPermission)
    migs: list[FakeGpu] = field(default_factory=list)
    gi_ci: tuple[int, int] = (0, 0)  # MIG instance: (gpu instance id, compute instance id)


def typical_values() -> dict[str, Any]:
    """Raw answers of a busy 700 W board."""
    return {
        "utilization": SimpleNamespace(gpu=87, memory=41),
        "memory": SimpleNamespace(used=40 * 1024**3, total=80 * 1024**3),
        "power": 350_500,  # mW
        "power_limit": 700_000,
        "energy": 12_345_678,  # mJ
        "temperature": 64,
        "clock_sm": 1755,
        "clock_mem": 2619,
        "throttle": 0x4 | 0x1000,  # sw_power_cap + a bit nvml.h does not define
        "ecc_corrected": 3,
        "ecc_uncorrected": 0,
        "pcie_tx": 2048,  # KB/s
        "pcie_rx": 4096,
        "pcie_replays": 0,
    }


class FakeNvml:
    """Module-like object: `nvml=FakeNvml([...])` where the monitor would use `pynvml`."""

    def __init__(self, gpus: list[FakeGpu], init_error: int | None = None) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.initialized = False
        self.pending_xids: list[tuple[FakeGpu, int]] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("NVML", "nvmlEventType")):
            return getattr(_real, name)
        raise AttributeError(name)

    def _answer(self, handle: FakeGpu, what: str) -> Any:
        if what in handle.unsupported:
            raise nvml_error(_real.NVML_ERROR_NOT_SUPPORTED)
        if what in handle.failing:
            raise nvml_error(_real.NVML_ERROR_UNKNOWN)
        return handle.values[what]

    # lifetime and enumeration
    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise nvml_error(self.init_error)
        self.initialized = True

    def nvmlShutdown(self) -> None:
        self.initialized = False

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> FakeGpu:
        if "handle" in self.gpus[i].failing:
            raise nvml_error(_real.NVML_ERROR_NO_PERMISSION)
        return self.gpus[i]

    def nvmlDeviceGetUUID(self, h: FakeGpu) -> str:
        return h.uuid

    def nvmlDeviceGetName(self, h: FakeGpu) -> str:
        return h.name

    def nvmlDeviceGetMigMode(self, h: FakeGpu) -> list[int]:
        return [1, 1] if h.migs else [0, 0]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: FakeGpu) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: FakeGpu, j: int) -> FakeGpu:
        if j >= len(h.migs):
            raise nvml_error(_real.NVML_ERROR_NOT_FOUND)
        return h.migs[j]

    def nvmlDeviceGetGpuInstanceId(self, h: FakeGpu) -> int:
        return h.gi_ci[0]

    def nvmlDeviceGetComputeInstanceId(self, h: FakeGpu) -> int:
        return h.gi_ci[1]

    # fields
    def nvmlDeviceGetUtilizationRates(self, h: FakeGpu) -> Any:
        return self._answer(h, "utilization")

    def nvmlDeviceGetMemoryInfo(self, h: FakeGpu) -> Any:
        return self._answer(h, "memory")

    def nvmlDeviceGetPowerUsage(self, h: FakeGpu) -> int:
        return self._answer(h, "power")

    def nvmlDeviceGetEnforcedPowerLimit(self, h: FakeGpu) -> int:
        return self._answer(h, "power_limit")

    def nvmlDeviceGetTotalEnergyConsumption(self, h: FakeGpu) -> int:
        return self._answer(h, "energy")

    def nvmlDeviceGetTemperature(self, h: FakeGpu, sensor: int) -> int:
        assert sensor == _real.NVML_TEMPERATURE_GPU
        return self._answer(h, "temperature")

    def nvmlDeviceGetClockInfo(self, h: FakeGpu, clock: int) -> int:
        return self._answer(h, {_real.NVML_CLOCK_SM: "clock_sm", _real.NVML_CLOCK_MEM: "clock_mem"}[clock])

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: FakeGpu) -> int:
        return self._answer(h, "throttle")

    def nvmlDeviceGetTotalEccErrors(self, h: FakeGpu, error_type: int, counter: int) -> int:
        assert counter == _real.NVML_VOLATILE_ECC
        corrected = error_type == _real.NVML_MEMORY_ERROR_TYPE_CORRECTED
        return self._answer(h, "ecc_corrected" if corrected else "ecc_uncorrected")

    def nvmlDeviceGetPcieThroughput(self, h: FakeGpu, counter: int) -> int:
        return self._answer(h, "pcie_tx" if counter == _real.NVML_PCIE_UTIL_TX_BYTES else "pcie_rx")

    def nvmlDeviceGetPcieReplayCounter(self, h: FakeGpu) -> int:
        return self._answer(h, "pcie_replays")

    # XID events: the event set is a plain list of registered handles
    def nvmlEventSetCreate(self) -> list[FakeGpu]:
        return []

    def nvmlDeviceRegisterEvents(self, h: FakeGpu, types: int, event_set: list[FakeGpu]) -> None:
        assert types == _real.nvmlEventTypeXidCriticalError
        if "xid" in h.unsupported:
            raise nvml_error(_real.NVML_ERROR_NOT_SUPPORTED)
        event_set.append(h)

    def nvmlEventSetWait_v2(self, event_set: list[FakeGpu], timeout_ms: int) -> Any:
        for k, (h, xid) in enumerate(self.pending_xids):
            if any(h is r for r in event_set):
                del self.pending_xids[k]
                return SimpleNamespace(device=h, eventType=_real.nvmlEventTypeXidCriticalError, eventData=xid)
        raise nvml_error(_real.NVML_ERROR_TIMEOUT)

    def nvmlEventSetFree(self, event_set: list[FakeGpu]) -> None:
        event_set.clear()
