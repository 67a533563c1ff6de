"""What one finished benchmark run achieved, read back from its run directory.

Why a module of its own: the benchmark compares methods only through these numbers, so their
definitions live in one place (and docs/wan_emulation.md quotes them):

- training clock: starts when the first rank starts step 1 (first `train` record time minus its
  `t_step`; the bench logs every step) and excludes validation passes (an `eval` record's
  `seconds`, else the gap since that rank's previous record), so launch and evaluation cost,
  identical for every method, do not dilute the comparison.
- validation curve: at each step where every city evaluated, the cities' RMSEs pooled by their
  window counts; its time is the slowest city's.
- time to target: the first point of the curve at or below the target RMSE (flat DDP's final).
- compute utilisation: per rank, 1 - t_wan / t_step summed over all steps, averaged over ranks:
  the share of wall time spent in inner steps (data, forward/backward, the city's LAN all-reduce,
  optimizer) rather than stalled on inter-city traffic. This is the Streaming DiLoCo paper's
  definition (an inner step includes the intra-datacenter all-reduce). Also reported: the
  own-compute share, (t_data + t_compute) / t_step, which on a host with fewer cores than ranks
  is capped by CPU contention (peers' compute shows up as LAN waiting) for every method alike.
- WAN bytes: `bytes_sent` of the `wan` records (the trainer's exact accounting), and, when the
  bench measured it, the IP bytes that really crossed the emulated WAN: what the cities sent
  (`wire_bytes`, to each other and to the hub) and what the hub sent them (`hub_bytes`: the
  coordinator's replies and downloads, or the baselines' rendezvous store).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crosscity.train.observe.metrics_log import read_records

BENCH_FILE = "bench.json"  # written by the bench next to the run: method, wire bytes, link settings


@dataclass
class RunOutcome:
    method: str
    final_rmse: float  # pooled like the curve (by window count), so a run always reaches its own final
    train_s: float  # training clock at the last validation (after the final sync)
    curve: list[tuple[float, int, float]]  # (training seconds, step, pooled val RMSE)
    wan_bytes: int  # accounted by the trainer, all ranks
    wire_bytes: int | None  # measured on the emulated WAN, all cities
    hub_bytes: int | None  # measured: what the hub (coordinator) sent to the cities
    compute_util: float  # 1 - t_wan / t_step: inner steps (LAN included) vs stalled on the WAN
    city_util: tuple[float, float]  # (lowest, highest) city: a wide spread = cities waited for a slower one
    own_compute: float  # (t_data + t_compute) / t_step: capped by CPU contention on a shared host
    wan_rounds: int

    def time_to(self, target_rmse: float) -> float | None:
        """Training seconds until the pooled validation RMSE first reaches `target_rmse`."""
        return next((t for t, _, rmse in self.curve if rmse <= target_rmse), None)


def _start_time(train: list[dict[str, Any]]) -> float:
    first_step = min(r["step"] for r in train)
    return min(r["time"] - r["t_step"] for r in train if r["step"] == first_step)


def _timed_evals(records: list[dict[str, Any]], t0: float) -> list[dict[str, Any]]:
    """Validation records with `clock`: training seconds when the pass began, earlier passes excluded.

    A pass lasts its record's `seconds` if the trainer wrote it, else the gap since the rank's
    previous record (records of one rank are in file order).
    """
    timed = []
    previous: dict[int, float] = {}
    paused: dict[int, float] = defaultdict(float)
    for r in records:
        rank = r["global_rank"]
        if r["kind"] == "eval" and r.get("split", "val") == "val":
            seconds = r.get("seconds", max(0.0, r["time"] - previous.get(rank, r["time"])))
            timed.append({**r, "clock": r["time"] - seconds - paused[rank] - t0})
            paused[rank] += seconds
        previous[rank] = r["time"]
    return timed


def validation_curve(run_dir: Path) -> list[tuple[float, int, float]]:
    """(training seconds, step, pooled RMSE) at every step where every city evaluated."""
    records = read_records(run_dir)
    train = [r for r in records if r["kind"] == "train"]
    if not train:
        raise ValueError(f"{run_dir}: no train records in metrics/ (did the run start?)")
    evals = _timed_evals(records, _start_time(train))
    cities = {r["city"] for r in train}
    by_step: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    for e in evals:
        by_step[e["step"]][e["city"]] = e  # last pass wins: the final one follows the final sync
    curve = []
    for step in sorted(by_step):
        at = by_step[step]
        if set(at) != cities:
            continue
        weight = sum(e["n_windows"] for e in at.values())
        rmse = math.sqrt(sum(e["rmse"] ** 2 * e["n_windows"] for e in at.values()) / weight)
        curve.append((max(e["clock"] for e in at.values()), step, rmse))
    if not curve:
        raise ValueError(f"{run_dir}: no step where every city wrote a validation record")
    return curve


def step_shares(run_dir: Path) -> tuple[float, float, tuple[float, float]]:
    """(compute utilisation, own-compute share), averaged over ranks (module docstring), and the
    lowest and highest city's utilisation: cities that outpace the slowest one wait for it at the
    next round, and that wait is WAN time too, so the spread shows load imbalance."""
    per_rank: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    city_of: dict[int, int] = {}
    for r in read_records(run_dir, "train"):
        sums = per_rank[r["global_rank"]]
        city_of[r["global_rank"]] = r["city"]
        sums[0] += r["t_data"] + r["t_compute"]
        sums[1] += r["t_wan"]
        sums[2] += r["t_step"]
    utils = {rank: 1 - wan / max(total, 1e-12) for rank, (_, wan, total) in per_rank.items()}
    n = max(len(per_rank), 1)
    own = sum(busy / max(total, 1e-12) for busy, _, total in per_rank.values()) / n
    by_city: dict[int, list[float]] = defaultdict(list)
    for rank, u in utils.items():
        by_city[city_of[rank]].append(u)
    city_means = [sum(us) / len(us) for us in by_city.values()] or [0.0]
    return sum(utils.values()) / n, own, (min(city_means), max(city_means))


def read_outcome(run_dir: Path) -> RunOutcome:
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.is_file():
        raise ValueError(f"{summary_path} missing: the run did not finish")
    summary = json.loads(summary_path.read_text())
    bench_path = run_dir / BENCH_FILE
    bench = json.loads(bench_path.read_text()) if bench_path.is_file() else {}
    curve = validation_curve(run_dir)
    util, own, city_util = step_shares(run_dir)
    wan = read_records(run_dir, "wan")
    return RunOutcome(
        method=bench.get("method", summary["algorithm"]),
        final_rmse=curve[-1][2],
        train_s=curve[-1][0],
        curve=curve,
        wan_bytes=sum(r["bytes_sent"] for r in wan),
        wire_bytes=sum(bench["wire_bytes"]) if "wire_bytes" in bench else None,
        hub_bytes=bench.get("hub_bytes"),
        compute_util=util,
        city_util=city_util,
        own_compute=own,
        wan_rounds=summary["wan_rounds"],
    )


PLAIN = "+plain"  # a bench method name ending in it: that method with security.insecure=true


@dataclass
class BenchRun:
    method: str
    rate_mbit: float
    outcome: RunOutcome
    sweep: bool = False  # a rate-sweep run (--sweep-steps), not a row of the main table
