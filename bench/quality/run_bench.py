"""`crosscity bench quality`: is the federated model as good as pooling the data?

Why: the product promises one shared model as good as if every city had handed over its data. This
trains the same recipe (bench/quality/config.yaml), with the same sample budget and seeds, as the
pooled upper bound, per city alone, and with every federated method, on the shipped Beijing data and
on a harder split (bench/quality/datasets.py); scores each final model on every validation and test
window with `crosscity eval`; and writes RESULTS.md, results.json and PNGs (bench/quality/results.py).
Cities are local processes (the local launcher); no root needed. Deterministic on CPU: the same
command gives the same numbers, also while other work shares the machine (run it with `nice`).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from crosscity.bench.quality.datasets import QUICK, SPLITS, Split, prepare
from crosscity.bench.quality.results import write_results
from crosscity.bench.quality.rows import ROWS, Row, extra_row
from crosscity.bench.quality.runs import Launch, RunFailed, collect, launches, train_and_score
from crosscity.bench.wan.results_report import machine
from crosscity.config import ConfigError, load_config
from crosscity.launch.local.demo import DEMO_CONFIG

BASE_CONFIG = Path(__file__).with_name("config.yaml")
RESULTS_DIR = Path(__file__).parent
DEMO_STEPS = (600, 3000)  # the demo's budget and 5x it (issue 15: no worse with 5x the steps)
QUICK_OVERRIDES = [
    "train.steps=30",
    "train.eval_every=10",
    "train.log_every=10",
    "optim.warmup_steps=5",
    "model.hidden=16",
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crosscity bench quality",
        description=(__doc__ or "").split("\n\n")[1].replace("\n", " "),
        epilog="examples:\n  nice -n 10 crosscity bench quality      # the full benchmark (2-3 h, 2 cores)\n"
        "  crosscity bench quality --quick         # smoke check, < 1 min\n"
        "  crosscity bench quality --row fedadam-0.03 wan.algorithm=diloco wan.outer_optimizer=adam "
        "wan.outer_lr=0.03",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="tiny data, steps and rows, 1 seed: a smoke check")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 per row (default 3; --quick 1)")
    p.add_argument("--splits", default="standard,hard", help=f"comma-separated of {', '.join(SPLITS)}")
    p.add_argument("--rows", default="", help="only these rows (comma-separated names; default all)")
    p.add_argument(
        "--row",
        nargs="+",
        action="append",
        default=[],
        metavar="NAME KEY=VALUE",
        help="one more federated row",
    )
    p.add_argument("--no-demo", action="store_true", help="skip the demo recipe at 600 and 3000 steps")
    p.add_argument(
        "--report-only", action="store_true", help="rebuild RESULTS.md and the PNGs from results.json"
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=[],
        metavar="RESULTS_JSON",
        help="with --report-only: add the runs of other results.json files of the same recipe (a run of "
        "the same split, row and seed replaces ours): one table from runs made by several invocations",
    )
    p.add_argument(
        "--work", type=Path, default=Path("runs/bench_quality"), help="datasets and run directories"
    )
    p.add_argument(
        "--results", type=Path, help="RESULTS.md etc. (default bench/quality/; --quick: WORK/results)"
    )
    p.add_argument("overrides", nargs="*", help="config overrides for every run, e.g. train.steps=1000")
    return p


class Plan:
    """Every (split, row, seed) with its launches, and the work they add up to (rank-steps)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.quick = args.quick
        self.overrides = [*(QUICK_OVERRIDES if args.quick else []), *args.overrides]
        self.cfg = load_config(BASE_CONFIG, self.overrides)  # bad overrides: one line, before any work
        self.ranks = 1 if args.quick else self.cfg.topology.ranks_per_city
        self.seeds = range(args.seeds or (1 if args.quick else 3))
        names = [s for s in args.splits.split(",") if s]
        unknown = [s for s in names if s not in SPLITS]
        if unknown:
            raise ValueError(f"--splits: unknown split {unknown[0]!r}; allowed {', '.join(SPLITS)}")
        self.splits = [QUICK] if args.quick else [SPLITS[s] for s in names]
        extra = [extra_row(spec) for spec in args.row]
        only = {r for r in args.rows.split(",") if r}
        self.items: list[tuple[Split, Row, int, list[Launch]]] = []
        for split in self.splits:
            data = args.work / "data" / split.name
            pooled = args.work / "data" / f"{split.name}_pooled"
            for row in [*ROWS[split.name], *extra]:
                if only and row.name not in only:
                    continue
                for seed in self.seeds:
                    run_dir = args.work / "runs" / split.name / row.name.replace("+", "_") / f"seed{seed}"
                    todo = launches(row, split, data, pooled, run_dir, self.ranks, self.cfg.train.steps)
                    self.items.append((split, row, seed, todo))
        self.demo = [] if args.quick or args.no_demo else list(DEMO_STEPS)
        demo_ranks = load_config(DEMO_CONFIG).topology
        self.work = sum(launch.rank_steps for *_, todo in self.items for launch in todo)
        self.work += sum(demo_ranks.cities * demo_ranks.ranks_per_city * s for s in self.demo)


