"""Glue between a rank and its observers: the NVML/host sampler and the optional metric sinks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from crosscity.config import Config
from crosscity.train.distributed.topology import Topology
from crosscity.train.observe.gpu_monitor import GpuMonitor, device_for_cuda_index
from crosscity.train.observe.metrics_log import MetricsLog
from crosscity.train.observe.sinks import make_sinks


def start_telemetry(
    cfg: Config, run_dir: Path, topo: Topology, device: torch.device, log: MetricsLog
) -> GpuMonitor:
    """Attach the configured sinks to `log` and start sampling; returns the monitor to stop at the end."""
    log.sinks.extend(make_sinks(cfg.monitor, run_dir, topo))

    def sink(record: dict[str, Any]) -> None:
        fields = dict(record)
        log.write(fields.pop("kind"), **fields)

    devices = [device_for_cuda_index(device.index or 0)] if device.type == "cuda" else []
    return GpuMonitor(sink, cfg.monitor.gpu_interval_s, devices=devices).start()
