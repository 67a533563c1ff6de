"""`crosscity submit CONFIG [key=value ...] [--dry-run] [--via submitit]`: a run's cities as Slurm arrays.

By default generated sbatch scripts + `sbatch --parsable`, not submitit, because:
- the scripts ARE the documented templates (slurm/city.sbatch, slurm/coordinator.sbatch) with the
  resources filled in, so `--dry-run` prints exactly what runs and a user can re-`sbatch` them;
- no pickled callables and no `sacct` dependency: state comes from `launch/slurm/status.py`;
- requeue of ONE array task after a checkpoint (EXIT_REQUEUE) is a few lines of the script;
- submission is one `sbatch` per array and returns at once: nothing waits on the login node.
The arrays and their options come from launch/slurm/plan.py; `--via submitit` submits the same jobs
through submitit instead (launch/slurm/submitit_jobs.py, the Python API).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from crosscity.config import Config, ConfigError
from crosscity.core.atomic_io import atomic_write_text
from crosscity.core.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED
from crosscity.data_prep.errors import DataPrepError
from crosscity.launch.preflight import HostError, LoginNode, check_host
from crosscity.launch.run_dir import load_run
from crosscity.launch.slurm.plan import (
    SubmitError,
    city_arrays,
    city_directives,
    coordinator_directives,
    max_array_size,
    new_record,
    record_array,
    render,
    resolve_submission,
    template_body,
    template_variables,
)
from crosscity.launch.slurm.submitit_jobs import describe_run, submit_run


def exit_code(command: str, exc: ConfigError | HostError | SubmitError | DataPrepError) -> int:
    """One line on stderr; exit 2 for bad input (the config, the host, the data), 1 when Slurm refused."""
    if isinstance(exc, ConfigError | DataPrepError):
        kind = "config" if isinstance(exc, ConfigError) else "data"
        print(f"{command}: {kind} error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{command}: {exc}", file=sys.stderr)
    return EXIT_BAD_INPUT if isinstance(exc, HostError) else EXIT_FAILED


def sbatch(script: Path, *args: str) -> str:
    """Submit; returns the job id at once (sbatch never waits for the job)."""
    cmd = ["sbatch", "--parsable", *args, str(script)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SubmitError(f"{shlex.join(cmd)}: {exc}") from None
    if done.returncode != 0:
        raise SubmitError(f"{shlex.join(cmd)} failed: {done.stderr.strip()}")
    return done.stdout.strip().split(";")[0]


@dataclass
class Plan:
    """What `submit` will do: scripts to write and submit, in order."""

    run_dir: Path
    coordinator: str | None  # script text, None when slurm.coordinator is HOST:PORT
    arrays: list[tuple[list[int], str]]  # (cities of this array, script text)


def plan_run(cfg: Config, run_dir: Path, max_array: int) -> Plan:
    slurm = cfg.slurm
    topo = cfg.topology
    arrays = city_arrays(cfg, max_array)
    common = template_variables(run_dir)
    coordinator = None
    if slurm.coordinator == "job":
        coordinator = render(
            [
                "--job-name=crosscity-coordinator",
                *coordinator_directives(cfg, arrays),
                f"--output={run_dir}/logs/slurm/coordinator-%j.out",
            ],
            common,
            template_body("coordinator.sbatch"),
            f"coordinator and city supervisor of run {run_dir}",
        )
    scripts = []
    for array in arrays:
        cities = array.cities
        directives = [
            f"--job-name=crosscity-{run_dir.name}",
            f"--array=0-{len(cities) - 1}",
            *city_directives(cfg, array),
            "--open-mode=append",
            f"--output={run_dir}/logs/slurm/city-%A_%a.out",
        ]
        variables = {
            **common,
            "CONFIG": str(run_dir / "config.yaml"),
            "OVERRIDES": "",
            "COORDINATOR": "file" if slurm.coordinator == "job" else slurm.coordinator,
            "NUM_CITIES": str(topo.cities),
            "CROSSCITY_ARRAY_CITIES": ",".join(map(str, cities)),
            "LAUNCHER": "srun",
        }
        text = render(
            directives,
            variables,
            template_body("city.sbatch"),
            f"cities {','.join(map(str, cities))} of {run_dir}",
        )
        scripts.append((cities, text))
    return Plan(run_dir, coordinator, scripts)


def submit_plan(plan: Plan, ranks_per_city: int) -> dict:
    """Write the scripts into RUN_DIR/slurm/, submit them, record the job ids in jobs.json."""
    folder = plan.run_dir / "slurm"
    jobs = new_record(plan.run_dir)
    after: list[str] = []
    if plan.coordinator is not None:
        atomic_write_text(folder / "coordinator.sbatch", plan.coordinator)
        jobs["coordinator"] = sbatch(folder / "coordinator.sbatch")
        after = [f"--dependency=after:{jobs['coordinator']}"]
    for i, (cities, text) in enumerate(plan.arrays):
        path = folder / f"cities-{i}.sbatch"
        atomic_write_text(path, text)
        array = sbatch(path, *after)
        logs = plan.run_dir / "logs" / "slurm"
        tasks = [(f"{array}_{t}", logs / f"city-{array}_{t}.out") for t in range(len(cities))]
        record_array(jobs, plan.run_dir, array, cities, ranks_per_city, tasks, path)
    return jobs


def submit(
    config: str | Path, overrides: Sequence[str] = (), *, via: Literal["sbatch", "submitit"] = "sbatch"
) -> tuple[Path, dict]:
    """Check, write and submit a run; returns at once with its folder and its jobs.json record."""
    if via == "submitit":
        submitted = submit_run(config, overrides)
        return submitted.run_dir, submitted.record
    cfg, run_dir = resolve_submission(config, overrides)
    return run_dir, submit_plan(plan_run(cfg, run_dir, max_array_size()), cfg.topology.ranks_per_city)


def main(argv: list[str]) -> int:
    """Submit the cities of a run to Slurm and return at once."""
    p = argparse.ArgumentParser(
        prog="crosscity submit",
        description="Submit the cities of a run as Slurm job arrays (one task per city; cities with "
        "different slurm.per_city resources go into different arrays), plus a small coordinator job "
        "that runs the coordinator and brings back city tasks that end unfinished. Resources come from "
        "the config's slurm: section.",
        epilog="examples:\n  crosscity submit configs/beijing_mlp.yaml topology.cities=2 --dry-run\n"
        "  crosscity submit configs/beijing_mlp.yaml train.run_dir=runs/exp1\n"
        "  crosscity submit configs/beijing_mlp.yaml 'slurm.per_city={0: {mem: 32G}}' --via submitit\n"
        "  crosscity status runs/exp1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML run config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be submitted (sbatch scripts); submit nothing",
    )
    p.add_argument(
        "--via",
        choices=("sbatch", "submitit"),
        default="sbatch",
        help="sbatch: generated scripts from slurm/ [default]; submitit: the same jobs through submitit",
    )
    args = p.parse_intermixed_args(argv)
    try:
        if args.dry_run:
            cfg = load_run(args.config, args.overrides, slurm=True)
            check_host(cfg, LoginNode())
            print(_dry_run(cfg, Path(cfg.train.run_dir).resolve(), args.via), end="")
            return 0
        run_dir, jobs = submit(args.config, args.overrides, via=args.via)
    except (ConfigError, HostError, SubmitError, DataPrepError) as exc:
        return exit_code("crosscity submit", exc)
    coord = f"coordinator job {jobs['coordinator']}, " if jobs["coordinator"] else ""
    print(
        f"[submit] {coord}city arrays {', '.join(jobs['arrays'])}: {len(jobs['entries'])} cities; "
        f"follow with: crosscity status {run_dir}"
    )
    return 0


def _dry_run(cfg: Config, run_dir: Path, via: str) -> str:
    if via == "submitit":
        return describe_run(cfg, run_dir, max_array_size())
    plan = plan_run(cfg, run_dir, max_array_size())
    named = [
        ("coordinator.sbatch", plan.coordinator),
        *[(f"cities-{i}.sbatch", t) for i, (_, t) in enumerate(plan.arrays)],
    ]
    return "".join(f"# ===== {run_dir}/slurm/{name}\n{text}\n" for name, text in named if text is not None)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
