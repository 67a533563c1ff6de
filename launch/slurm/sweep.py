"""`crosscity sweep` (one throttled Slurm array, or local) and `crosscity report SWEEP_DIR`.

A sweep is a folder: sweep.json (the points and their parameters), points/NAME/ (each point's
run folder with config.yaml and command.sh), logs/, slurm/jobs.json (job ids, read by
`crosscity status`). Submission writes everything first and returns at once: the login node
never waits on the sweep. Each point runs `crosscity run` (the local launcher: all cities x ranks
of that point inside its one allocation).
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import random
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from crosscity.config import Config, ConfigError, load_config
from crosscity.core.atomic_io import atomic_write, atomic_write_text
from crosscity.data_prep.errors import DataPrepError
from crosscity.data_prep.run_checks import check_runs_data
from crosscity.launch.preflight import HostError, LoginNode, check_host
from crosscity.launch.run_dir import load_run, write_run
from crosscity.launch.slurm.plan import (
    SubmitError,
    chunks,
    max_array_size,
    placement_directives,
    render,
    template_body,
    write_jobs,
)
from crosscity.launch.slurm.status import FINISHED, JOBS_FILE, entry_states, load_jobs, tail_lines
from crosscity.launch.slurm.submit import exit_code, sbatch

SWEEP_FILE = "sweep.json"
DEFAULT_COMMAND = "{python} -m crosscity run {config}"


# ---------------------------------------------------------------- points


def parse_grid(specs: list[str]) -> dict[str, list[str]]:
    """["optim.lr=1e-3,3e-3", "wan.codec=none,int8"] -> {"optim.lr": ["1e-3", "3e-3"], ...}."""
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        items = [v for v in values.split(",") if v]
        if not sep or not key or not items:
            raise ConfigError(f"--grid {spec!r}: expected key=v1,v2,... e.g. --grid optim.lr=1e-3,3e-3")
        if key in grid:
            raise ConfigError(f"--grid {spec!r}: key {key!r} given twice")
        grid[key] = items
    return grid


def grid_points(grid: dict[str, list[str]], n_random: int = 0, seed: int = 0) -> list[dict[str, str]]:
    """Every combination, or `n_random` of them drawn without replacement (fixed by `seed`)."""
    keys = list(grid)
    points = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]
    if n_random and n_random < len(points):
        picked = sorted(random.Random(seed).sample(range(len(points)), n_random))
        points = [points[i] for i in picked]
    return points


def point_name(index: int) -> str:
    return f"p{index:03d}"


def point_cpus(cfg: Config) -> int:
    """A point runs every rank of its run on one node (the local launcher)."""
    return cfg.topology.cities * cfg.topology.ranks_per_city * cfg.slurm.cpus_per_task


def load_points(config: str, overrides: list[str], points: list[dict[str, str]], slurm: bool) -> list[Config]:
    """Every point's checked config; `slurm`: the points run as Slurm array tasks, so the config's
    Slurm rules and what a login node can tell apply (each point's `crosscity run` checks its host)."""
    configs = []
    for i, params in enumerate(points):
        try:
            cfg = load_run(config, [*overrides, *(f"{k}={v}" for k, v in params.items())], slurm=slurm)
        except ConfigError as exc:
            raise ConfigError(f"sweep point {point_name(i)} {params}: {exc}") from None
        if slurm:
            check_host(cfg, LoginNode())
        configs.append(cfg)
    return configs


def prepare_points(
    configs: list[Config], points: list[dict[str, str]], sweep_dir: Path, command: str
) -> list[dict]:
    """Write every (already checked) point's folder: config.yaml and command.sh."""
    records = []
    for i, (cfg, params) in enumerate(zip(configs, points, strict=True)):
        run_dir = sweep_dir / "points" / point_name(i)
        cfg.train.run_dir = str(run_dir)
        write_run(cfg)
        cmd = command.format(
            python=shlex.quote(sys.executable),
            config=shlex.quote(str(run_dir / "config.yaml")),
            run_dir=shlex.quote(str(run_dir)),
        )
        atomic_write_text(run_dir / "command.sh", f"cd {shlex.quote(str(Path.cwd()))}\n{cmd}\n")
        records.append(
            {"name": point_name(i), "params": params, "run_dir": str(run_dir), "cpus": point_cpus(cfg)}
        )
    return records


# ---------------------------------------------------------------- Slurm


def plan_arrays(
    cfg: Config, sweep_dir: Path, names: list[str], parallel: int, max_array: int
) -> list[tuple[list[str], str]]:
    """One sbatch script per chunk of at most MaxArraySize points, each throttled to %parallel."""
    directives = [f"--cpus-per-task={point_cpus(cfg)}", "--ntasks=1", *placement_directives(cfg.slurm)]
    scripts = []
    for part in chunks(names, max_array):
        head = [
            f"--job-name=crosscity-sweep-{sweep_dir.name}",
            f"--array=0-{len(part) - 1}%{parallel}",
            *directives,
            *cfg.slurm.extra,
            f"--output={sweep_dir}/logs/%A_%a.out",
        ]
        variables = {"SWEEP_DIR": str(sweep_dir), "POINTS": " ".join(part)}
        scripts.append(
            (
                part,
                render(head, variables, template_body("sweep.sbatch"), f"sweep points {part[0]}..{part[-1]}"),
            )
        )
    return scripts


def submit_arrays(sweep_dir: Path, scripts: list[tuple[list[str], str]], jobs: dict) -> dict:
    """Submit the chunks in order, each after the previous one ended (the %K cap holds across chunks)."""
    entries = {e["name"]: e for e in jobs["entries"]}
    previous = None
    for part, text in scripts:
        path = sweep_dir / "slurm" / f"sweep-{len(jobs['arrays'])}.sbatch"
        atomic_write_text(path, text)
        array = sbatch(path, *([f"--dependency=afterany:{previous}"] if previous else []))
        previous = array
        jobs["arrays"].append(array)
        for task, name in enumerate(part):
            entries[name] = {
                **entries.get(name, {}),
                "name": name,
                "job": f"{array}_{task}",
                "run_dir": str(sweep_dir / "points" / name),
                "log": str(sweep_dir / "logs" / f"{array}_{task}.out"),
            }
        jobs["entries"] = sorted(entries.values(), key=lambda e: e["name"])
        write_jobs(sweep_dir, jobs)
    return jobs


# ---------------------------------------------------------------- local


def run_local(sweep_dir: Path, names: list[str], parallel: int, jobs: dict) -> dict:
    """Run the points here, `parallel` at a time, with a progress line per finished point."""
    entries = {e["name"]: e for e in jobs["entries"]}
    start, done, failed = time.monotonic(), 0, 0

    def one(name: str) -> tuple[str, int, Path]:
        log = sweep_dir / "logs" / f"local-{name}.out"
        with log.open("w") as fh:
            rc = subprocess.run(
                ["bash", str(sweep_dir / "points" / name / "command.sh")], stdout=fh, stderr=subprocess.STDOUT
            ).returncode
        return name, rc, log

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        for fut in as_completed([pool.submit(one, n) for n in names]):
            name, rc, log = fut.result()
            done, failed = done + 1, failed + (rc != 0)
            entries[name] = {
                "name": name,
                "job": "local",
                "exit_code": rc,
                "run_dir": str(sweep_dir / "points" / name),
                "log": str(log),
            }
            jobs["entries"] = sorted(entries.values(), key=lambda e: e["name"])
            write_jobs(sweep_dir, jobs)
            elapsed = time.monotonic() - start
            rate = done / elapsed
            eta = (len(names) - done) / rate if rate else 0.0
            print(
                f"[sweep] {done}/{len(names)} points done ({failed} failed), {rate * 60:.1f} points/min, "
                f"ETA {eta:.0f} s; {name} exit {rc}",
                flush=True,
            )
    return jobs


# ---------------------------------------------------------------- states shared by retry and report


def failed_points(jobs: dict) -> list[str]:
    """Finished but not completed, or forgotten by Slurm without leaving a summary.json."""
    states = {n: s.state for n, s in entry_states(jobs).items()}
    by_name = {e["name"]: e for e in jobs["entries"]}
    return [
        n
        for n, s in states.items()
        if (s in FINISHED and s != "COMPLETED")
        or (s == "UNKNOWN" and not (Path(by_name[n]["run_dir"]) / "summary.json").exists())
    ]


# ---------------------------------------------------------------- crosscity sweep


def _sweep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crosscity sweep",
        description="Hyperparameter sweep: every --grid combination (or --random N of them) as one throttled "
        "Slurm job array (split past MaxArraySize), or run here with --local.",
        epilog="examples:\n"
        "  crosscity sweep configs/beijing_mlp.yaml --grid optim.lr=1e-3,3e-3 --grid wan.sync_every=10,50 "
        "--parallel 2\\\n      --out runs/sweep1\n"
        "  crosscity status runs/sweep1\n"
        "  crosscity sweep --retry-failed runs/sweep1\n"
        "  crosscity report runs/sweep1 --metric overall.val_rmse",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", nargs="?", help="YAML run config (not with --retry-failed)")
    p.add_argument("overrides", nargs="*", help="key=value overrides shared by every point")
    p.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2", help="values of one key (repeatable)"
    )
    p.add_argument(
        "--random", type=int, default=0, metavar="N", help="draw N grid points at random instead of all"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of --random")
    p.add_argument("--parallel", type=int, default=4, metavar="K", help="at most K points run at once [4]")
    p.add_argument("--local", action="store_true", help="run the points here (no Slurm); blocks until done")
    p.add_argument("--out", type=Path, help="sweep folder [runs/sweep-CONFIGNAME]")
    p.add_argument(
        "--command",
        default=DEFAULT_COMMAND,
        help="what one point runs; {python} {config} {run_dir} are filled in [%(default)s]",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print the points and sbatch scripts; submit nothing"
    )
    p.add_argument(
        "--retry-failed", type=Path, metavar="SWEEP_DIR", help="resubmit only the failed points of a sweep"
    )
    return p


def _launch(cfg: Config, sweep_dir: Path, names: list[str], args: argparse.Namespace, jobs: dict) -> dict:
    if args.local:
        return run_local(sweep_dir, names, args.parallel, jobs)
    return submit_arrays(sweep_dir, plan_arrays(cfg, sweep_dir, names, args.parallel, max_array_size()), jobs)


def _retry(args: argparse.Namespace) -> int:
    sweep_dir = args.retry_failed.resolve()
    jobs = load_jobs(sweep_dir)
    names = failed_points(jobs)
    if not names:
        print(f"[sweep] no failed points in {sweep_dir}")
        return 0
    cfg = load_config(Path(sweep_dir / "points" / names[0] / "config.yaml"))
    print(f"[sweep] retrying {len(names)} failed point(s): {' '.join(names)}")
    jobs = _launch(cfg, sweep_dir, names, args, jobs)
    return 1 if args.local and failed_points(jobs) else 0


def main(argv: list[str]) -> int:
    args = _sweep_parser().parse_intermixed_args(argv)
    if args.parallel < 1:
        print("crosscity sweep: --parallel must be >= 1", file=sys.stderr)
        return 2
    try:
        if args.retry_failed:
            return _retry(args)
        if not args.config or not args.grid:
            print(
                "crosscity sweep: need CONFIG and at least one --grid KEY=V1,V2 (or --retry-failed DIR)",
                file=sys.stderr,
            )
            return 2
        points = grid_points(parse_grid(args.grid), args.random, args.seed)
        sweep_dir = (args.out or Path("runs") / f"sweep-{Path(args.config).stem}").resolve()
        if (sweep_dir / SWEEP_FILE).exists() and not args.dry_run:
            print(
                f"crosscity sweep: {sweep_dir} already holds a sweep; use --out NEW_DIR or --retry-failed",
                file=sys.stderr,
            )
            return 2
        configs = load_points(args.config, args.overrides, points, slurm=not args.local)
        if args.dry_run:
            return _dry_run(args, configs[0], points, sweep_dir)
        check_runs_data(configs)  # every point's data settings, before anything is written
        records = prepare_points(configs, points, sweep_dir, args.command)
        (sweep_dir / "logs").mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            sweep_dir / SWEEP_FILE,
            json.dumps(
                {
                    "config": str(Path(args.config).resolve()),
                    "overrides": args.overrides,
                    "grid": parse_grid(args.grid),
                    "points": records,
                },
                indent=1,
            ),
        )
        jobs = {"kind": "sweep", "arrays": [], "entries": []}
        jobs = _launch(configs[0], sweep_dir, [r["name"] for r in records], args, jobs)
    except (ConfigError, HostError, SubmitError, DataPrepError) as exc:
        return exit_code("crosscity sweep", exc)
    if args.local:
        bad = failed_points(jobs)
        print(
            f"[sweep] {len(records) - len(bad)}/{len(records)} points completed; "
            f"report: crosscity report {sweep_dir}"
        )
        return 1 if bad else 0
    print(
        f"[sweep] {len(records)} points as array(s) {', '.join(jobs['arrays'])} "
        f"(at most {args.parallel} at once); "
        f"follow with: crosscity status {sweep_dir}"
    )
    return 0


