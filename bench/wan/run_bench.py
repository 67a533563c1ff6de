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
import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # `crosscity bench wan` loads this file by path
    sys.path.insert(0, str(REPO_ROOT))

from bench.wan.emulator import WanEmulator  # noqa: E402
from bench.wan.link_probe import LinkReport, probe  # noqa: E402
from bench.wan.run_outcome import BENCH_FILE, RunOutcome, read_outcome  # noqa: E402
from launch.local_launcher import LocalLauncher, prepare_run_dir  # noqa: E402
from train.atomic_io import atomic_write_text  # noqa: E402

BASE_CONFIG = Path(__file__).with_name("config.yaml")
RESULTS = Path(__file__).with_name("RESULTS.md")
DATA_CITIES = ("north", "east", "west", "centre")

# method name -> wan.* overrides on top of config.yaml
METHODS: dict[str, list[str]] = {
    "flat": ["wan.algorithm=flat"],
    "torch_hierarchical": ["wan.algorithm=torch_hierarchical"],
    "average": ["wan.algorithm=average"],
    "diloco": ["wan.algorithm=diloco"],
    "streaming": ["wan.algorithm=streaming"],
    "diloco+fp16": ["wan.algorithm=diloco", "wan.codec=fp16"],
    "diloco+int8": ["wan.algorithm=diloco", "wan.codec=int8"],
    "diloco+int4+ef": ["wan.algorithm=diloco", "wan.codec=int4", "wan.error_feedback=true"],
    "streaming+int8": ["wan.algorithm=streaming", "wan.codec=int8"],
    "streaming+int4+ef": ["wan.algorithm=streaming", "wan.codec=int4", "wan.error_feedback=true"],
}
SWEEP_METHODS = ["flat", "torch_hierarchical", "diloco+int8", "streaming+int8"]


class BenchError(RuntimeError):
    """A benchmark run failed; the message names the method and its logs."""


@dataclass
class BenchRun:
    method: str
    rate_mbit: float
    outcome: RunOutcome


def run_method(
    wan: WanEmulator, method: str, run_dir: Path, overrides: list[str], config: Path = BASE_CONFIG
) -> RunOutcome:
    """Train one method with its ranks inside the emulator's city namespaces; return what it achieved."""
    if method not in METHODS:
        raise BenchError(f"unknown method {method!r}: allowed {', '.join(METHODS)}")
    shutil.rmtree(run_dir, ignore_errors=True)  # a leftover checkpoint would be resumed
    cfg, path = prepare_run_dir(config, [*overrides, *METHODS[method]], run_dir)
    if cfg.topology.cities != wan.cities:
        raise BenchError(
            f"topology.cities={cfg.topology.cities} but the emulated WAN has {wan.cities} cities"
        )
    city_env = {**wan.rank_env(), "PYTHONPATH": str(REPO_ROOT)}
    wan.reset_wire_bytes()
    launcher = LocalLauncher(
        path,
        cfg,
        store_host=wan.coordinator_addr,
        city_prefix=wan.exec_prefix,
        city_env=lambda city: city_env,
        echo=False,
    )
    code = launcher.run()
    if code != 0:
        raise BenchError(f"{method}: run failed (exit {code}); rank logs in {path / 'logs'}")
    info = {
        "method": method,
        "rate_mbit": wan.rate_mbit,
        "delay_ms": wan.delay_ms,
        "wire_bytes": wan.wire_bytes(),
    }
    atomic_write_text(path / BENCH_FILE, json.dumps(info))
    return read_outcome(path)


def ensure_data(data_dir: Path) -> None:
    if all((data_dir / c / "manifest.json").is_file() for c in DATA_CITIES):
        return
    from data_prep import cli as prep_cli

    print(f"[bench] preparing the shipped Beijing data into {data_dir}", flush=True)
    if prep_cli.main(["--preset", "beijing", "--out", str(data_dir)]) != 0:
        raise BenchError(f"data preparation into {data_dir} failed")


# ------------------------------------------------------------------ the report
def _mb(n: float | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.2f}"


def _secs(s: float | None) -> str:
    return "not reached" if s is None else f"{s:.1f}"


