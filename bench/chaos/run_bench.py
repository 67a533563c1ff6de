"""`crosscity bench chaos`: one seeded training run under ~24 injected faults on the emulated WAN,
then the same run without faults; what the faults cost goes into bench/chaos/RESULTS.md.

Why: the product is for cities on a slow, unreliable WAN, so the claim "a city's trouble does not
stop the others" is measured for real: cities are network namespaces on the WAN emulator of
`bench wan` (bench/wan/emulator.py; each city on its own CPU budget, bench/wan/city_cpu.py), the
coordinator runs on the hub (bench/wan/on_hub.py), and bench/chaos/faults.py kills, stops, cuts
off and preempts cities and kills the coordinator at seeded times while the run trains. Needs root.

The training is bench/wan/config.yaml with the WAN bench's recommended method, streaming DiLoCo
with int4 + error feedback: its exchanges overlap compute, so a round that waits for a silent
city holds nobody's steps, and it sends the fewest bytes for the same quality.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from crosscity.bench.chaos.faults import Fault, Injector, PlanShape, plan_faults, read_events
from crosscity.bench.chaos.outcome import ChaosRun, analyse
from crosscity.bench.chaos.results_report import write_results
from crosscity.bench.wan.city_cpu import CityCpu, CityCpuError, auto_cpus
from crosscity.bench.wan.emulator import WanEmulator
from crosscity.bench.wan.on_hub import start_on_hub
from crosscity.bench.wan.run_bench import (
    BASE_CONFIG,
    DATA_CITIES,
    city_prefixes,
    ensure_data,
    write_bench_info,
)
from crosscity.config import TopologyConfig
from crosscity.launch.run_dir import resolve_run

RESULTS = Path(__file__).with_name("RESULTS.md")
# Its own names, so it never collides with `bench wan` (cc, 10.77.0.0/24, 7700) or tests/netns.
PREFIX, SUBNET, QUEUE, CGROUP = "ccx", "10.78.0.0/24", 7780, "crosscity-chaos"
METHOD = ["wan.algorithm=streaming", "wan.codec=int4", "wan.error_feedback=true"]
# Timing: the config defaults (heartbeat 1 s < dead_after 5 s < round_timeout 20 s). A checkpoint
# every 50 steps (~5 s here) bounds what a kill loses; validation every 500 steps.
SETTINGS = ["train.checkpoint_every=50", "train.eval_every=500", "train.log_every=1"]
PROGRESS_S = 20.0


def run_chaos(
    wan: WanEmulator,
    run_dir: Path,
    overrides: list[str],
    faults: list[Fault],
    cpu: CityCpu | None = None,
    label: str = "chaos",
    config: Path = BASE_CONFIG,
    log: Callable[[str], None] = print,
) -> ChaosRun:
    """Train with the cities in the emulator's namespaces and the launcher on its hub, injecting
    `faults` (none: the reference run); return what happened."""
    shutil.rmtree(run_dir, ignore_errors=True)  # a leftover checkpoint would be resumed
    cfg, path = resolve_run(config, overrides, run_dir)
    if cfg.topology.cities != wan.cities:
        raise ValueError(
            f"topology.cities={cfg.topology.cities} but the emulated WAN has {wan.cities} cities"
        )
    wan.reset_wire_bytes()
    start = time.monotonic()
    proc = start_on_hub(wan, path, city_prefixes(wan, cpu), wan.rank_env())
    injector = Injector(path, wan, faults, cfg.topology.ranks_per_city, cfg.train.requeue_signal, log=log)
    next_line, load = start + PROGRESS_S, []
    try:
        while proc.poll() is None:
            injector.poll()
            if time.monotonic() >= next_line:
                next_line += PROGRESS_S
                load.append(os.getloadavg()[0])
                log(progress_line(label, path, cfg.train.steps, cfg.topology, injector, start))
            time.sleep(0.2)
    finally:
        injector.close()
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    write_bench_info(wan, path, label)
    results, stats = analyse(path, faults)
    return ChaosRun(
        label,
        proc.returncode,
        time.monotonic() - start,
        faults,
        results,
        stats,
        wan.wire_bytes(),
        wan.hub_bytes(),
        injector.started,
        load,
    )


def progress_line(
    label: str, run_dir: Path, steps: int, topo: TopologyConfig, injector: Injector, start: float
) -> str:
    """The slowest city's step (its rank 0's last record), the rate since the start gate, an ETA."""
    done = []
    for city in range(topo.cities):
        done.append(_last_step(run_dir / "metrics" / f"rank{city * topo.ranks_per_city}.jsonl"))
    slowest = min(done)
    elapsed = time.time() - injector.started if injector.started else 0.0
    rate = slowest / elapsed if elapsed > 0 else 0.0
    eta = f"ETA {(steps - slowest) / rate / 60:.1f} min" if rate > 0 else "starting"
    injected = len(injector.plan) - len(injector.pending)
    faults = f", faults {injected}/{len(injector.plan)}" if injector.plan else ""
    return (
        f"[chaos] {label}: {time.monotonic() - start:.0f} s, steps {'/'.join(map(str, done))} of {steps} "
        f"({rate:.1f} steps/s for the slowest){faults}; {eta}"
    )


def _last_step(path: Path) -> int:
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 4096))
            tail = fh.read().decode(errors="replace")
    except OSError:
        return 0
    marker = '"step": '
    at = tail.rfind(marker)
    if at < 0:
        return 0
    digits = tail[at + len(marker) :].split(",", 1)[0]
    return int(digits) if digits.isdigit() else 0


# ------------------------------------------------------------------ the command


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crosscity bench chaos",
        description="Faults injected into a run on the emulated WAN, vs the same run without (root).",
        epilog="example:\n  crosscity bench chaos --seed 0 --faults 24",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--seed", type=int, default=0, help="the fault plan's seed (train.seed stays the config's)"
    )
    p.add_argument("--faults", type=int, default=24)
    p.add_argument("--cities", type=int, default=4)
    p.add_argument("--ranks-per-city", type=int, default=2)
    p.add_argument("--rate-mbit", type=float, default=50.0)
    p.add_argument("--delay-ms", type=float, default=20.0)
    p.add_argument("--steps", type=int, default=9000, help="inner steps per rank (sized for ~15-20 min here)")
    p.add_argument("--span-s", type=float, default=PlanShape.span_s, help="faults planned up to this many s")
    p.add_argument("--city-cpus", default="auto", help="CPU quota per city (as bench wan); 0 = shared cores")
    p.add_argument("--no-reference", action="store_true", help="skip the fault-free run")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild RESULTS.md from results.json and the run directories under --out (no run, no root)",
    )
    p.add_argument("--data", type=Path, default=Path("runs/bench_wan/data"), help="prepared Beijing data")
    p.add_argument("--out", type=Path, default=Path("runs/bench_chaos"))
    p.add_argument("--results", type=Path, default=RESULTS, help="RESULTS.md; results.json goes beside it")
    p.add_argument(
        "overrides", nargs="*", help="extra config overrides for both runs, e.g. wan.dead_after_s=3"
    )
    return p


def report_only(out: Path, results: Path) -> int:
    """RESULTS.md again from what the last bench left: its results.json (the command, each run's
    faults with their injection times) and its run directories, analysed afresh."""
    data = json.loads((results.with_name("results.json")).read_text())
    argv = data["command"].split()[3:]
    args = _parser().parse_args(argv)
    runs = []
    for r in data["runs"]:
        faults = [Fault(**{k: f[k] for k in Fault.__dataclass_fields__}) for f in r["faults"]]
        found, stats = analyse(out / r["label"], faults)
        started = r.get("started") or next(
            (e["time"] for e in read_events(out / r["label"]) if e["event"] == "start"), None
        )
        runs.append(
            ChaosRun(
                r["label"],
                r["exit_code"],
                r["seconds"],
                faults,
                found,
                stats,
                r["wire_bytes"],
                r["hub_bytes"],
                started,
                r["load_avg"],
            )
        )
    when = datetime.strptime(data["date"], "%Y-%m-%d %H:%M UTC").replace(tzinfo=UTC)
    args.out = out
    write_results(results, argv, args, runs, data["overrides"], when)
    print(f"[chaos] rebuilt {results} from {results.with_name('results.json')} and {out}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.report_only:
        try:
            return report_only(args.out, args.results)
        except (OSError, ValueError, KeyError) as exc:
            print(f"crosscity bench chaos --report-only: {exc}", file=sys.stderr)
            return 2
    try:
        cpus = auto_cpus(args.cities) if args.city_cpus == "auto" else float(args.city_cpus)
        cpu = CityCpu(args.cities, cpus, name=CGROUP) if cpus != 0 else None
        shape = PlanShape(faults=args.faults, span_s=args.span_s)
        plan = plan_faults(args.seed, args.cities, args.ranks_per_city, shape)
    except ValueError as exc:
        print(f"crosscity bench chaos: {exc}", file=sys.stderr)
        return 2
    overrides = [
        f"data.dir={args.data.resolve()}",
        f"data.cities={','.join(sorted(DATA_CITIES)[: args.cities])}",
        f"topology.cities={args.cities}",
        f"topology.ranks_per_city={args.ranks_per_city}",
        f"train.steps={args.steps}",
        *METHOD,
        *SETTINGS,
        *args.overrides,
    ]
    started = datetime.now(UTC)
    runs: list[ChaosRun] = []
    try:
        ensure_data(args.data)
        with (
            WanEmulator(
                args.cities, args.rate_mbit, args.delay_ms, prefix=PREFIX, subnet=SUBNET, queue=QUEUE
            ) as wan,
            cpu or contextlib.nullcontext() as city_cpu,
        ):
            print(f"[chaos] {len(plan)} faults planned (seed {args.seed}):", flush=True)
            for i, f in enumerate(plan):
                print(f"  {i + 1:2d}. at {f.at_s:5.0f} s: {f.describe()}", flush=True)
            jobs = [("faults", plan)] + ([] if args.no_reference else [("reference", [])])
            for label, faults in jobs:
                run = run_chaos(wan, args.out / label, overrides, faults, city_cpu, label, log=_log)
                runs.append(run)
                print(f"[chaos] {label}: exit {run.exit_code} after {run.seconds / 60:.1f} min", flush=True)
                write_results(args.results, argv, args, runs, overrides, started)
    except (CityCpuError, ValueError) as exc:
        print(f"crosscity bench chaos: {exc}", file=sys.stderr)
        return 1
    print(f"[chaos] results: {args.results}", flush=True)
    return 0 if all(r.exit_code == 0 for r in runs) else 1


def _log(line: str) -> None:
    print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