def _dry_run(args: argparse.Namespace, cfg: Config, points: list[dict[str, str]], sweep_dir: Path) -> int:
    names = [point_name(i) for i in range(len(points))]
    for name, params in zip(names, points, strict=True):
        print(f"# {name}: {' '.join(f'{k}={v}' for k, v in params.items())}")
    if not args.local:
        for i, (_, text) in enumerate(plan_arrays(cfg, sweep_dir, names, args.parallel, max_array_size())):
            print(f"# ===== {sweep_dir}/slurm/sweep-{i}.sbatch\n{text}")
    return 0


# ---------------------------------------------------------------- crosscity report SWEEP_DIR


def is_sweep_dir(folder: Path) -> bool:
    return (Path(folder) / SWEEP_FILE).is_file()


def _lookup(summary: dict, dotted: str) -> float | None:
    node: object = summary
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, (int, float)) else None


def report_rows(sweep_dir: Path, metrics: list[str]) -> tuple[list[dict], list[str]]:
    """One row per point (params, state, metrics from its summary.json); and the parameter keys."""
    sweep = json.loads((sweep_dir / SWEEP_FILE).read_text())
    jobs = load_jobs(sweep_dir) if (sweep_dir / JOBS_FILE).is_file() else {"entries": []}
    states = {n: s.state for n, s in entry_states(jobs).items()}
    logs = {e["name"]: e.get("log", "") for e in jobs["entries"]}
    keys = list(sweep["grid"])
    rows = []
    for point in sweep["points"]:
        path = Path(point["run_dir"]) / "summary.json"
        summary = json.loads(path.read_text()) if path.is_file() else {}
        row = {"point": point["name"], **point["params"], "state": states.get(point["name"], "NOT_SUBMITTED")}
        row.update({m: _lookup(summary, m) for m in metrics})
        row["log"] = logs.get(point["name"], "")
        rows.append(row)
    return rows, keys


