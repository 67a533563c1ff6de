"""Prometheus endpoint served for real over loopback; TensorBoard when importable."""

from __future__ import annotations

import importlib.util
import logging
import re
import socket
import urllib.error
import urllib.request

import pytest

from crosscity.config import ConfigError, MonitorConfig, load_config
from crosscity.train.distributed.topology import Topology
from crosscity.train.observe.sinks import PrometheusSink, make_sinks, numeric_fields, tensorboard_sink

LINE = re.compile(r"^(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# TYPE \w+ (gauge|counter)$", line), line
            continue
        m = LINE.match(line)
        assert m, f"not Prometheus text format: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        samples[(m["name"], labels)] = float(m["value"])
    return samples


def base(kind: str, step: int, **fields) -> dict:
    return {"kind": kind, "time": 1.7e9, "city": 1, "local_rank": 0, "global_rank": 2, "step": step, **fields}


def test_prometheus_endpoint_serves_latest_values_with_labels():
    sink = PrometheusSink(0, {"city": 1, "local_rank": 0, "global_rank": 2}, host="127.0.0.1")
    try:
        sink.write(base("train", 1, loss=0.9, t_step=0.2, samples=64))
        sink.write(base("train", 2, loss=0.5, t_step=0.25, samples=128))
        sink.write(
            base("gpu", 2, gpu=0, uuid="GPU-a", name="H100", util_gpu_pct=80, throttle=["sw_power_cap"])
        )
        sink.write(base("gpu", 2, gpu=1, uuid="GPU-b", name="H100", util_gpu_pct=10, mig=True))
        sink.write(base("eval", 2, split="val", rmse=30.5, persistence_rmse=40.0))
        sink.write(base("event", 2, event="straggler", message="rank 2 slow"))
        sink.write(base("event", 3, event="straggler", message="rank 2 slow again"))
        got = scrape(sink.port)
        rank = {("city", "1"), ("local_rank", "0"), ("global_rank", "2")}
        assert got[("crosscity_train_loss", frozenset(rank))] == 0.5
        assert got[("crosscity_train_samples", frozenset(rank))] == 128
        assert got[("crosscity_gpu_util_gpu_pct", frozenset(rank | {("gpu", "0")}))] == 80
        assert got[("crosscity_gpu_util_gpu_pct", frozenset(rank | {("gpu", "1")}))] == 10
        assert got[("crosscity_gpu_mig", frozenset(rank | {("gpu", "1")}))] == 1
        assert got[("crosscity_eval_rmse", frozenset(rank | {("split", "val")}))] == 30.5
        assert got[("crosscity_events_total", frozenset(rank | {("event", "straggler")}))] == 2
        labels_as_metrics = {
            f"crosscity_{kind}_{key}"
            for kind in ("train", "gpu", "eval")
            for key in ("step", "time", "city", "global_rank", "gpu", "split")
        }
        assert not labels_as_metrics & {name for name, _ in got}
        assert got[("crosscity_train_t_step", frozenset(rank))] == 0.25
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(f"http://127.0.0.1:{sink.port}/other", timeout=5)
        assert err.value.code == 404
    finally:
        sink.close()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", sink.port), timeout=2):
        pass


def test_numeric_fields_skip_labels_strings_and_non_finite():
    record = base("wan", 3, round=1, bytes_sent=10, codec="int8", participants=[0, 1], seconds=float("nan"))
    assert dict(numeric_fields(record)) == {"round": 1.0, "bytes_sent": 10.0}


def test_make_sinks_port_per_rank_and_tensorboard_optional(tmp_path, caplog):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    topo = Topology(city=1, num_cities=2, local_rank=1, ranks_per_city=2)  # global rank 3
    has_tb = importlib.util.find_spec("tensorboard") is not None
    with caplog.at_level(logging.WARNING):
        sinks = make_sinks(MonitorConfig(prometheus_port=free - 3, tensorboard=True), tmp_path, topo)
    try:
        prom = [s for s in sinks if isinstance(s, PrometheusSink)]
        assert len(prom) == 1 and prom[0].port == free
        for s in sinks:
            s.write(base("train", 5, loss=0.25))
        assert (
            scrape(free)[
                (
                    "crosscity_train_loss",
                    frozenset({("city", "1"), ("local_rank", "1"), ("global_rank", "3")}),
                )
            ]
            == 0.25
        )
        assert len(sinks) == (2 if has_tb else 1)
        if not has_tb:
            assert "TensorBoard is not importable" in caplog.text
    finally:
        for s in sinks:
            s.close()
    if has_tb:
        assert list((tmp_path / "tensorboard" / "rank3").glob("events.out.tfevents.*"))
    assert make_sinks(MonitorConfig(), tmp_path, topo) == []


def test_tensorboard_sink_writes_scalars_or_says_it_is_missing(tmp_path, caplog):
    if importlib.util.find_spec("tensorboard") is not None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        sink = tensorboard_sink(tmp_path)
        sink.write(base("gpu", 1, gpu=0, power_w=300.0, name="H100"))
        sink.write(base("eval", 4, split="val", rmse=31.5))
        sink.close()
        acc = EventAccumulator(str(tmp_path))
        acc.Reload()
        assert set(acc.Tags()["scalars"]) == {"gpu_0/power_w", "eval_val/rmse"}
        (point,) = acc.Scalars("eval_val/rmse")
        assert (point.step, point.value, point.wall_time) == (4, 31.5, 1.7e9)
        return
    with caplog.at_level(logging.WARNING):
        assert tensorboard_sink(tmp_path) is None
    assert "pip install tensorboard" in caplog.text and "JSONL" in caplog.text


def test_prometheus_binds_loopback_unless_the_config_says_otherwise(tmp_path):
    topo = Topology(city=0, num_cities=1, local_rank=0, ranks_per_city=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    assert load_config(None, []).monitor.prometheus_host == "127.0.0.1"
    for host in ("127.0.0.1", "127.0.0.2"):  # the second: any address the config names
        (sink,) = make_sinks(MonitorConfig(prometheus_port=free, prometheus_host=host), tmp_path, topo)
        try:
            assert sink._server.socket.getsockname()[0] == host
        finally:
            sink.close()
    with pytest.raises(ConfigError, match="monitor.prometheus_host=''"):
        load_config(None, ["monitor.prometheus_host="])
