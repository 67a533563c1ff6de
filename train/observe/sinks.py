"""Optional live views of the metrics stream: a Prometheus text endpoint and TensorBoard.

The JSONL file (train/metrics_log.py) is always written and is the record of the run; these
sinks only mirror it, so each is optional and none may stop training. Both take the same records
MetricsLog writes (`kind`, `city`, `local_rank`, `global_rank`, `step`, `time`, fields).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

LABEL_KEYS = ("kind", "city", "local_rank", "global_rank", "time", "step")
# Fields that tell apart series of one kind from one rank (several GPUs, val vs test).
SERIES_LABELS = {"gpu": ("gpu",), "eval": ("split",)}


class Sink(Protocol):
    def write(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def numeric_fields(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """(field, value) for every finite number of a record that is not a label (bools as 0/1)."""
    skip = LABEL_KEYS + SERIES_LABELS.get(record.get("kind", ""), ())
    for key, value in record.items():
        if key in skip or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            yield key, float(value)


def _metric_name(kind: str, key: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", f"crosscity_{kind}_{key}")


def _escape(value: object) -> str:
    return str(value).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


class PrometheusSink:
    """Serves the latest value of every numeric field as a gauge at http://HOST:PORT/metrics.

    Labels: city, local_rank, global_rank of this rank (+ gpu / split where a kind has several
    series); `crosscity_events_total{event=...}` counts event records. port=0 picks a free port
    (see `.port`).
    """

    def __init__(self, port: int, labels: dict[str, Any], host: str = "127.0.0.1") -> None:
        self.labels = {k: str(v) for k, v in labels.items()}
        self._lock = threading.Lock()
        self._gauges: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._events: dict[str, int] = {}
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served")
                    return
                body = sink.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="prometheus", daemon=True)
        self._thread.start()

    def write(self, record: dict[str, Any]) -> None:
        kind = str(record.get("kind", "unknown"))
        series = tuple((key, str(record[key])) for key in SERIES_LABELS.get(kind, ()) if key in record)
        with self._lock:
            if kind == "event":
                name = str(record.get("event", "unknown"))
                self._events[name] = self._events.get(name, 0) + 1
                return
            for key, value in numeric_fields(record):
                self._gauges.setdefault(_metric_name(kind, key), {})[series] = value

    def render(self) -> str:
        base = tuple(self.labels.items())
        lines = []

        def labelled(name: str, pairs: tuple[tuple[str, str], ...], value: float) -> str:
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in base + pairs)
            return f"{name}{{{inner}}} {value!r}"

        with self._lock:
            for name in sorted(self._gauges):
                lines.append(f"# TYPE {name} gauge")
                lines.extend(labelled(name, pairs, v) for pairs, v in sorted(self._gauges[name].items()))
            if self._events:
                lines.append("# TYPE crosscity_events_total counter")
                lines.extend(
                    labelled("crosscity_events_total", (("event", e),), float(n))
                    for e, n in sorted(self._events.items())
                )
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class TensorBoardSink:
    """Scalars `{kind}/{field}` (`gpu{i}/{field}`, `eval_{split}/{field}`) at the record's step."""

    def __init__(self, log_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))

    def write(self, record: dict[str, Any]) -> None:
        kind = str(record.get("kind", "unknown"))
        prefix = "_".join([kind, *(str(record[k]) for k in SERIES_LABELS.get(kind, ()) if k in record)])
        step, walltime = int(record.get("step", 0)), record.get("time")
        for key, value in numeric_fields(record):
            self.writer.add_scalar(f"{prefix}/{key}", value, step, walltime=walltime)

    def close(self) -> None:
        self.writer.close()


def tensorboard_sink(log_dir: Path) -> TensorBoardSink | None:
    """A TensorBoard sink, or None with one clear message when tensorboard is not installed."""
    try:
        if importlib.util.find_spec("tensorboard") is None:  # checked first: spares importing torch
            raise ImportError("No module named 'tensorboard'")
        return TensorBoardSink(log_dir)
    except ImportError as exc:
        log.warning(
            "monitor.tensorboard=true but TensorBoard is not importable (%s): pip install tensorboard; "
            "metrics still go to the JSONL files",
            exc,
        )
        return None


def make_sinks(monitor: Any, run_dir: Path, topo: Any) -> list[Sink]:
    """The optional sinks `monitor` (MonitorConfig) asks for, for the rank `topo` (Topology).

    Rank G serves Prometheus on monitor.prometheus_port + G, so ranks sharing a host never collide,
    bound to monitor.prometheus_host (127.0.0.1 unless the config opens it to a network).
    """
    sinks: list[Sink] = []
    labels = {"city": topo.city, "local_rank": topo.local_rank, "global_rank": topo.global_rank}
    if monitor.prometheus_port > 0:
        port = monitor.prometheus_port + topo.global_rank
        try:
            sinks.append(PrometheusSink(port, labels, monitor.prometheus_host))
            log.info("prometheus metrics at http://%s:%d/metrics", monitor.prometheus_host, port)
        except OSError as exc:
            log.warning("prometheus endpoint on port %d not started (%s); training goes on", port, exc)
    if monitor.tensorboard:
        tb = tensorboard_sink(Path(run_dir) / "tensorboard" / f"rank{topo.global_rank}")
        if tb is not None:
            sinks.append(tb)
    return sinks