def main_table(runs: list[BenchRun]) -> str:
    flat = next(r.outcome for r in runs if r.method == "flat")
    target = flat.final_rmse
    flat_t = flat.time_to(target)
    rows = [
        f"Target: flat DDP's final val RMSE = {target:.3f} ug/m3.",
        "",
        "| method | time to target (s) | speed-up vs flat | final val RMSE | vs flat "
        "| WAN bytes sent (MB, accounted) | less than flat | wire bytes (MB, measured) "
        "| compute util | train time (s) | rounds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        o = r.outcome
        t = o.time_to(target)
        speedup = "-" if t is None or flat_t is None else f"{flat_t / max(t, 1e-9):.1f}x"
        reduction = f"{flat.wan_bytes / o.wan_bytes:,.0f}x" if o.wan_bytes else "-"
        rows.append(
            f"| {r.method} | {_secs(t)} | {speedup} | {o.final_rmse:.3f} "
            f"| {100 * (o.final_rmse / target - 1):+.2f}% "
            f"| {_mb(o.wan_bytes)} | {reduction} | {_mb(o.wire_bytes)} | {100 * o.compute_util:.0f}% "
            f"| {o.train_s:.1f} | {o.wan_rounds} |"
        )
    return "\n".join(rows)


def acceptance(runs: list[BenchRun]) -> str:
    """The issue's acceptance criteria, checked against the measured table."""
    by = {r.method: r.outcome for r in runs}
    flat = by["flat"]
    target, flat_t = flat.final_rmse, flat.time_to(flat.final_rmse)
    ours = {m: o for m, o in by.items() if m not in ("flat", "torch_hierarchical")}
    reached = {m: o.time_to(target) for m, o in ours.items() if o.time_to(target) is not None}
    lines = []
    if reached and flat_t:
        best = min(reached, key=lambda m: reached[m])
        b = by[best]
        torch_t = by["torch_hierarchical"].time_to(target) if "torch_hierarchical" in by else None
        checks = [
            (
                f"best method ({best}) reaches the target >= 5x sooner",
                flat_t / reached[best] >= 5,
                f"{flat_t / reached[best]:.1f}x",
            ),
            (
                "... sends >= 100x fewer WAN bytes",
                flat.wan_bytes >= 100 * b.wan_bytes,
                f"{flat.wan_bytes / max(b.wan_bytes, 1):,.0f}x",
            ),
            (
                "... ends within 2% of flat's final val RMSE",
                abs(b.final_rmse / target - 1) <= 0.02,
                f"{100 * (b.final_rmse / target - 1):+.2f}%",
            ),
            (
                "... beats torch HierarchicalModelAverager on time to target",
                torch_t is None or reached[best] < torch_t,
                f"{_secs(reached[best])} s vs {_secs(torch_t)} s",
            ),
        ]
        lines += [f"- [{'x' if ok else ' '}] {text}: {value}" for text, ok, value in checks]
    else:
        lines.append("- [ ] no method of ours reached flat DDP's final val RMSE")
    for m, o in by.items():
        if m.startswith("streaming"):
            ok = o.compute_util >= 0.9
            lines.append(
                f"- [{'x' if ok else ' '}] {m} keeps compute utilisation >= 90%: {100 * o.compute_util:.0f}%"
            )
    return "\n".join(lines)


def sweep_table(runs: list[BenchRun], rates: list[float]) -> str:
    methods = [m for m in dict.fromkeys(r.method for r in runs) if sum(r.method == m for r in runs) > 1]
    head = "| method | " + " | ".join(f"{rate:g} Mbit/s: train s / to target s" for rate in rates) + " |"
    rows = [head, "|---|" + "---:|" * len(rates)]
    for m in methods:
        cells = []
        for rate in rates:
            at = [r for r in runs if r.rate_mbit == rate]
            run = next((r for r in at if r.method == m), None)
            flat = next((r for r in at if r.method == "flat"), None)
            if run is None or flat is None:
                cells.append("-")
                continue
            cells.append(f"{run.outcome.train_s:.1f} / {_secs(run.outcome.time_to(flat.outcome.final_rmse))}")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    import torch

    return (
        f"{platform.node()}: {cpu}, {len(__import__('os').sched_getaffinity(0))} cores, "
        f"Linux {platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"
    )


def write_results(
    path: Path,
    args: argparse.Namespace,
    argv: list[str],
    link: LinkReport | None,
    runs: list[BenchRun],
    started: datetime,
    seconds: float,
) -> None:
    main_runs = [r for r in runs if r.rate_mbit == args.rate_mbit]
    parts = [
        "# WAN benchmark: hierarchical methods vs flat DDP on an emulated WAN",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC (took {seconds / 60:.1f} min)",
        f"- machine: {machine()}",
        f"- command: `crosscity bench wan {' '.join(argv)}`",
        f"- WAN: {args.cities} cities x {args.ranks_per_city} ranks, each city a network namespace; "
        f"{args.rate_mbit:g} Mbit/s TBF up and down per city, {args.delay_ms:g} ms one-way delay (NFQUEUE)",
        f"- training: bench/wan/config.yaml, {args.steps} steps per rank, "
        "same seed, data and sample budget for every method",
        "- definitions (bench/wan/run_outcome.py): training clock from the first step, validation "
        "passes excluded; time to target = first pooled val RMSE <= flat DDP's final; compute util = "
        "(data + compute) / step time; accounted bytes = the trainer's `wan` records, wire = IP bytes "
        "that crossed the emulated WAN.",
    ]
    if link is not None:
        parts.append(
            f"- link check (bench/wan/link_probe.py): RTT {link.rtt_ms:.1f} ms, TCP goodput "
            f"{link.goodput_mbit:.1f} Mbit/s, gloo all_reduce of {link.allreduce_bytes / 2**20:.0f} MiB "
            f"between two cities {link.allreduce_s:.2f} s"
        )
    parts += [
        "",
        f"## Methods at {args.rate_mbit:g} Mbit/s, {args.delay_ms:g} ms",
        "",
        main_table(main_runs),
        "",
    ]
    parts += ["## Acceptance (issue 4)", "", acceptance(main_runs), ""]
    if len(args.sweep) > 1:
        parts += [
            f"## Rate sweep ({args.delay_ms:g} ms one-way; {args.sweep_steps} steps per rank except "
            f"{args.steps} at {args.rate_mbit:g} Mbit/s)",
            "",
            sweep_table(runs, args.sweep),
            "",
        ]
    atomic_write_text(path, "\n".join(parts))


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
    p.add_argument("--steps", type=int, default=300, help="inner steps per rank (the sample budget)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list from: {', '.join(METHODS)}")
    p.add_argument("--sweep", default="10,50,200", help="rates (Mbit/s) for the sweep table; '' = none")
    p.add_argument("--sweep-methods", default=",".join(SWEEP_METHODS))
    p.add_argument(
        "--sweep-steps", type=int, default=100, help="inner steps per rank at the other sweep rates"
    )
    p.add_argument("--data", type=Path, default=Path("runs/bench_wan/data"), help="prepared Beijing data")
    p.add_argument("--out", type=Path, default=Path("runs/bench_wan"), help="run directories go here")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument(
        "overrides", nargs="*", help="extra config overrides for every run, e.g. wan.sync_every=40"
    )
    return p


def _plan(args: argparse.Namespace) -> list[tuple[float, str]]:
    methods = [m for m in args.methods.split(",") if m]
    sweep_methods = [m for m in args.sweep_methods.split(",") if m]
    for m in [*methods, *sweep_methods]:
        if m not in METHODS:
            raise BenchError(f"--methods/--sweep-methods: unknown method {m!r}; allowed {', '.join(METHODS)}")
    if "flat" not in methods:
        raise BenchError("--methods must include flat: it defines the target and the baseline")
    plan = [(args.rate_mbit, m) for m in methods]
    for rate in args.sweep:
        if rate != args.rate_mbit:
            plan += [(rate, m) for m in dict.fromkeys(["flat", *sweep_methods])]
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
        plan = _plan(args)
        ensure_data(args.data)
        return _run(args, argv, plan)
    except BenchError as exc:
        print(f"crosscity bench wan: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, argv: list[str], plan: list[tuple[float, str]]) -> int:
    started, clock = datetime.now(UTC), time.monotonic()
    common = [
        f"data.dir={args.data.resolve()}",
        f"topology.cities={args.cities}",
        f"topology.ranks_per_city={args.ranks_per_city}",
        *args.overrides,
    ]
    runs: list[BenchRun] = []
    link = None
    for rate in args.sweep:
        todo = [m for r, m in plan if r == rate]
        if not todo:
            continue
        with WanEmulator(args.cities, rate, args.delay_ms) as wan:
            if rate == args.rate_mbit and args.cities >= 2:
                link = probe(wan)
                print(f"[bench] link check at {rate:g} Mbit/s: {link}", flush=True)
            for method in todo:
                run_dir = args.out / f"{rate:g}mbit" / method.replace("+", "_")
                t = time.monotonic()
                steps = args.steps if rate == args.rate_mbit else args.sweep_steps
                outcome = run_method(wan, method, run_dir, [*common, f"train.steps={steps}"])
                runs.append(BenchRun(method, rate, outcome))
                done = len(runs)
                eta = (time.monotonic() - clock) / done * (len(plan) - done)
                print(
                    f"[bench] {done}/{len(plan)} {method} @ {rate:g} Mbit/s: {time.monotonic() - t:.0f} s, "
                    f"val RMSE {outcome.final_rmse:.3f}, WAN {_mb(outcome.wan_bytes)} MB, "
                    f"train {outcome.train_s:.1f} s, util {100 * outcome.compute_util:.0f}%; "
                    f"ETA {eta / 60:.1f} min",
                    flush=True,
                )
    write_results(args.results, args, argv, link, runs, started, time.monotonic() - clock)
    print(f"[bench] results: {args.results}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
