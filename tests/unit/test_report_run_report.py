"""`crosscity report` on a run directory written with the record shapes of docs/architecture.md."""

from __future__ import annotations

import json
import time
from pathlib import Path

from crosscity.config import load_config, save_config
from crosscity.launch.report.run_report import main, report_after_run, write_report

T0 = 1_790_000_000.0
CITIES, RANKS, STEPS, LOG_EVERY = 2, 2, 60, 5


def rec(kind: str, city: int, local: int, step: int, t: float, **fields) -> dict:
    return {
        "kind": kind,
        "time": T0 + t,
        "city": city,
        "local_rank": local,
        "global_rank": city * RANKS + local,
        "step": step,
        **fields,
    }


def busy(city: int, local: int, step: int) -> tuple[float, float]:
    """(t_data, t_compute): rank 1 of city 1 is a straggler (3x compute) from step 20 on."""
    slow = city == 1 and local == 1 and step >= 20
    return 0.004, 0.030 * (3 if slow else 1)


def write_run(run_dir: Path, finished: bool) -> None:
    cfg = load_config(
        overrides=[
            f"topology.cities={CITIES}",
            f"topology.ranks_per_city={RANKS}",
            f"train.steps={STEPS}",
            f"train.log_every={LOG_EVERY}",
            "monitor.straggler_steps=5",
            "wan.algorithm=diloco",
            "wan.sync_every=10",
        ]
    )
    save_config(cfg, run_dir / "config.yaml")
    names = {0: "Aotizhongxin", 1: "Changping"}
    for city in range(CITIES):
        for local in range(RANKS):
            lines = []
            for step in range(LOG_EVERY, STEPS + 1, LOG_EVERY):
                t = step * 0.2
                t_data, t_compute = busy(city, local, step)
                t_wan = 0.05 if step % 10 == 0 else 0.0
                slowest = 0.034 * (3 if city == 1 and step >= 20 else 1)
                t_lan = slowest - t_data - t_compute + 0.002  # waiting for the slowest rank of the city
                t_step = t_data + t_compute + t_lan + t_wan
                lines.append(
                    rec(
                        "train",
                        city,
                        local,
                        step,
                        t,
                        loss=1.0 / (1 + 0.05 * step) + 0.01 * city,
                        samples=64 * step,
                        t_data=t_data,
                        t_compute=t_compute,
                        t_lan=t_lan,
                        t_wan=t_wan,
                        t_step=t_step,
                        samples_per_s=64 / t_step,
                    )
                )
                if step % 10 == 0:
                    lines.append(
                        rec(
                            "wan",
                            city,
                            local,
                            step,
                            t + 0.01,
                            round=step // 10,
                            bytes_sent=100_000,
                            bytes_recv=100_000,
                            seconds=0.05,
                            codec="none",
                            participants=[0, 1],
                            fragment=None,
                        )
                    )
                if local == 0 and step % 30 == 0:
                    lines.append(
                        rec(
                            "eval",
                            city,
                            local,
                            step,
                            t + 0.02,
                            split="val",
                            city_name=names[city],
                            rmse=60.0 - step / 3 + city,
                            mae=40.0,
                            persistence_rmse=62.0,
                            persistence_mae=41.0,
                            n_windows=4000,
                        )
                    )
                lines.append(
                    rec(
                        "host",
                        city,
                        local,
                        step,
                        t + 0.03,
                        cpus=2,
                        cpu_pct=95.0 + local,
                        rss_mib=400.0 + step,
                        rss_peak_mib=500.0,
                        load1=2.5,
                    )
                )
                if city == 0:
                    lines.append(
                        rec(
                            "gpu",
                            city,
                            local,
                            step,
                            t + 0.04,
                            gpu=local,
                            uuid=f"GPU-{local}",
                            name="H100",
                            util_gpu_pct=80 + local,
                            power_w=300.0 + step,
                            power_limit_w=700.0,
                            power_pct=(300.0 + step) / 7,
                            energy_j=1000.0 + 36 * step,
                            temp_c=60,
                            throttle=["gpu_idle", "sw_power_cap"],
                            ecc_uncorrected=0,
                            xid_count=0,
                        )
                    )
            text = "\n".join(json.dumps(r) for r in lines) + "\n"
            if not finished and (city, local) == (1, 1):
                text += '{"kind": "train", "time": 17'  # a line being written right now
            path = run_dir / "metrics" / f"rank{city * RANKS + local}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    event = rec("event", 0, 0, 30, 6.1, event="resume", message="resumed at step 30 (generation 1)")
    with (run_dir / "metrics" / "rank0.jsonl").open("a") as fh:  # events are metrics records of kind event
        fh.write(json.dumps(event) + "\n")
    if finished:
        summary = {
            "cities": [
                {"city": c, "name": names[c], "samples": 64 * STEPS * RANKS, "val_rmse": 40.0 + c}
                for c in range(CITIES)
            ],
            "overall": {"val_rmse": 40.5},
            "wan_bytes_sent": 100_000 * 24,
            "wan_rounds": 6,
            "wall_s": 12.0,
            "steps": STEPS,
            "algorithm": "diloco",
            "codec": "none",
        }
        (run_dir / "summary.json").write_text(json.dumps(summary))


EXPECTED_PLOTS = {
    "loss",
    "val_rmse",
    "step_time",
    "gpu_util",
    "gpu_power",
    "host_cpu",
    "host_rss",
    "wan_bytes",
}


