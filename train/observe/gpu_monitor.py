"""Background GPU telemetry through NVML (nvidia-ml-py), one sampler thread per rank.

Why NVML and not torch.cuda: the allocator only knows its own memory; NVML also reports what the
board is doing (utilization, power against its limit, clocks and why they are throttled, ECC,
PCIe traffic, XID errors), which is what tells a slow rank from a hot or throttled GPU.

Every field is read on its own: a field the board does not support (NVMLError_NotSupported, cached
so it is not asked again) or that fails (any NVMLError) is omitted from the sample, never fatal.
Without NVML (no library, no driver, no GPU) the monitor says so once and records host samples
(process CPU %, RSS, load) only; with NVML it records both.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crosscity.train.observe.host_monitor import MIB, HostSampler

log = logging.getLogger(__name__)

DeviceSpec = str | int
Sink = Callable[[dict[str, Any]], None]

# nvmlClocksEventReason* bits (nvml.h); the same values under the older "ThrottleReason" names.
THROTTLE_REASONS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)

_KNOWN_THROTTLE_BITS = sum(bit for bit, _ in THROTTLE_REASONS)

_said: set[str] = set()


def _say_once(message: str) -> None:
    """One log line per process for a condition that holds for the whole run (e.g. no GPU)."""
    if message not in _said:
        _said.add(message)
        log.warning(message)


def decode_throttle_reasons(mask: int) -> list[str]:
    """Bit mask -> reason names; bits nvml.h does not define come back as `unknown_0x...`."""
    names = [name for bit, name in THROTTLE_REASONS if mask & bit]
    if unknown := mask & ~_KNOWN_THROTTLE_BITS:
        names.append(f"unknown_{unknown:#x}")
    return names


def visible_devices(env: Mapping[str, str] | None = None) -> list[DeviceSpec] | None:
    """CUDA_VISIBLE_DEVICES read as CUDA reads it; None when unset (every GPU is visible).

    Entries are NVML indexes (ints) or UUIDs (`GPU-...`, `MIG-...`, or a unique prefix). Like
    CUDA, parsing stops at the first entry that is neither (so "-1" hides every GPU).
    """
    env = os.environ if env is None else env
    value = env.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return None
    specs: list[DeviceSpec] = []
    for item in (part.strip() for part in value.split(",")):
        if item.isdigit():
            specs.append(int(item))
        elif item.startswith(("GPU-", "MIG-")):
            specs.append(item)
        else:
            break
    return specs


def device_for_cuda_index(cuda_index: int, env: Mapping[str, str] | None = None) -> DeviceSpec:
    """The NVML spec of torch's `cuda:<cuda_index>` (an index into CUDA_VISIBLE_DEVICES).

    Bare integers are NVML (PCI bus) indexes: they match CUDA's numbering when
    CUDA_DEVICE_ORDER=PCI_BUS_ID or there is one GPU type; UUIDs in CUDA_VISIBLE_DEVICES always match.
    """
    specs = visible_devices(env)
    if specs is None:
        return cuda_index
    if not 0 <= cuda_index < len(specs):
        raise ValueError(f"cuda:{cuda_index}: CUDA_VISIBLE_DEVICES lists {len(specs)} device(s): {specs}")
    return specs[cuda_index]


@dataclass
class Device:
    """One monitored GPU or MIG instance."""

    index: int  # NVML index of the physical GPU
    uuid: str
    name: str
    handle: Any  # memory and utilization are read here (the MIG instance for MIG)
    board: Any  # power, temperature, clocks, ECC, PCIe are properties of the physical GPU
    board_uuid: str = ""
    mig: bool = False
    unsupported: set[str] = field(default_factory=set)
    xid_count: int = 0


def _try(nvml: Any, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except nvml.NVMLError:
        return None


def _enumerate(nvml: Any) -> tuple[list[Device], list[tuple[Device, int, int]]]:
    """Every physical GPU, and every MIG instance as (device, gpu instance id, compute instance id).

    A board NVML cannot open (lost, no permission) is reported once and left out.
    """
    gpus: list[Device] = []
    migs: list[tuple[Device, int, int]] = []
    for i in range(nvml.nvmlDeviceGetCount()):
        try:
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            uuid = nvml.nvmlDeviceGetUUID(h)
            gpu = Device(i, uuid, nvml.nvmlDeviceGetName(h), h, h, board_uuid=uuid)
        except nvml.NVMLError as exc:
            _say_once(f"gpu monitor: GPU {i} cannot be opened through NVML ({exc}); not sampled")
            continue
        gpus.append(gpu)
        mode = _try(nvml, lambda h=h: nvml.nvmlDeviceGetMigMode(h))
        if not mode or mode[0] != nvml.NVML_DEVICE_MIG_ENABLE:
            continue
        for j in range(nvml.nvmlDeviceGetMaxMigDeviceCount(h)):
            m = _try(nvml, lambda h=h, j=j: nvml.nvmlDeviceGetMigDeviceHandleByIndex(h, j))
            mig_uuid = None if m is None else _try(nvml, lambda m=m: nvml.nvmlDeviceGetUUID(m))
            if mig_uuid is None:
                continue
            dev = Device(i, mig_uuid, f"{gpu.name} MIG {j}", m, h, board_uuid=uuid, mig=True)
            gi = _try(nvml, lambda m=m: nvml.nvmlDeviceGetGpuInstanceId(m))
            ci = _try(nvml, lambda m=m: nvml.nvmlDeviceGetComputeInstanceId(m))
            migs.append((dev, -1 if gi is None else gi, -1 if ci is None else ci))
    return gpus, migs


def _match(spec: DeviceSpec, gpus: list[Device], migs: list[tuple[Device, int, int]]) -> Device:
    if isinstance(spec, int):
        found = [d for d in gpus if d.index == spec]
        if not found:
            raise LookupError(f"GPU index {spec}: NVML opened GPU(s) {[d.index for d in gpus]}")
        return found[0]
    if spec.startswith("MIG-GPU-"):  # legacy form MIG-GPU-<uuid>/<gpu instance>/<compute instance>
        try:
            parent, gi, ci = spec[len("MIG-") :].split("/")
            wanted = (parent, int(gi), int(ci))
        except ValueError:
            raise LookupError(f"{spec!r}: expected MIG-GPU-<uuid>/<gi>/<ci>") from None
        found = [d for d, g, c in migs if (d.board_uuid, g, c) == wanted]
    else:
        pool = [d for d, _, _ in migs] if spec.startswith("MIG-") else gpus
        found = [d for d in pool if d.uuid.startswith(spec)]
    if len(found) != 1:
        raise LookupError(f"{spec!r} matches {len(found)} device(s) (known: {[d.uuid for d in gpus]})")
    return found[0]


def resolve_devices(nvml: Any, specs: list[DeviceSpec] | None) -> list[Device]:
    """Map indexes / (prefixes of) GPU or MIG UUIDs to NVML handles; None = every physical GPU.

    A spec that matches nothing is reported once and skipped: telemetry must never stop training.
    """
    gpus, migs = _enumerate(nvml)
    if specs is None:
        return gpus
    devices = []
    for spec in specs:
        try:
            devices.append(_match(spec, gpus, migs))
        except LookupError as exc:
            _say_once(f"gpu monitor: skipping device {exc}")
    return devices


# ---------------------------------------------------------------- fields: one reader per NVML call


def _utilization(nvml: Any, d: Device) -> dict[str, Any]:
    u = nvml.nvmlDeviceGetUtilizationRates(d.handle)
    return {"util_gpu_pct": u.gpu, "util_mem_pct": u.memory}


def _memory(nvml: Any, d: Device) -> dict[str, Any]:
    m = nvml.nvmlDeviceGetMemoryInfo(d.handle)
    return {"mem_used_mib": round(m.used / MIB, 1), "mem_total_mib": round(m.total / MIB, 1)}


def _throttle(nvml: Any, d: Device) -> dict[str, Any]:
    # Renamed in NVML 12.2; older bindings only have the "Throttle" name.
    read = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
    read = read or nvml.nvmlDeviceGetCurrentClocksThrottleReasons
    mask = int(read(d.board))
    return {"throttle_mask": mask, "throttle": decode_throttle_reasons(mask)}


def _scalar(key: str, call: Callable[[Any, Device], float], scale: float = 1.0) -> Callable[..., dict]:
    def read(nvml: Any, d: Device) -> dict[str, Any]:
        value = call(nvml, d)
        return {key: round(value * scale, 3) if scale != 1.0 else value}

    return read


FIELDS: dict[str, Callable[[Any, Device], dict[str, Any]]] = {
    "utilization": _utilization,
    "memory": _memory,
    "power": _scalar("power_w", lambda n, d: n.nvmlDeviceGetPowerUsage(d.board), 1e-3),
    "power_limit": _scalar("power_limit_w", lambda n, d: n.nvmlDeviceGetEnforcedPowerLimit(d.board), 1e-3),
    "energy": _scalar("energy_j", lambda n, d: n.nvmlDeviceGetTotalEnergyConsumption(d.board), 1e-3),
    "temperature": _scalar(
        "temp_c", lambda n, d: n.nvmlDeviceGetTemperature(d.board, n.NVML_TEMPERATURE_GPU)
    ),
    "clock_sm": _scalar("clock_sm_mhz", lambda n, d: n.nvmlDeviceGetClockInfo(d.board, n.NVML_CLOCK_SM)),
    "clock_mem": _scalar("clock_mem_mhz", lambda n, d: n.nvmlDeviceGetClockInfo(d.board, n.NVML_CLOCK_MEM)),
    "throttle": _throttle,
    "ecc_corrected": _scalar(
        "ecc_corrected",
        lambda n, d: n.nvmlDeviceGetTotalEccErrors(
            d.board, n.NVML_MEMORY_ERROR_TYPE_CORRECTED, n.NVML_VOLATILE_ECC
        ),
    ),
    "ecc_uncorrected": _scalar(
        "ecc_uncorrected",
        lambda n, d: n.nvmlDeviceGetTotalEccErrors(
            d.board, n.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, n.NVML_VOLATILE_ECC
        ),
    ),
    # NVML reports KB/s, sampled over 20 ms inside the call.
    "pcie_tx": _scalar(
        "pcie_tx_mib_s",
        lambda n, d: n.nvmlDeviceGetPcieThroughput(d.board, n.NVML_PCIE_UTIL_TX_BYTES),
        1 / 1024,
    ),
    "pcie_rx": _scalar(
        "pcie_rx_mib_s",
        lambda n, d: n.nvmlDeviceGetPcieThroughput(d.board, n.NVML_PCIE_UTIL_RX_BYTES),
        1 / 1024,
    ),
    "pcie_replays": _scalar("pcie_replays", lambda n, d: n.nvmlDeviceGetPcieReplayCounter(d.board)),
}


def read_device(nvml: Any, d: Device) -> dict[str, Any]:
    """One `kind="gpu"` sample: every field the device answers; NotSupported ones are remembered."""
    record: dict[str, Any] = {"kind": "gpu", "gpu": d.index, "uuid": d.uuid, "name": d.name}
    if d.mig:
        record["mig"] = True
    for name, reader in FIELDS.items():
        if name in d.unsupported:
            continue
        try:
            record.update(reader(nvml, d))
        except (nvml.NVMLError_NotSupported, nvml.NVMLError_FunctionNotFound, AttributeError):
            d.unsupported.add(name)
            log.info("gpu monitor: GPU %d (%s) does not support %s; omitted", d.index, d.uuid, name)
        except nvml.NVMLError:
            pass
    if "power_w" in record and record.get("power_limit_w"):
        record["power_pct"] = round(100.0 * record["power_w"] / record["power_limit_w"], 2)
    if "mem_used_mib" in record and record.get("mem_total_mib"):
        record["mem_used_pct"] = round(100.0 * record["mem_used_mib"] / record["mem_total_mib"], 2)
    record["xid_count"] = d.xid_count
    return record


class GpuMonitor:
    """Samples the GPUs of this rank (and the host) every `interval_s` on a daemon thread.

    `sink` gets one dict per sample and is called from the sampler thread: `kind="gpu"` (one per
    device), `kind="host"`, and `kind="event"` (`event="gpu_xid"`) for each XID error NVML
    reports. `devices`: CUDA_VISIBLE_DEVICES-style specs; None reads CUDA_VISIBLE_DEVICES; []
    means a CPU rank (host samples only, NVML not touched). `nvml`: the pynvml module, or a
    stand-in for tests.
    """

    def __init__(
        self,
        sink: Sink,
        interval_s: float,
        devices: list[DeviceSpec] | None = None,
        nvml: Any = None,
    ) -> None:
        self.sink = sink
        self.interval_s = interval_s
        self.host = HostSampler()
        self._module = nvml  # the binding to use (None: import pynvml at start)
        self.nvml: Any = None  # the binding while NVML is initialised
        self.devices: list[Device] = []
        self._specs = visible_devices() if devices is None else devices
        self._events: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ NVML lifetime

    def _open(self) -> None:
        if self._specs == []:
            log.info("gpu monitor: no GPU assigned to this rank; recording host CPU/RSS only")
            return
        nvml = self._module
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError:
                _say_once("gpu monitor: nvidia-ml-py (pynvml) is not installed; recording host CPU/RSS only")
                return
        try:
            nvml.nvmlInit()
            self.nvml = nvml
            self.devices = resolve_devices(nvml, self._specs)
        except nvml.NVMLError as exc:
            _say_once(f"gpu monitor: no GPU via NVML ({exc}); recording host CPU/RSS only")
            self._close()
            return
        if not self.devices:
            _say_once(f"gpu monitor: none of the devices {self._specs} is visible to NVML; host CPU/RSS only")
        self._open_xid_events()

    def _open_xid_events(self) -> None:
        nvml = self.nvml
        events = _try(nvml, nvml.nvmlEventSetCreate) if self.devices else None
        if events is None:
            return
        registered = 0
        for d in self.devices:
            try:
                nvml.nvmlDeviceRegisterEvents(d.board, nvml.nvmlEventTypeXidCriticalError, events)
                registered += 1
            except nvml.NVMLError as exc:
                log.info("gpu monitor: no XID events from GPU %d (%s)", d.index, exc)
        if registered:
            self._events = events
        else:
            _try(nvml, lambda: nvml.nvmlEventSetFree(events))

    def _close(self) -> None:
        if self.nvml is None:
            return
        if self._events is not None:
            _try(self.nvml, lambda: self.nvml.nvmlEventSetFree(self._events))
            self._events = None
        _try(self.nvml, self.nvml.nvmlShutdown)
        self.nvml = None
        self.devices = []

    # ------------------------------------------------------------ sampling

    def _drain_xids(self) -> list[dict[str, Any]]:
        """Non-blocking read of pending XID events (NVMLError_Timeout = none pending)."""
        nvml, out = self.nvml, []
        while self._events is not None:
            try:
                data = nvml.nvmlEventSetWait_v2(self._events, 0)
            except nvml.NVMLError:
                break
            uuid = _try(nvml, lambda data=data: nvml.nvmlDeviceGetUUID(data.device))
            dev = next((d for d in self.devices if uuid in (d.uuid, d.board_uuid)), None)
            if dev is not None:
                dev.xid_count += 1
            gpu = dev.index if dev is not None else -1
            out.append(
                {
                    "kind": "event",
                    "event": "gpu_xid",
                    "message": f"GPU {gpu} ({uuid}) reported XID {data.eventData}",
                    "gpu": gpu,
                    "uuid": uuid,
                    "xid": int(data.eventData),
                }
            )
        return out

    def sample(self) -> list[dict[str, Any]]:
        """One round of records (XID events first, then one per GPU, then the host)."""
        records: list[dict[str, Any]] = []
        if self.nvml is not None:
            records.extend(self._drain_xids())
            records.extend(read_device(self.nvml, d) for d in self.devices)
        records.append(self.host.sample())
        return records

    def _run(self) -> None:
        while True:
            try:
                for record in self.sample():
                    self.sink(record)
            except Exception as exc:  # the sink is the trainer's; a broken one ends telemetry, not training
                log.warning("gpu monitor: stopped after error in sample/sink: %r", exc)
                return
            if self._stop.wait(self.interval_s):
                return

    # ------------------------------------------------------------ lifecycle

    def start(self) -> GpuMonitor:
        """Open NVML and start sampling; interval_s <= 0 means monitoring is off."""
        if self.interval_s <= 0 or self._thread is not None:
            return self
        self._open()
        for d in self.devices:
            log.info("gpu monitor: GPU %d %s (%s)%s", d.index, d.name, d.uuid, " MIG" if d.mig else "")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="gpu-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join(timeout=max(5.0, 2 * self.interval_s))
        self._thread = None
        self._close()
        self.host.close()

    def __enter__(self) -> GpuMonitor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
