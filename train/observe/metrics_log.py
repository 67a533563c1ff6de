"""Append-only JSONL metrics, one file per rank: the record every report and plot is built from."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from crosscity.train.distributed.topology import Topology


class MetricsLog:
    """Writes one JSON object per line; line-buffered so a running run can be read at any time."""

    def __init__(self, path: Path, topo: Topology) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = path.open("a", buffering=1)
        self._base = {"city": topo.city, "local_rank": topo.local_rank, "global_rank": topo.global_rank}
        self.step = 0
        self.sinks: list[Any] = []  # extra sinks with .write(record) (TensorBoard, Prometheus)
        self._lock = threading.Lock()  # the telemetry thread writes too

    def write(self, kind: str, **fields: Any) -> dict[str, Any]:
        record = {"kind": kind, "time": time.time(), **self._base, "step": self.step, **fields}
        with self._lock:
            self._fh.write(json.dumps(record) + "\n")
            for sink in self.sinks:
                sink.write(record)
        return record

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
        self._fh.close()


def read_records(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """All records of all ranks (optionally of one kind); tolerates a half-written last line."""
    records = []
    for path in sorted((Path(run_dir) / "metrics").glob("rank*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if kind is None or record.get("kind") == kind:
                records.append(record)
    return records
