"""Glue between a rank and its observers: the NVML/host sampler and the optional metric sinks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

from train.config import Config
from train.gpu_monitor import GpuMonitor, device_for_cuda_index
from train.metric_sinks import PrometheusSink, TensorBoardSink
from train.metrics_log import MetricsLog
from train.topology import Topology


def start_telemetry(
    cfg: Config, run_dir: Path, topo: Topology, device: torch.device, log: MetricsLog
) -> GpuMonitor:
    """Attach the configured sinks to `log` and start sampling; returns the monitor to stop at the end."""
    mon = cfg.monitor
    if mon.prometheus_port:
        # One port per rank on a shared host: base port + global rank.
        labels = {"city": topo.city, "local_rank": topo.local_rank, "global_rank": topo.global_rank}
        log.sinks.append(PrometheusSink(mon.prometheus_port + topo.global_rank, labels))
    if mon.tensorboard:
        try:
            log.sinks.append(TensorBoardSink(Path(run_dir) / "tensorboard" / f"rank{topo.global_rank}"))
        except ImportError:
            print(
                "monitor.tensorboard=true but tensorboard is not installed (pip install tensorboard)",
                file=sys.stderr,
            )

    def sink(record: dict[str, Any]) -> None:
        fields = dict(record)
        log.write(fields.pop("kind"), **fields)

    devices = [device_for_cuda_index(device.index or 0)] if device.type == "cuda" else []
    return GpuMonitor(sink, mon.gpu_interval_s, devices=devices).start()
