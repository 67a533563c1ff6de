"""The chaos benchmark's report: the faults, what each kind cost, the goals, RESULTS.md + results.json.

Why separate from the runner: the numbers are defined in outcome.py; this lays them out and checks
them against the issue's goals, so the report can change without re-running half an hour of faults.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any

from crosscity.bench.chaos.faults import KINDS
from crosscity.bench.chaos.outcome import ChaosRun, FaultResult, nearest_rank
from crosscity.bench.wan.results_report import machine, mb
from crosscity.config import load_config
from crosscity.core.atomic_io import atomic_write_text

GOODPUT_GOAL, RMSE_GOAL = 0.90, 0.01


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f}"


def fault_table(run: ChaosRun) -> str:
    rows = [
        "| # | fault | planned (s) | injected (s) | detected after (s) | trains again after (s) "
        "| back in a quorum after (s) | longest step gap (s) | survived | note |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    t0 = run.started or 0.0
    for i, r in enumerate(run.results):
        f = r.fault
        injected = "not injected" if f.injected is None else f"{f.injected - t0:.0f}"
        rows.append(
            f"| {i + 1} | {f.describe()} | {f.at_s:.0f} | {injected} | {_s(r.detect_s)} "
            f"| {_s(r.train_again_s)} | {_s(r.back_s)} | {r.longest_gap_s:.1f} "
            f"| {'yes' if r.survived else '**no**'} | {f.note} |"
        )
    return "\n".join(rows)


def kind_table(results: list[FaultResult]) -> str:
    rows = [
        "| fault kind | n | detect: median / p95 (s) | trains again: median / p95 (s) "
        "| back in a quorum: median / p95 (s) | survived |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        of = [r for r in results if r.fault.kind == kind]
        if not of:
            continue

        def cell(values: list[float | None]) -> str:
            got = [v for v in values if v is not None]
            return f"{_s(nearest_rank(got, 0.5))} / {_s(nearest_rank(got, 0.95))}" if got else "-"

        again = "- (nobody stops)" if kind == "kill_coordinator" else cell([r.train_again_s for r in of])
        rows.append(
            f"| {kind} | {len(of)} | {cell([r.detect_s for r in of])} | {again} "
            f"| {cell([r.back_s for r in of])} | {sum(r.survived for r in of)}/{len(of)} |"
        )
    return "\n".join(rows)


def run_table(runs: list[ChaosRun]) -> str:
    rows = [
        "| run | exit | wall (min) | training: first to last step (s) | goodput (samples/s) | final val RMSE "
        "| WAN bytes sent (MB, accounted) | wire bytes (MB, cities / hub) | healing (MB, heals) "
        "| rounds committed / skipped | longest healthy pause (s) | samples computed / trained | load avg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        s = run.stats
        if s is None:
            rows.append(f"| {run.label} | {run.exit_code} | {run.seconds / 60:.1f} | (no steps) |" + " |" * 9)
            continue
        p = s.longest_pause
        pause = f"{p.seconds:.1f} (city {p.city}, step {p.step})" if p.city >= 0 else "-"
        rmse = "-" if s.final_rmse is None else f"{s.final_rmse:.3f}"
        rows.append(
            f"| {run.label} | {run.exit_code} | {run.seconds / 60:.1f} | {s.wall_s:.0f} | {s.goodput:,.0f} "
            f"| {rmse} | {mb(s.wan_bytes)} | {mb(sum(run.wire_bytes))} / {mb(run.hub_bytes)} "
            f"| {mb(s.heal_bytes)} ({s.heals}) | {s.rounds} / {s.skipped} | {pause} "
            f"| {s.computed_samples / max(s.trained_samples, 1):.3f} | {_load(run)} |"
        )
    return "\n".join(rows)


def _load(run: ChaosRun) -> str:
    return f"{sum(run.load) / len(run.load):.1f}" if run.load else "-"


def goals(runs: list[ChaosRun], round_timeout_s: float) -> list[tuple[str, bool, str]]:
    """The issue's goals, each (text, met, measured)."""
    chaos = runs[0]
    s = chaos.stats
    out = []
    injected = [r for r in chaos.results if r.fault.injected is not None]
    survived = sum(r.survived for r in chaos.results)
    out.append(
        (
            f"every fault survived ({len(chaos.results)} planned, {len(injected)} injected)",
            survived == len(chaos.results) > 0,
            f"{survived}/{len(chaos.results)}",
        )
    )
    out.append(("the run exits 0", chaos.exit_code == 0, f"exit {chaos.exit_code}"))
    if s is not None:
        limit = round_timeout_s + 1
        p = s.longest_pause
        out.append(
            (
                f"no healthy city paused longer than wan.round_timeout_s + 1 s = {limit:g} s",
                p.seconds <= limit,
                f"{p.seconds:.1f} s (city {p.city} at step {p.step})",
            )
        )
    ref = runs[1].stats if len(runs) > 1 else None
    if s is not None and ref is not None:
        ratio = s.goodput / ref.goodput
        out.append(("goodput >= 90% of the fault-free run", ratio >= GOODPUT_GOAL, f"{100 * ratio:.1f}%"))
        if s.median_compute_s and ref.median_compute_s:
            # The host's speed drifts by 10-20% over tens of minutes (shared VM): each run's time in units
            # of its own median compute time per step, so a slower host does not read as a fault's cost.
            speed = s.median_compute_s / ref.median_compute_s
            out.append(
                (
                    "goodput >= 90% of the fault-free run, per unit of host speed (each run's samples/s x "
                    "its median compute time per step)",
                    ratio * speed >= GOODPUT_GOAL,
                    f"{100 * ratio * speed:.1f}% (median compute per step {1000 * s.median_compute_s:.2f} "
                    f"ms vs {1000 * ref.median_compute_s:.2f} ms)",
                )
            )
        if s.final_rmse is not None and ref.final_rmse is not None:
            diff = s.final_rmse / ref.final_rmse - 1
            out.append(
                (
                    "final val RMSE within 1% of the fault-free run",
                    abs(diff) <= RMSE_GOAL,
                    f"{100 * diff:+.2f}%",
                )
            )
    return out


