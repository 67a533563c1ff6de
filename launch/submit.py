"""`crosscity submit CONFIG [key=value ...] [--dry-run]`: the cities of a run as one Slurm job array.

Generated sbatch scripts + `sbatch --parsable`, not submitit, because:
- the scripts ARE the documented templates (slurm/city.sbatch, slurm/coordinator.sbatch) with the
  resources filled in, so `--dry-run` prints exactly what runs and a user can re-`sbatch` them;
- no pickled callables and no `sacct` dependency: state comes from `launch.job_status`;
- requeue of ONE array task after a checkpoint (exit 75) is two lines of the script;
- submission is one `sbatch` per array and returns at once: nothing waits on the login node.
Arrays longer than the cluster's MaxArraySize are split into chunks; each chunk exports its
offset so the ranks still see the right city (launch/slurm_env.py).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from launch.job_status import JOBS_FILE
from train.atomic_io import atomic_write_text
from train.config import Config, ConfigError, load_config, save_config

SLURM_DIR = Path(__file__).resolve().parents[1] / "slurm"
BODY_MARK = "### body:"


class SubmitError(RuntimeError):
    """sbatch refused a script; the message carries its stderr."""


@dataclass
class SlurmConfig:
    """Resources of EACH city (one array task); proposed as the `slurm:` section of train/config.py."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    time_min: int = 60  # wall-clock limit of each city, minutes (an int: YAML reads 01:00:00 as 3600)
    nodes: int = 1  # per city
    tasks_per_node: int = 0  # 0 = topology.ranks_per_city / nodes
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem: str = ""  # per node, e.g. 16G ("" = cluster default)
    constraint: str = ""
    signal_lead_s: int = 120  # requeue signal this many seconds before the time limit
    coordinator: str = "job"  # "job" = a small coordinator job hosts the store; or "HOST:PORT" of one
    extra: list[str] = field(default_factory=list)  # more sbatch options, verbatim, e.g. ["--exclusive"]

    def check(self, ranks_per_city: int) -> None:
        if self.nodes < 1:
            raise ConfigError(f"slurm.nodes={self.nodes}: must be >= 1")
        if (
            self.tasks_per_node < 0
            or self.gpus_per_node < 0
            or self.cpus_per_task < 1
            or self.signal_lead_s < 0
        ):
            raise ConfigError(
                "slurm.tasks_per_node/gpus_per_node/signal_lead_s must be >= 0, cpus_per_task >= 1"
            )
        if self.tasks_per_node_for(ranks_per_city) * self.nodes != ranks_per_city:
            raise ConfigError(
                f"slurm.nodes={self.nodes} x slurm.tasks_per_node={self.tasks_per_node}: must equal "
                f"topology.ranks_per_city={ranks_per_city}"
            )
        if self.time_min < 1:
            raise ConfigError(f"slurm.time_min={self.time_min}: must be >= 1 (minutes)")
        if self.signal_lead_s >= self.time_min * 60:
            raise ConfigError(
                f"slurm.signal_lead_s={self.signal_lead_s}: must be shorter than "
                f"slurm.time_min={self.time_min} minutes"
            )
        if self.coordinator != "job" and not re.match(r"^[\w.-]+:\d+$", self.coordinator):
            raise ConfigError(f"slurm.coordinator={self.coordinator!r}: allowed 'job' or HOST:PORT")

    def tasks_per_node_for(self, ranks_per_city: int) -> int:
        return self.tasks_per_node or max(1, ranks_per_city // self.nodes)


def resolve_run(
    config: str | Path, overrides: Sequence[str], run_dir: str | Path | None = None
) -> tuple[Config, Path]:
    """Load + validate the config and write RUN_DIR/config.yaml (what the ranks read).

    Same result as launch.local_launcher.prepare_run_dir, but without importing torch: submit,
    sweep and status run on login nodes, where a multi-second torch import is wasted.
    """
    cfg = load_config(config, list(overrides))
    if run_dir is not None:
        cfg.train.run_dir = str(run_dir)
    path = Path(cfg.train.run_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    save_config(cfg, path / "config.yaml")
    return cfg, path


def slurm_config(cfg: Config) -> SlurmConfig:
    """The run's `slurm:` section (defaults until train/config.py has one)."""
    section = getattr(cfg, "slurm", None)
    if section is None:
        return SlurmConfig()
    return SlurmConfig(
        **{k: getattr(section, k) for k in SlurmConfig.__dataclass_fields__ if hasattr(section, k)}
    )


def max_array_size(default: int = 1001) -> int:
    """The cluster's MaxArraySize (largest array index + 1); Slurm's default if the controller is silent."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "config"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return default
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(found.group(1)) if found else default


def chunks(items: Sequence[int], size: int) -> list[list[int]]:
    """Split array members into chunks whose task ids 0..len-1 stay below MaxArraySize."""
    if size < 1:
        raise ValueError(f"chunk size {size}: must be >= 1")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def template_body(name: str) -> str:
    """Everything after the body mark of slurm/NAME: the part generated scripts share with the template."""
    text = (SLURM_DIR / name).read_text()
    at = text.find(BODY_MARK)
    if at < 0:
        raise FileNotFoundError(f"{SLURM_DIR / name}: no '{BODY_MARK}' line")
    return text[text.index("\n", at) + 1 :]


def render(directives: list[str], variables: dict[str, str], body: str, comment: str) -> str:
    """A complete sbatch script: header comment, #SBATCH lines, exported variables, shared body."""
    lines = ["#!/bin/bash", f"# {comment}", "# Generated by crosscity; re-submit with sbatch if needed."]
    lines += [f"#SBATCH {d}" for d in directives]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in variables.items()]
    return "\n".join(lines) + "\n" + body


def resource_directives(slurm: SlurmConfig, ranks_per_city: int) -> list[str]:
    out = [
        f"--nodes={slurm.nodes}",
        f"--ntasks-per-node={slurm.tasks_per_node_for(ranks_per_city)}",
        f"--cpus-per-task={slurm.cpus_per_task}",
        f"--time={slurm.time_min}",
    ]
    optional = {
        "partition": slurm.partition,
        "account": slurm.account,
        "qos": slurm.qos,
        "mem": slurm.mem,
        "constraint": slurm.constraint,
    }
    out += [f"--{k}={v}" for k, v in optional.items() if v]
    if slurm.gpus_per_node:
        out.append(f"--gpus-per-node={slurm.gpus_per_node}")
    return out + list(slurm.extra)


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


def write_jobs(folder: Path, jobs: dict) -> None:
    atomic_write_text(folder / JOBS_FILE, json.dumps(jobs, indent=1))


@dataclass
class Plan:
    """What `submit` will do: scripts to write and submit, in order."""

    run_dir: Path
    coordinator: str | None  # script text, None when slurm.coordinator is HOST:PORT
    arrays: list[tuple[list[int], str]]  # (cities of this chunk, script text)


def plan_run(cfg: Config, run_dir: Path, max_array: int) -> Plan:
    slurm = slurm_config(cfg)
    topo = cfg.topology
    slurm.check(topo.ranks_per_city)
    python = sys.executable
    common = {"RUN_DIR": str(run_dir), "PYTHON": python, "CROSSCITY": f"{python} -m launch.cli"}
    coordinator = None
    if slurm.coordinator == "job":
        coordinator = render(
            [
                "--job-name=crosscity-coordinator",
                "--nodes=1",
                "--ntasks=1",
                "--cpus-per-task=1",
                f"--time={slurm.time_min}",
                f"--output={run_dir}/logs/slurm/coordinator-%j.out",
                *[
                    f"--{k}={v}"
                    for k, v in {
                        "partition": slurm.partition,
                        "account": slurm.account,
                        "qos": slurm.qos,
                    }.items()
                    if v
                ],
            ],
            common,
            template_body("coordinator.sbatch"),
            f"rendezvous store of run {run_dir}",
        )
    arrays = []
    for cities in chunks(range(topo.cities), max_array):
        directives = [
            f"--job-name=crosscity-{run_dir.name}",
            f"--array=0-{len(cities) - 1}",
            *resource_directives(slurm, topo.ranks_per_city),
            f"--signal={cfg.train.requeue_signal}@{slurm.signal_lead_s}",
            "--requeue",
            "--open-mode=append",
            f"--output={run_dir}/logs/slurm/city-%A_%a.out",
        ]
        variables = {
            **common,
            "CONFIG": str(run_dir / "config.yaml"),
            "OVERRIDES": "",
            "COORDINATOR": "file" if slurm.coordinator == "job" else slurm.coordinator,
            "NUM_CITIES": str(topo.cities),
            "CROSSCITY_ARRAY_OFFSET": str(cities[0]),
            "LAUNCHER": "srun",
        }
        text = render(
            directives,
            variables,
            template_body("city.sbatch"),
            f"cities {cities[0]}..{cities[-1]} of {run_dir}",
        )
        arrays.append((cities, text))
    return Plan(run_dir, coordinator, arrays)


def submit_plan(plan: Plan, ranks_per_city: int) -> dict:
    """Write the scripts into RUN_DIR/slurm/, submit them, record the job ids in jobs.json."""
    folder = plan.run_dir / "slurm"
    (plan.run_dir / "logs" / "slurm").mkdir(parents=True, exist_ok=True)
    (plan.run_dir / "coordinator.json").unlink(missing_ok=True)
    jobs: dict = {"kind": "run", "coordinator": None, "arrays": [], "entries": []}
    after: list[str] = []
    if plan.coordinator is not None:
        atomic_write_text(folder / "coordinator.sbatch", plan.coordinator)
        jobs["coordinator"] = sbatch(folder / "coordinator.sbatch")
        after = [f"--dependency=after:{jobs['coordinator']}"]
    for i, (cities, text) in enumerate(plan.arrays):
        path = folder / f"cities-{i}.sbatch"
        atomic_write_text(path, text)
        array = sbatch(path, *after)
        jobs["arrays"].append(array)
        for task, city in enumerate(cities):
            jobs["entries"].append(
                {
                    "name": f"city{city}",
                    "job": f"{array}_{task}",
                    "run_dir": str(plan.run_dir),
                    "ranks": [city * ranks_per_city + r for r in range(ranks_per_city)],
                    "log": str(plan.run_dir / "logs" / "slurm" / f"city-{array}_{task}.out"),
                }
            )
        write_jobs(plan.run_dir, jobs)  # after every array, so a failure later still leaves a record
    return jobs


def main(argv: list[str]) -> int:
    """Submit the cities of a run to Slurm and return at once."""
    p = argparse.ArgumentParser(
        prog="crosscity submit",
        description="Submit the cities of a run as one Slurm job array (plus a small coordinator job that "
        "hosts the rendezvous store). Per-city resources come from the config's slurm: section.",
        epilog="examples:\n  crosscity submit configs/beijing_mlp.yaml topology.cities=2 --dry-run\n"
        "  crosscity submit configs/beijing_mlp.yaml train.run_dir=runs/exp1\n  crosscity status runs/exp1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML run config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument(
        "--dry-run", action="store_true", help="print the generated sbatch scripts; submit nothing"
    )
    args = p.parse_intermixed_args(argv)
    try:
        if args.dry_run:
            cfg = load_config(args.config, args.overrides)
            plan = plan_run(cfg, Path(cfg.train.run_dir).resolve(), max_array_size())
            for name, text in [
                ("coordinator.sbatch", plan.coordinator),
                *[(f"cities-{i}.sbatch", t) for i, (_, t) in enumerate(plan.arrays)],
            ]:
                if text is not None:
                    print(f"# ===== {plan.run_dir}/slurm/{name}\n{text}")
            return 0
        cfg, run_dir = resolve_run(args.config, args.overrides)
        plan = plan_run(cfg, run_dir, max_array_size())
        jobs = submit_plan(plan, cfg.topology.ranks_per_city)
    except ConfigError as exc:
        print(f"crosscity submit: config error: {exc}", file=sys.stderr)
        return 2
    except SubmitError as exc:
        print(f"crosscity submit: {exc}", file=sys.stderr)
        return 1
    coord = f"coordinator job {jobs['coordinator']}, " if jobs["coordinator"] else ""
    print(
        f"[submit] {coord}city arrays {', '.join(jobs['arrays'])}: {len(jobs['entries'])} cities; "
        f"follow with: crosscity status {plan.run_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


__all__ = ["SlurmConfig", "Plan", "plan_run", "submit_plan", "main", "max_array_size", "chunks", "sbatch"]