def _markdown(rows: list[dict], columns: list[str]) -> str:
    def cell(v: object) -> str:
        return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _plot(rows: list[dict], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r[metric] is not None]
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(done) + 2), 3.5))
    ax.bar([r["point"] for r in done], [r[metric] for r in done], color="tab:blue")
    ax.set_ylabel(metric)
    ax.set_title(f"sweep {path.parent.name}: {metric} per point (best first)")
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def report_main(argv: list[str]) -> int:
    """`crosscity report SWEEP_DIR`: CSV + Markdown table sorted by a metric, a plot, failed log tails."""
    p = argparse.ArgumentParser(prog="crosscity report", description=report_main.__doc__)
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--metric", default="overall.val_rmse", help="summary.json key to sort by [%(default)s]")
    p.add_argument("--descending", action="store_true", help="larger is better")
    p.add_argument("--tail", type=int, default=10, help="log lines shown per failed point [10]")
    args = p.parse_args(argv)
    sweep_dir = args.sweep_dir.resolve()
    if not is_sweep_dir(sweep_dir):
        print(f"crosscity report: {sweep_dir / SWEEP_FILE} not found: not a sweep folder", file=sys.stderr)
        return 2
    metrics = list(dict.fromkeys([args.metric, "overall.val_rmse", "overall.val_mae", "wall_s"]))
    rows, keys = report_rows(sweep_dir, metrics)
    sign = -1 if args.descending else 1
    rows.sort(key=lambda r: (r[args.metric] is None, sign * (r[args.metric] or 0.0), r["point"]))
    columns = ["point", *keys, "state", *metrics]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(sweep_dir / "report.csv", buf.getvalue())
    failed = [r for r in rows if r["state"] != "COMPLETED" or r[args.metric] is None]
    md = [
        f"# Sweep {sweep_dir.name}: {len(rows)} points, sorted by {args.metric}",
        "",
        _markdown(rows, columns),
    ]
    if failed:
        md += ["", f"## Points without a result ({len(failed)})"]
        for r in failed:
            tail = tail_lines(Path(r["log"]), args.tail) if r["log"] else []
            md += ["", f"### {r['point']} ({r['state']}) - {r['log'] or 'no log'}", "```", *tail, "```"]
        md += ["", f"Resubmit them: `crosscity sweep --retry-failed {sweep_dir}`"]
    text = "\n".join(md) + "\n"
    atomic_write_text(sweep_dir / "report.md", text)
    if any(r[args.metric] is not None for r in rows):
        _plot(rows, args.metric, sweep_dir / "report.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
