"""Submit a run from Python through submitit: the same jobs as `crosscity submit`, as submitit Jobs.

    from crosscity.launch.slurm.submitit_jobs import submit_run
    run = submit_run("configs/beijing_mlp.yaml", ["topology.cities=2", "train.run_dir=runs/exp1"])
    run.cities[1].job_id          # one submitit Job per city; returns at once
    # crosscity status runs/exp1  # reads RUN_DIR/slurm/jobs.json, written here as by `crosscity submit`

Same coordinator, same arrays (grouped by slurm.per_city resources, split past MaxArraySize), same
#SBATCH options (launch/slurm/plan.py builds both). srun starts `run_city_rank` once per rank; the city
travels in the task's pickle, and the rank runs `crosscity train RUN_DIR` like the sbatch template.

Preemption: Slurm sends train.requeue_signal (our --signal replaces submitit's USR2). submitit's own
handler for it would checkpoint a Checkpointable from rank 0 alone at any instant and requeue; here it
is replaced: the job exports SUBMITIT_PREEMPT_SIGNAL=<the same signal> and the trainer installs its
handler after submitit's, so every rank of the preempted city checkpoints at one agreed step. Its
ranks exit EXIT_REQUEUE (no result pickle), and the batch script's teardown requeues only that array
task with slurm/city.sbatch's own requeue lines; the other cities train on. The city's rendezvous file
comes from the same template (its `### city:` lines); jobs.json records each task's submission script
and pickle, with which the coordinator job resubmits a task Slurm will not requeue. submitit's
SIGTERM bypass stays: a preemption's SIGTERM does not kill the ranks before the requeue signal;
`scancel` still ends them after KillWait.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit

from crosscity.config import Config
from crosscity.core.exit_codes import EXIT_REQUEUE
from crosscity.launch.slurm.plan import (
    CityArray,
    SubmitError,
    city_arrays,
    city_directives,
    coordinator_directives,
    max_array_size,
    new_record,
    record_array,
    resolve_submission,
    template_body,
    template_section,
    template_variables,
)

COORDINATOR_WAIT_S = 300


# ---------------------------------------------------------------- what runs on the nodes


def run_city_rank(run_dir: str, city: int, num_cities: int, coordinator: str) -> int:
    """One rank of one city (srun starts it once per task): set the topology, run the rank as
    `crosscity train RUN_DIR` would."""
    os.environ.update(CROSSCITY_CITY=str(city), CROSSCITY_NUM_CITIES=str(num_cities))
    if coordinator == "job":
        os.environ.pop("MASTER_ADDR", None)
        os.environ.pop("MASTER_PORT", None)
        address = Path(run_dir) / "coordinator.json"
        deadline = time.monotonic() + COORDINATOR_WAIT_S
        while not address.is_file():
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {address} after {COORDINATOR_WAIT_S} s: is the coordinator running?")
            time.sleep(0.5)
    else:
        host, port = coordinator.rsplit(":", 1)
        os.environ.update(MASTER_ADDR=host, MASTER_PORT=port)
    if os.environ.get("SLURM_PROCID") == "0":
        print(
            f"[crosscity] city {city} of {num_cities}: {os.environ.get('SLURM_NTASKS')} ranks on "
            f"{os.environ.get('SLURM_JOB_NODELIST')} (restart {os.environ.get('SLURM_RESTART_COUNT', 0)})",
            flush=True,
        )
    from crosscity.train.trainer import run_rank  # this runs on the node: the rank itself imports torch

    code = run_rank(Path(run_dir))
    if code == EXIT_REQUEUE:
        sys.exit(code)  # no result pickle: the run is not over; the teardown requeues this task
    if code != 0:
        raise RuntimeError(f"city {city}: crosscity train {run_dir} exited with {code}")
    return code


def run_coordinator(run_dir: str, body: str) -> None:
    """The coordinator job: the body of slurm/coordinator.sbatch (pickled, so nodes need no templates)."""
    env = {**os.environ, **template_variables(Path(run_dir))}
    code = subprocess.run(["bash", "-c", body], env=env).returncode
    if code != 0:
        raise RuntimeError(f"coordinator of {run_dir} exited with {code}")


# ---------------------------------------------------------------- parameters


def _as_parameters(directives: list[str]) -> dict[str, Any]:
    """`--ntasks-per-node=2`, `--exclusive` -> {"ntasks_per_node": "2", "exclusive": True} for submitit."""
    out: dict[str, Any] = {}
    for d in directives:
        if not d.startswith("--"):
            raise SubmitError(f"sbatch option {d!r}: --via submitit takes only --name[=value] options")
        name, sep, value = d[2:].partition("=")
        out[name.replace("-", "_")] = value if sep else True
    return out


def coordinator_parameters(cfg: Config, arrays: list[CityArray]) -> dict[str, Any]:
    return {
        "job_name": "crosscity-coordinator",
        "time": max(a.slurm.time_min for a in arrays),
        "stderr_to_stdout": True,
        "additional_parameters": _as_parameters(coordinator_directives(cfg, arrays)),
    }


def city_parameters(cfg: Config, run_dir: Path, array: CityArray) -> dict[str, Any]:
    """SlurmExecutor.update_parameters of one array: the sbatch path's options, every city at once."""
    slurm = array.slurm
    return {
        "job_name": f"crosscity-{run_dir.name}",
        # submitit counts a job's tasks (its result pickles) from these two
        "nodes": slurm.nodes,
        "ntasks_per_node": slurm.tasks_per_node_for(cfg.topology.ranks_per_city),
        "time": slurm.time_min,
        "array_parallelism": len(array.cities),  # the cities of a run train together
        "stderr_to_stdout": True,
        # slurm/city.sbatch's requeue piece before srun, and its call after: one teardown for both paths
        "setup": [
            f"export SUBMITIT_PREEMPT_SIGNAL={cfg.train.requeue_signal} EXIT_REQUEUE={EXIT_REQUEUE}",
            f"RUN_DIR={shlex.quote(str(run_dir))} CROSSCITY_ARRAY_CITIES={','.join(map(str, array.cities))}",
            *template_section("city.sbatch", "requeue"),
            *template_section("city.sbatch", "city"),  # the city's rendezvous file for this start
        ],
        "teardown": ["requeue_or_exit $?"],
        "additional_parameters": _as_parameters(city_directives(cfg, array)),
    }