def lost_time(run: ChaosRun) -> str:
    """Where the goodput went: per fault kind, the city-seconds the faulted city did not train."""
    rows = ["| fault kind | city-seconds without training (sum) | per fault (mean) |", "|---|---:|---:|"]
    for kind in KINDS:
        of = [r for r in run.results if r.fault.kind == kind and r.train_again_s is not None]
        if kind == "kill_coordinator" or not of:
            continue
        lost = [r.train_again_s if kind != "cut_link" else r.longest_gap_s for r in of]
        rows.append(f"| {kind} | {sum(lost):.0f} | {sum(lost) / len(lost):.1f} |")
    return "\n".join(rows)


def write_results(
    path: Path,
    argv: list[str],
    args: argparse.Namespace,
    runs: list[ChaosRun],
    overrides: list[str],
    started: datetime,
) -> None:
    """RESULTS.md and results.json beside it; rewritten after each run, so a stopped bench leaves numbers."""
    cfg = load_config(args.out / runs[0].label / "config.yaml")
    w = cfg.wan
    checks = goals(runs, w.round_timeout_s)
    chaos = runs[0]
    took = sum(r.seconds for r in runs) / 60
    parts = [
        "# Chaos benchmark: cities fail and come back while the others train",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC (took {took:.1f} min: "
        + ", ".join(f"{r.label} run {r.seconds / 60:.1f} min" for r in runs)
        + ")",
        f"- machine: {machine()}; load average during the runs: "
        + ", ".join(f"{r.label} {_load(r)}" for r in runs)
        + " (other agents' jobs share the 2 cores: times are inflated by contention)",
        f"- command: `crosscity bench chaos {' '.join(argv)}`",
        f"- WAN: {args.cities} cities x {args.ranks_per_city} ranks, each city a network namespace, "
        f"{args.rate_mbit:g} Mbit/s up and down, {args.delay_ms:g} ms one-way (bench/wan/emulator.py); the "
        "coordinator on the hub namespace, its link delayed like a city's and unshaped; CPU quota per city "
        f"{args.city_cpus} (bench/wan/city_cpu.py)",
        f"- training: bench/wan/config.yaml, {cfg.train.steps} steps per rank, wan.algorithm={w.algorithm} "
        f"codec={w.codec} error_feedback={w.error_feedback} (the WAN bench's recommended method), "
        f"sync_every={w.sync_every}, fragments={w.fragments}, checkpoint_every={cfg.train.checkpoint_every}",
        f"- timing: heartbeat_s={w.heartbeat_s:g} < dead_after_s={w.dead_after_s:g} < "
        f"round_timeout_s={w.round_timeout_s:g}; min_cities={w.min_cities}; "
        f"max_city_restarts={cfg.train.max_city_restarts}",
        "- definitions: bench/chaos/outcome.py (detect = the coordinator's first silent, leave or join "
        "event of the city, for the coordinator the cities' first failed round; trains again = the city's "
        "next step from a process that can train; back in a quorum = its first committed round with "
        "itself in participants; p95 by nearest rank, i.e. the largest value with under 20 samples)",
        "",
        "## Goals (issue 12)",
        "",
        *[f"- [{'x' if ok else ' '}] {text}: {value}" for text, ok, value in checks],
        "",
        "## Per fault kind",
        "",
        kind_table(chaos.results),
        "",
        "## The runs",
        "",
        run_table(runs),
        "",
        "## Where the faulted run's time went",
        "",
        lost_time(chaos),
        "",
        "## Every fault (seconds after the start gate)",
        "",
        fault_table(chaos),
        "",
    ]
    atomic_write_text(path, "\n".join(parts))
    data: dict[str, Any] = {
        "command": f"crosscity bench chaos {' '.join(argv)}",
        "date": f"{started:%Y-%m-%d %H:%M} UTC",
        "overrides": overrides,
        "goals": [{"goal": t, "met": ok, "measured": v} for t, ok, v in checks],
        "runs": [
            {
                "label": r.label,
                "started": r.started,
                "exit_code": r.exit_code,
                "seconds": r.seconds,
                "load_avg": r.load,
                "stats": None if r.stats is None else {**asdict(r.stats), "goodput": r.stats.goodput},
                "wire_bytes": r.wire_bytes,
                "hub_bytes": r.hub_bytes,
                "faults": [{**asdict(x.fault), **_result_fields(x)} for x in r.results],
            }
            for r in runs
        ],
        "machine": machine(),
        "cpus": os.cpu_count(),
    }
    atomic_write_text(path.with_name("results.json"), json.dumps(data, indent=1))


def _result_fields(r: FaultResult) -> dict[str, Any]:
    return {
        "detect_s": r.detect_s,
        "train_again_s": r.train_again_s,
        "back_s": r.back_s,
        "longest_gap_s": r.longest_gap_s,
        "survived": r.survived,
    }