def test_report_of_a_finished_run(tmp_path, capsys):
    write_run(tmp_path, finished=True)
    assert main([str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    pngs = {p.stem: p for p in (tmp_path / "plots").glob("*.png")}
    assert set(pngs) == EXPECTED_PLOTS
    for p in pngs.values():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 10_000
    md = (tmp_path / "report.md").read_text()
    assert "status: finished" in md and "2 cities x 2 ranks" in md and "algorithm diloco" in md
    assert "| city 1 (Changping) | 60 | 7,680 |" in md  # last step, samples of the city's two ranks
    # latest eval of city 1: rmse 60 - 60/3 + 1 = 41, persistence 62: skill 33.87 %
    assert "| city 1 (Changping) | 60 | 41.00 | 62.00 | 33.87 |" in md
    assert "pooled over cities (summary.json): val_rmse 40.50" in md
    # city 0 mean per step: data 4 ms, compute 30 ms
    assert "| city 0 (Aotizhongxin) | 4.00 | 30.00 |" in md
    assert "bytes sent 2.40 MB" in md and "rounds: 6" in md
    straggler = (
        "rank 1 slower than 2x its peers' median in 5 consecutive checks (median ratio 2.76x, steps 20..40)"
    )
    assert f"city 1 (Changping): {straggler}" in md
    assert "| city 1 (Changping) | 1 | 12 | 2.76 | 2.76 | 75.00 |" in md  # 9 of 12 logged steps slow
    assert "| city 0 (Aotizhongxin) | 1 | 12 | 1.00 | 1.00 | 0.00 |" in md
    assert "city 0 (Aotizhongxin): rank" not in md  # no straggler where there is none
    assert "resume: resumed at step 30" in md
    assert "sw_power_cap" in md and "gpu_idle" not in md.split("## Devices")[1].split("\n\n")[1]
    for stem in EXPECTED_PLOTS:
        assert f"(plots/{stem}.png)" in md


def test_report_of_a_running_run(tmp_path):
    write_run(tmp_path, finished=False)
    path, pngs = write_report(tmp_path)
    md = path.read_text()
    assert "running or stopped early: no summary.json" in md
    assert len(pngs) == len(EXPECTED_PLOTS)


def test_cpu_only_run_without_evals_still_reports(tmp_path):
    write_run(tmp_path, finished=False)
    for f in (tmp_path / "metrics").glob("*.jsonl"):
        kept = [
            line
            for line in f.read_text().splitlines()
            if '"kind": "gpu"' not in line and '"eval"' not in line
        ]
        f.write_text("\n".join(kept) + "\n")
    _, pngs = write_report(tmp_path)
    assert {p.stem for p in pngs} == EXPECTED_PLOTS - {"gpu_util", "gpu_power", "val_rmse"}
    md = (tmp_path / "report.md").read_text()
    assert "No GPU samples" in md and "No validation records yet" in md


def test_bad_inputs_are_named(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
    write_run(tmp_path, finished=True)
    (tmp_path / "summary.json").write_text("[1, 2]")
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "summary.json" in err and "expected a mapping" in err
    (tmp_path / "summary.json").unlink()
    (tmp_path / "config.yaml").write_text("wan: [unclosed")
    assert main([str(tmp_path)]) == 2
    assert "config.yaml: cannot parse" in capsys.readouterr().err


def test_monitor_records_written_by_metrics_log_reach_the_report(tmp_path):
    """The real chain: GpuMonitor -> MetricsLog JSONL -> report (host samples on a GPU-less machine)."""
    from crosscity.train.distributed.topology import Topology
    from crosscity.train.observe.gpu_monitor import GpuMonitor
    from crosscity.train.observe.metrics_log import MetricsLog

    log = MetricsLog(tmp_path / "metrics" / "rank1.jsonl", Topology(0, 1, 1, 2))
    with GpuMonitor(lambda r: log.write(**r), 0.02, devices=[]):
        for step in range(1, 6):
            log.step = step
            log.write(
                "train",
                loss=1.0 / step,
                samples=8 * step,
                t_data=0.001,
                t_compute=0.01,
                t_lan=0.002,
                t_wan=0.0,
                t_step=0.013,
                samples_per_s=615.0,
            )
            time.sleep(0.03)
    log.close()
    _, pngs = write_report(tmp_path)
    assert {p.stem for p in pngs} == {"loss", "step_time", "host_cpu", "host_rss"}
    md = (tmp_path / "report.md").read_text()
    assert "| city 0 | 5 | 40 | 0.20 |" in md and "| 1 |" in md.split("host samples")[1]


def test_streaming_hint_names_the_overlap_that_would_hide_the_exchange():
    from types import SimpleNamespace

    from crosscity.launch.report.run_report import _overlap_hint

    train = [{"t_step": 0.05}] * 10
    late = [{"seconds": 0.6, "blocked_s": 0.3, "overlap_steps": 4}] * 3
    hint = _overlap_hint(SimpleNamespace(by_kind={"train": train}), late)
    assert "3 of 3 merges (all ranks) waited, 0.90 s" in hint
    assert "raise wan.overlap_steps (now 4) to >= 12" in hint
    hidden = [{"seconds": 0.1, "blocked_s": 0.0, "overlap_steps": 4}] * 3
    hint = _overlap_hint(SimpleNamespace(by_kind={"train": train}), hidden)
    assert "0 of 3 merges" in hint and "raise" not in hint
    assert _overlap_hint(SimpleNamespace(by_kind={"train": train}), [{"seconds": 1.0}]) == ""


def test_a_report_that_fails_after_a_run_is_one_warning_line(tmp_path, capsys):
    """The launcher's report step never raises: a run that trained stays a run that succeeded."""
    write_run(tmp_path, finished=True)
    (tmp_path / "plots").write_text("a file where the plots folder should be")
    report_after_run(tmp_path)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "[warning] the run finished but its report was not written"
    )
    assert f"retry with `crosscity report {tmp_path}`" in err
    assert not (tmp_path / "report.md").exists()  # `crosscity report` later: tests/cli/test_run_report.py
