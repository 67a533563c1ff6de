"""`crosscity bench wan`: the same training under every inter-city method, on an emulated WAN.

Why: the product's claim is that hierarchical averaging beats flat data parallel across slow
links at equal quality. This runs that comparison for real: cities are network namespaces with
shaped links (bench/wan/emulator.py), each city's ranks run inside its namespace, every method
trains the same model on the same Beijing data with the same seed and sample budget
(bench/wan/config.yaml), and the results are read back from the run directories
(bench/wan/run_outcome.py) into bench/wan/RESULTS.md. Needs root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from crosscity.bench.wan.city_cpu import CityCpu, CityCpuError, auto_cpus
from crosscity.bench.wan.emulator import WanEmulator
from crosscity.bench.wan.link_probe import LinkReport, probe
from crosscity.bench.wan.on_hub import start_on_hub
from crosscity.bench.wan.results_report import mb, write_results
from crosscity.bench.wan.run_outcome import BENCH_FILE, BenchRun, RunOutcome, read_outcome
from crosscity.core.atomic_io import atomic_write_text
from crosscity.launch.run_dir import resolve_run

BASE_CONFIG = Path(__file__).with_name("config.yaml")
RESULTS = Path(__file__).with_name("RESULTS.md")
DATA_CITIES = ("north", "east", "west", "centre")
LINK_FILE = "link_check.json"  # under --out: the link probe of the main rate

# method name -> wan.* overrides on top of config.yaml
METHODS: dict[str, list[str]] = {
    # the world-spanning baselines run plain gloo across the WAN: they need security.insecure=true
    "flat": ["wan.algorithm=flat", "security.insecure=true"],
    "torch_hierarchical": ["wan.algorithm=torch_hierarchical", "security.insecure=true"],
    "average": ["wan.algorithm=average"],
    "diloco": ["wan.algorithm=diloco"],
    "streaming": ["wan.algorithm=streaming"],
    "diloco+fp16": ["wan.algorithm=diloco", "wan.codec=fp16"],
    "diloco+int8": ["wan.algorithm=diloco", "wan.codec=int8"],
    "diloco+int4+ef": ["wan.algorithm=diloco", "wan.codec=int4", "wan.error_feedback=true"],
    "streaming+int8": ["wan.algorithm=streaming", "wan.codec=int8"],
    "streaming+int4+ef": ["wan.algorithm=streaming", "wan.codec=int4", "wan.error_feedback=true"],
    # the same without TLS (plaintext frames): what mutual TLS costs, in the same bench run
    "diloco+int8+plain": ["wan.algorithm=diloco", "wan.codec=int8", "security.insecure=true"],
    "streaming+int4+ef+plain": [
        "wan.algorithm=streaming",
        "wan.codec=int4",
        "wan.error_feedback=true",
        "security.insecure=true",
    ],
}
SWEEP_METHODS = ["flat", "torch_hierarchical", "diloco+int8", "streaming+int8"]


class BenchError(RuntimeError):
    """A benchmark run failed; the message names the method and its logs."""


def run_method(
    wan: WanEmulator,
    method: str,
    run_dir: Path,
    overrides: list[str],
    config: Path = BASE_CONFIG,
    cpu: CityCpu | None = None,
) -> RunOutcome:
    """Train one method with its ranks inside the emulator's city namespaces (and, with `cpu`, each
    city on its own CPU budget); return what it achieved."""
    if method not in METHODS:
        raise BenchError(f"unknown method {method!r}: allowed {', '.join(METHODS)}")
    shutil.rmtree(run_dir, ignore_errors=True)  # a leftover checkpoint would be resumed
    cfg, path = resolve_run(config, [*overrides, *METHODS[method]], run_dir)
    if cfg.topology.cities != wan.cities:
        raise BenchError(
            f"topology.cities={cfg.topology.cities} but the emulated WAN has {wan.cities} cities"
        )
    wan.reset_wire_bytes()
    code = start_on_hub(wan, path, city_prefixes(wan, cpu), wan.rank_env()).wait()
    if code != 0:
        raise BenchError(f"{method}: run failed (exit {code}); logs in {path / 'logs'}")
    write_bench_info(wan, path, method)
    return read_outcome(path)


def city_prefixes(wan: WanEmulator, cpu: CityCpu | None) -> list[list[str]]:
    """Per city: join its CPU budget (if any), then its network namespace."""
    return [[*(cpu.exec_prefix(c) if cpu else []), *wan.exec_prefix(c)] for c in range(wan.cities)]


def write_bench_info(wan: WanEmulator, run_dir: Path, method: str) -> None:
    """RUN_DIR/bench.json: the method, the link settings and the bytes measured on the emulated WAN."""
    info = {
        "method": method,
        "rate_mbit": wan.rate_mbit,
        "delay_ms": wan.delay_ms,
        "hub_rate_mbit": wan.hub_rate_mbit,
        "wire_bytes": wan.wire_bytes(),
        "hub_bytes": wan.hub_bytes(),
    }
    atomic_write_text(run_dir / BENCH_FILE, json.dumps(info))


def ensure_data(data_dir: Path) -> None:
    if all((data_dir / c / "manifest.json").is_file() for c in DATA_CITIES):
        return
    from crosscity.data_prep import cli as prep_cli

    print(f"[bench] preparing the shipped Beijing data into {data_dir}", flush=True)
    if prep_cli.main(["--preset", "beijing", "--out", str(data_dir)]) != 0:
        raise BenchError(f"data preparation into {data_dir} failed")


# ------------------------------------------------------------------ the command
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crosscity bench wan",
        description="Every inter-city method on the same training, across an emulated WAN (needs root).",
        epilog="example:\n  crosscity bench wan --cities 4 --ranks-per-city 2 --rate-mbit 50 --delay-ms 20 "
        "--sweep 10,50,200",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cities", type=int, default=4)
    p.add_argument("--ranks-per-city", type=int, default=2)
    p.add_argument("--rate-mbit", type=float, default=50.0, help="per-city link rate, each direction")
    p.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay between cities")
    p.add_argument(
        "--coordinator-rate-mbit",
        type=float,
        default=None,
        help="shape the hub's own link (the coordinator's, each direction) to this rate; default unshaped",
    )
    p.add_argument("--steps", type=int, default=300, help="inner steps per rank (the sample budget)")
    p.add_argument(
        "--city-cpus",
        default="auto",
        help="CPU quota per city (cgroup), as separate sites have their own compute; "
        "auto = 90%% of the cores split evenly, 0 = the cities share the host's cores",
    )
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list from: {', '.join(METHODS)}")
    p.add_argument("--sweep", default="10,50,200", help="rates (Mbit/s) for the sweep table; '' = none")
    p.add_argument("--sweep-methods", default=",".join(SWEEP_METHODS))
    p.add_argument(
        "--sweep-steps", type=int, default=100, help="inner steps per rank of every sweep run (all rates)"
    )
    p.add_argument("--data", type=Path, default=Path("runs/bench_wan/data"), help="prepared Beijing data")
    p.add_argument("--out", type=Path, default=Path("runs/bench_wan"), help="run directories go here")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument(
        "--report-only", action="store_true", help="rebuild --results from the run directories under --out"
    )
    p.add_argument(
        "overrides", nargs="*", help="extra config overrides for every run, e.g. wan.sync_every=40"
    )
    return p


@dataclass(frozen=True)
class Job:
    rate: float
    method: str
    steps: int
    sweep: bool  # a rate-sweep run: all rates at --sweep-steps, its own run directory


def _plan(args: argparse.Namespace) -> list[Job]:
    methods = [m for m in args.methods.split(",") if m]
    sweep_methods = [m for m in args.sweep_methods.split(",") if m]
    for m in [*methods, *sweep_methods]:
        if m not in METHODS:
            raise BenchError(f"--methods/--sweep-methods: unknown method {m!r}; allowed {', '.join(METHODS)}")
    if "flat" not in methods:
        raise BenchError("--methods must include flat: it defines the target and the baseline")
    plan = [Job(args.rate_mbit, m, args.steps, False) for m in methods]
    for rate in args.sweep if len(args.sweep) > 1 else []:
        if rate != args.rate_mbit or args.sweep_steps != args.steps:  # else the main runs serve
            plan += [Job(rate, m, args.sweep_steps, True) for m in dict.fromkeys(["flat", *sweep_methods])]
    return plan


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        args.sweep = sorted({float(x) for x in args.sweep.split(",") if x} | {args.rate_mbit})
    except ValueError:
        print(
            f"crosscity bench wan: --sweep {args.sweep!r}: expected comma-separated numbers", file=sys.stderr
        )
        return 2
    try:
        args.city_cpus = auto_cpus(args.cities) if args.city_cpus == "auto" else float(args.city_cpus)
        cpu = CityCpu(args.cities, args.city_cpus) if args.city_cpus != 0 else None  # checks the quota
    except ValueError as exc:
        print(f"crosscity bench wan: --city-cpus {args.city_cpus!r}: {exc} (or auto, or 0)", file=sys.stderr)
        return 2
    try:
        plan = _plan(args)
        if args.report_only:
            return _report_only(args, argv, plan)
        ensure_data(args.data)
        return _run(args, argv, plan, cpu)
    except (BenchError, CityCpuError) as exc:
        print(f"crosscity bench wan: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, argv: list[str], plan: list[Job], cpu: CityCpu | None) -> int:
    started, clock = datetime.now(UTC), time.monotonic()
    common = [
        f"data.dir={args.data.resolve()}",
        f"topology.cities={args.cities}",
        f"data.cities={','.join(sorted(DATA_CITIES)[: args.cities])}",  # never a silent subset
        f"topology.ranks_per_city={args.ranks_per_city}",
        *args.overrides,
    ]
    runs: list[BenchRun] = []
    failures: list[str] = []
    attempted = 0
    link = None
    for rate in args.sweep:
        todo = [job for job in plan if job.rate == rate]
        if not todo:
            continue
        quota = cpu or contextlib.nullcontext()
        emulator = WanEmulator(args.cities, rate, args.delay_ms, hub_rate_mbit=args.coordinator_rate_mbit)
        with emulator as wan, quota as city_cpu:
            if rate == args.rate_mbit and args.cities >= 2:
                link = probe(wan)
                print(f"[bench] link check at {rate:g} Mbit/s: {link}", flush=True)
                atomic_write_text(args.out / LINK_FILE, json.dumps(asdict(link)))
            for job in todo:
                method, t = job.method, time.monotonic()
                attempted += 1
                try:
                    overrides = [*common, f"train.steps={job.steps}"]
                    outcome = run_method(wan, method, _run_dir(args, job), overrides, cpu=city_cpu)
                except (BenchError, ValueError) as exc:  # one broken method must not void the others
                    failures.append(f"{method} @ {rate:g} Mbit/s: {exc}")
                    print(f"[bench] FAILED {failures[-1]}", flush=True)
                    continue
                runs.append(BenchRun(method, rate, outcome, job.sweep))
                eta = (time.monotonic() - clock) / attempted * (len(plan) - attempted)
                print(
                    f"[bench] {attempted}/{len(plan)} {method} @ {rate:g} Mbit/s"
                    f"{' (sweep)' if job.sweep else ''}: "
                    f"{time.monotonic() - t:.0f} s, "
                    f"val RMSE {outcome.final_rmse:.3f}, WAN {mb(outcome.wan_bytes)} MB, "
                    f"train {outcome.train_s:.1f} s, util {100 * outcome.compute_util:.0f}%; "
                    f"ETA {eta / 60:.1f} min",
                    flush=True,
                )
                # After every run, so a long bench that is stopped early still leaves its numbers.
                write_results(
                    args.results, args, argv, link, runs, failures, started, time.monotonic() - clock
                )
    print(f"[bench] results: {args.results}", flush=True)
    return 1 if failures else 0


def _run_dir(args: argparse.Namespace, job: Job) -> Path:
    return args.out / ("sweep" if job.sweep else "") / f"{job.rate:g}mbit" / job.method.replace("+", "_")


def _report_only(args: argparse.Namespace, argv: list[str], plan: list[Job]) -> int:
    runs, failures = [], []
    for job in plan:
        run_dir = _run_dir(args, job)
        try:
            runs.append(BenchRun(job.method, job.rate, read_outcome(run_dir), job.sweep))
        except (OSError, ValueError) as exc:
            failures.append(f"{job.method} @ {job.rate:g} Mbit/s: no finished run in {run_dir} ({exc})")
    link_path = args.out / LINK_FILE
    link = LinkReport(**json.loads(link_path.read_text())) if link_path.is_file() else None
    configs = [_run_dir(args, job) / "config.yaml" for job in plan]
    started = min((c.stat().st_mtime for c in configs if c.is_file()), default=time.time())
    write_results(args.results, args, argv, link, runs, failures, datetime.fromtimestamp(started, UTC), None)
    print(f"[bench] results rebuilt from {args.out}: {args.results}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