class Progress:
    """`[bench] i/n name: ... rate, ETA` after every launch, from the rank-steps done so far."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.trained, self.start = total, 0, 0, time.monotonic()

    def advance(self, what: str, rank_steps: int, trained: bool) -> None:
        self.done += rank_steps
        self.trained += rank_steps if trained else 0
        elapsed = time.monotonic() - self.start
        rate = self.trained / elapsed if self.trained else 0.0
        eta = (self.total - self.done) / rate if rate else 0.0
        print(
            f"[bench] {100 * self.done / self.total:5.1f}% {what}{'' if trained else ' (reused)'}: "
            f"{rate:,.0f} rank-steps/s, elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min",
            flush=True,
        )


def _header(argv: list[str], started: datetime, plan: Plan, seconds: float) -> Any:
    def header(payload: dict[str, Any]) -> list[str]:
        cfg = plan.cfg
        return [
            "# Model quality: federated vs pooled vs each city alone",
            "",
            f"- date: {started:%Y-%m-%d %H:%M} UTC, took {seconds / 60:.1f} min"
            + ("" if payload.get("complete") else " (partial: still running or stopped)"),
            f"- machine: {machine()}",
            *(
                [f"- command: `{shlex.join(['crosscity', 'bench', 'quality', *argv])}`"]
                if "commands" not in payload
                else ["- commands (their runs merged with `--report-only --merge`):"]
                + [f"  - `{shlex.join(c)}`" for c in payload["commands"]]
            ),
            f"- recipe: bench/quality/config.yaml{''.join(' ' + o for o in plan.overrides)}: "
            f"{cfg.model.kind} hidden {cfg.model.hidden} x {cfg.model.layers}, dropout {cfg.model.dropout}, "
            f"{cfg.optim.name} lr {cfg.optim.lr} wd {cfg.optim.weight_decay}, {cfg.optim.schedule} schedule "
            f"(warm-up {cfg.optim.warmup_steps}, floor {cfg.optim.min_lr_ratio}), {cfg.train.steps} steps x "
            f"{cfg.data.batch_size} per rank, {plan.ranks} ranks per city, H = {cfg.wan.sync_every}, "
            f"validation every {cfg.train.eval_every} steps, final model: {cfg.train.final_model} "
            "by pooled validation RMSE",
            f"- seeds: {len(plan.seeds)} (train.seed 0..{len(plan.seeds) - 1}); every number below is from "
            "`crosscity eval` of the run's final model on ALL windows of the split",
            "",
        ]

    return header


def _demo(args: argparse.Namespace, plan: Plan, progress: Progress) -> list[dict[str, Any]]:
    """The demo recipe at its budget and 5x it, on every validation window (and the test windows)."""
    data = args.work / "data" / "standard"
    out = []
    for steps in plan.demo:
        run_dir = args.work / "runs" / "demo" / f"steps{steps}"
        ranks = load_config(DEMO_CONFIG).topology
        launch = Launch(
            run_dir,
            (f"data.dir={data}", f"train.steps={steps}", "train.max_val_windows=0", "data.verify=quick"),
            0,
        )
        trained = train_and_score(DEMO_CONFIG, launch, [])
        progress.advance(f"demo {steps} steps", ranks.cities * ranks.ranks_per_city * steps, trained)
        evals = {s: json.loads((run_dir / f"eval_{s}.json").read_text()) for s in ("val", "test")}
        summary = json.loads((run_dir / "summary.json").read_text())
        out.append(
            {
                "recipe": "launch/local/demo.yaml",
                "steps": steps,
                "val_rmse": evals["val"]["overall"]["rmse"],
                "test_rmse": evals["test"]["overall"]["rmse"],
                "final_step": summary["final_model"]["step"],
            }
        )
    return out


def run(args: argparse.Namespace, argv: list[str]) -> int:
    plan = Plan(args)
    results = args.results or (args.work / "results" if args.quick else RESULTS_DIR)
    started, clock = datetime.now(UTC), time.monotonic()
    hours = 2000 if args.quick else 0  # --quick: the first 2000 hours of each station
    needed = {s.name: s for s in [*plan.splits, *([SPLITS["standard"]] if plan.demo else [])]}
    for split in needed.values():
        for pooled in (False, True):
            prepare(split, args.work / "data", rows=hours, pooled=pooled)
    common = ["data.verify=quick", "monitor.gpu_interval_s=0", *plan.overrides]
    progress = Progress(plan.work)
    payload: dict[str, Any] = {
        "command": ["crosscity", "bench", "quality", *argv],
        "started": started.isoformat(),
        "runs": [],
        "complete": False,
    }
    for split, row, seed, todo in plan.items:
        for launch in todo:
            trained = train_and_score(BASE_CONFIG, launch, [*common, f"train.seed={seed}"])
            progress.advance(
                f"{split.name} {row.name} seed {seed} {launch.run_dir.name}", launch.rank_steps, trained
            )
        payload["runs"].append({"split": split.name, "seed": seed, **collect(row, split, todo)})
        payload["seconds"] = time.monotonic() - clock
        write_results(results, payload, _header(argv, started, plan, payload["seconds"]))
    payload["demo"] = _demo(args, plan, progress)
    payload["seconds"], payload["complete"] = time.monotonic() - clock, True
    write_results(results, payload, _header(argv, started, plan, payload["seconds"]))
    print(f"[bench] results: {results / 'RESULTS.md'} ({payload['seconds'] / 60:.1f} min)", flush=True)
    return 0


def merged(ours: dict[str, Any], theirs: dict[str, Any], source: Path) -> dict[str, Any]:
    """The runs of two results.json of one recipe (the same config overrides), in the plan's order."""
    recipe = [_parser().parse_args(p["command"][3:]).overrides for p in (ours, theirs)]
    if recipe[0] != recipe[1]:
        raise ValueError(
            f"--merge {source}: its runs used the overrides {recipe[1]}, ours {recipe[0]}: not one recipe"
        )
    runs = {(r["split"], r["row"], r["seed"]): r for r in [*ours["runs"], *theirs["runs"]]}
    order = {(split, row.name): i for i, (split, rows) in enumerate(ROWS.items()) for row in rows}
    return {
        **ours,
        "runs": sorted(runs.values(), key=lambda r: (order.get((r["split"], r["row"]), 1 << 30), r["seed"])),
        "commands": [*ours.get("commands", [ours["command"]]), *theirs.get("commands", [theirs["command"]])],
        "seconds": ours.get("seconds", 0.0) + theirs.get("seconds", 0.0),
        "complete": ours.get("complete", False) and theirs.get("complete", False),
        "demo": ours.get("demo") or theirs.get("demo"),
    }


def report_only(args: argparse.Namespace) -> int:
    """RESULTS.md and PNGs again from results.json, with the header of the command that made it."""
    results = args.results or (args.work / "results" if args.quick else RESULTS_DIR)
    payload = json.loads((results / "results.json").read_text())
    for source in args.merge:
        try:
            theirs = json.loads(source.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"--merge {source}: not a readable results.json ({exc})") from exc
        payload = merged(payload, theirs, source)
    argv = payload["command"][3:]
    plan = Plan(_parser().parse_args(argv))
    seconds = payload.get("seconds", 0.0)
    mtime = datetime.fromtimestamp((results / "results.json").stat().st_mtime - seconds, UTC)
    started = datetime.fromisoformat(payload["started"]) if "started" in payload else mtime
    write_results(results, payload, _header(argv, started, plan, seconds))
    print(f"[bench] rebuilt {results / 'RESULTS.md'} from results.json", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    if args.merge and not args.report_only:
        print("crosscity bench quality: --merge works with --report-only only", file=sys.stderr)
        return 2
    try:
        return report_only(args) if args.report_only else run(args, argv)
    except (ConfigError, ValueError) as exc:
        print(f"crosscity bench quality: {exc}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"crosscity bench quality: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