def _job_args(cfg: Config, run_dir: Path, array: CityArray) -> list[list[Any]]:
    """map_array's argument lists: one entry per array task."""
    n = len(array.cities)
    return [[str(run_dir)] * n, array.cities, [cfg.topology.cities] * n, [cfg.slurm.coordinator] * n]


# ---------------------------------------------------------------- submit


@dataclass
class RunJobs:
    """What submit_run submitted; `record` is what it wrote to RUN_DIR/slurm/jobs.json."""

    run_dir: Path
    coordinator: submitit.Job | None
    cities: list[submitit.Job]  # index = city
    record: dict


def _executor(folder: Path, parameters: dict[str, Any]) -> submitit.SlurmExecutor:
    executor = submitit.SlurmExecutor(folder=folder, python=shlex.quote(sys.executable))
    executor.update_parameters(**parameters)
    return executor


def submit_run(
    config: str | Path, overrides: Sequence[str] = (), *, folder: str | Path | None = None
) -> RunJobs:
    """Resolve the config into its run folder, submit coordinator and city arrays, return at once.

    `folder` holds submitit's pickles and logs [RUN_DIR/submitit]; a fresh one per run, as Slurm
    job ids restart at 1 on a cold controller and a reused folder could return a stale result.
    """
    cfg, run_dir = resolve_submission(config, overrides)
    folder = Path(folder) if folder is not None else run_dir / "submitit"
    arrays = city_arrays(cfg, max_array_size())
    record = new_record(run_dir)
    cities: dict[int, submitit.Job] = {}
    coordinator = None
    try:
        if cfg.slurm.coordinator == "job":
            executor = _executor(folder, coordinator_parameters(cfg, arrays))
            body = template_body("coordinator.sbatch")
            coordinator = executor.submit(run_coordinator, str(run_dir), body)
            record["coordinator"] = coordinator.job_id
        after = {"dependency": f"after:{coordinator.job_id}"} if coordinator else {}
        for array in arrays:
            executor = _executor(folder, {**city_parameters(cfg, run_dir, array), **after})
            jobs = executor.map_array(run_city_rank, *_job_args(cfg, run_dir, array))
            cities.update(zip(array.cities, jobs, strict=True))
            tasks = [(job.job_id, job.paths.stdout) for job in jobs]
            array_id = jobs[0].job_id.split("_")[0]
            pickles = [job.paths.submitted_pickle for job in jobs]
            script = jobs[0].paths.submission_file
            ranks = cfg.topology.ranks_per_city
            record_array(record, run_dir, array_id, array.cities, ranks, tasks, script, pickles)
    except RuntimeError as exc:  # what submitit raises: no srun here, sbatch refused a job
        raise SubmitError(f"submitit: {exc}") from None
    return RunJobs(run_dir, coordinator, [cities[c] for c in sorted(cities)], record)


def describe_run(cfg: Config, run_dir: Path, max_array: int) -> str:
    """`--dry-run --via submitit`: each job's executor parameters and the sbatch text submitit makes."""
    # submitit renders its scripts in a private function; it needs no cluster, so a dry run works anywhere
    from submitit.slurm.slurm import _make_sbatch_string

    folder = run_dir / "submitit"
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    arrays = city_arrays(cfg, max_array)
    jobs = [(f"cities {','.join(map(str, a.cities))}", city_parameters(cfg, run_dir, a), a) for a in arrays]
    if cfg.slurm.coordinator == "job":
        jobs.insert(0, ("coordinator", coordinator_parameters(cfg, arrays), None))
    out = []
    for what, params, array in jobs:
        count = len(array.cities) if array and len(array.cities) > 1 else None  # map_array of 1 = one job
        text = _make_sbatch_string(command=command, folder=folder, map_count=count, **params)
        out.append(
            f"# ===== submitit: {what} of {run_dir}\n"
            f"# SlurmExecutor(folder={str(folder)!r}).update_parameters(**{json.dumps(params)})\n{text}\n"
        )
    return "".join(out)


__all__ = ["RunJobs", "submit_run", "describe_run", "run_city_rank", "run_coordinator"]
