"""crosscity submit / status against the real dev cluster, and the scripts it generates."""

from __future__ import annotations

import configparser
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from crosscity.launch.slurm.status import format_rows
from crosscity.launch.slurm.submit import TEMPLATE_DIRS, plan_run, resource_directives, write_jobs
from crosscity.launch.slurm.submitit_jobs import EXIT_REQUEUE, describe_run
from crosscity.train import trainer
from crosscity.train.distributed.topology import TopologyError
from crosscity.train.distributed.topology_env import detect_topology

from crosscity.config.schema import ConfigError, SlurmConfig, load_config
from tests.test_env_topology import require_mpiexec
from tests.test_slurm_cluster import DEV_CLUSTER, REPO, max_array_size, require_slurm, sbatch, wait_finished

CONFIG = REPO / "configs" / "beijing_mlp.yaml"
QUICK = [
    "model.hidden=32",
    "train.eval_every=0",
    "train.max_val_windows=200",
    "train.log_every=1",
    "optim.name=sgd",
]


def requeue_run_overrides(small_dataset: Path) -> list[str]:
    """2 cities x 2 ranks, long enough that a requeue signal lands mid-run even on an idle machine."""
    return [
        f"data.dir={small_dataset}",
        "data.cities=north,east",
        "topology.cities=2",
        "topology.ranks_per_city=2",
        "train.steps=300",
        "wan.sync_every=4",
        *QUICK,
    ]


def crosscity(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "crosscity", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_plan_splits_cities_past_max_array_and_fills_resources(tmp_path: Path) -> None:
    cfg = load_config(CONFIG, ["topology.cities=5", "topology.ranks_per_city=2", "train.requeue_signal=HUP"])
    plan = plan_run(cfg, tmp_path, max_array=3)
    assert [cities for cities, _ in plan.arrays] == [[0, 1, 2], [3, 4]]
    first, second = (text for _, text in plan.arrays)
    assert "#SBATCH --array=0-2\n" in first and "#SBATCH --array=0-1\n" in second
    assert "export CROSSCITY_ARRAY_CITIES=3,4\n" in second and "export NUM_CITIES=5\n" in second
    assert "#SBATCH --signal=HUP@120\n" in first and "#SBATCH --ntasks-per-node=2\n" in first
    assert "scontrol requeue" in first  # the shared body of slurm/city.sbatch
    assert "crosscity coordinator" not in first and plan.coordinator is not None


def test_resources_of_each_city() -> None:
    slurm = SlurmConfig(
        partition="gpu",
        account="proj",
        qos="high",
        time_min=120,
        nodes=2,
        gpus_per_node=4,
        cpus_per_task=8,
        mem="64G",
        constraint="a100",
        extra=["--exclusive"],
    )
    slurm.check(ranks_per_city=8)
    lines = resource_directives(slurm, ranks_per_city=8)
    for want in (
        "--nodes=2",
        "--ntasks-per-node=4",
        "--cpus-per-task=8",
        "--time=120",
        "--partition=gpu",
        "--account=proj",
        "--qos=high",
        "--mem=64G",
        "--constraint=a100",
        "--gpus-per-node=4",
        "--exclusive",
    ):
        assert want in lines
    with pytest.raises(
        ConfigError, match="slurm.nodes=3 x slurm.tasks_per_node=0: must equal topology.ranks_per_city=8"
    ):
        SlurmConfig(nodes=3).check(ranks_per_city=8)
    with pytest.raises(ConfigError, match="slurm.time_min=0: must be >= 1"):
        SlurmConfig(time_min=0).check(ranks_per_city=1)
    with pytest.raises(ConfigError, match="slurm.signal_lead_s=120: must be shorter than slurm.time_min=1"):
        SlurmConfig(time_min=1).check(ranks_per_city=1)


# Six named cities: b and d share a memory limit, city 5 (by index) wants a GPU partition.
PER_CITY = [
    "topology.cities=6",
    "topology.ranks_per_city=2",
    "data.cities=a,b,c,d,e,f",
    "slurm.per_city={b: {mem: 1G}, d: {mem: 1G}, 5: {partition: gpu, gpus_per_node: 1, nodes: 2}}",
]


def _exported(script: str, name: str) -> str:
    return next(line.split("=", 1)[1] for line in script.splitlines() if line.startswith(f"export {name}="))


def test_per_city_resources_group_cities_into_arrays_with_an_exact_city_mapping(tmp_path: Path) -> None:
    cfg = load_config(CONFIG, PER_CITY)
    plan = plan_run(cfg, tmp_path, max_array=2)
    # identical resources share an array (split at MaxArraySize), in order of each group's first city
    assert [cities for cities, _ in plan.arrays] == [[0, 2], [4], [1, 3], [5]]
    scripts = dict((tuple(c), text) for c, text in plan.arrays)
    assert "--mem" not in scripts[(0, 2)] and "--partition" not in scripts[(0, 2)]
    assert "#SBATCH --mem=1G\n" in scripts[(1, 3)] and "#SBATCH --array=0-1\n" in scripts[(1, 3)]
    gpu = scripts[(5,)]
    assert "#SBATCH --partition=gpu\n" in gpu and "#SBATCH --gpus-per-node=1\n" in gpu
    assert "#SBATCH --nodes=2\n" in gpu and "#SBATCH --ntasks-per-node=1\n" in gpu
    for cities, text in plan.arrays:
        listed = _exported(text, "CROSSCITY_ARRAY_CITIES")
        for task, city in enumerate(cities):
            env = {
                "SLURM_ARRAY_TASK_ID": str(task),
                "CROSSCITY_ARRAY_CITIES": listed,
                "CROSSCITY_NUM_CITIES": _exported(text, "NUM_CITIES"),
                "SLURM_PROCID": "1",
                "SLURM_NTASKS": "2",
            }
            topo = detect_topology(env)
            assert (topo.city, topo.num_cities, topo.local_rank, topo.ranks_per_city) == (city, 6, 1, 2)


def test_submitit_dry_run_shows_the_same_arrays_and_options(tmp_path: Path) -> None:
    text = describe_run(load_config(CONFIG, PER_CITY), tmp_path, max_array=2)
    blocks = dict(b.split("\n", 1) for b in text.split("# ===== submitit: ")[1:])
    assert list(blocks) == [
        f"{w} of {tmp_path}" for w in ("coordinator", "cities 0,2", "cities 4", "cities 1,3", "cities 5")
    ]
    mem = blocks[f"cities 1,3 of {tmp_path}"]
    assert "#SBATCH --array=0-1%2\n" in mem and "#SBATCH --mem=1G\n" in mem
    assert "#SBATCH --signal=USR2@120\n" in mem and "#SBATCH --requeue\n" in mem
    assert "export SUBMITIT_PREEMPT_SIGNAL=USR2\n" in mem and 'scontrol requeue "$task"' in mem
    gpu = blocks[f"cities 5 of {tmp_path}"]  # one city: a plain job, not an array
    assert "--array" not in gpu and "#SBATCH --partition=gpu\n" in gpu and "#SBATCH --nodes=2\n" in gpu
    assert "--mem" not in blocks[f"cities 0,2 of {tmp_path}"]
    assert EXIT_REQUEUE == trainer.EXIT_REQUEUE


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "slurm.per_city={x: {mem: 1G}}",
            "slurm.per_city: unknown city 'x': allowed a, b, c, d, e, f, 0, 1, 2",
        ),
        ("slurm.per_city={6: {mem: 1G}}", "slurm.per_city: unknown city '6'"),
        (
            "slurm.per_city={b: {memory: 1G}}",
            "unknown key 'slurm.per_city.b.memory': allowed partition, account",
        ),
        ("slurm.per_city={b: {coordinator: job}}", "unknown key 'slurm.per_city.b.coordinator'"),
        (
            "slurm.per_city={b: {nodes: 4}}",
            "slurm.per_city.b (city 1): slurm.nodes=4 x slurm.tasks_per_node=0: must equal "
            "topology.ranks_per_city=2",
        ),
        (
            "slurm.per_city={1: {cpus_per_task: many}}",
            "slurm.per_city.1.cpus_per_task='many': expected an integer",
        ),
        ("slurm.per_city={b: {mem: 1G}, 1: {mem: 2G}}", "slurm.per_city: 'b' and '1' both name city 1"),
        ("slurm.per_city={b: 4G}", "slurm.per_city.b='4G': expected a mapping of field: value"),
        ("slurm.per_city=4G", "slurm.per_city='4G': expected a mapping"),
    ],
)
def test_per_city_config_errors_name_the_key_and_what_is_allowed(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(
            CONFIG, ["topology.cities=6", "topology.ranks_per_city=2", "data.cities=a,b,c,d,e,f", override]
        )


def test_array_city_list_errors() -> None:
    env = {
        "SLURM_ARRAY_TASK_ID": "2",
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
        "CROSSCITY_ARRAY_CITIES": "4,7",
    }
    with pytest.raises(
        TopologyError, match="SLURM_ARRAY_TASK_ID=2: CROSSCITY_ARRAY_CITIES='4,7' lists 2 cities"
    ):
        detect_topology(env)
    with pytest.raises(TopologyError, match="expected comma-separated city indexes"):
        detect_topology({**env, "CROSSCITY_ARRAY_CITIES": "4;7"})


def test_a_wheel_installs_every_template() -> None:
    """setup.cfg's data_files must list every slurm/*.sbatch: an installed package has no checkout."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    listed = parser["options.data_files"]["share/crosscity/slurm"].split()
    assert sorted(listed) == sorted(f"slurm/{p.name}" for p in (REPO / "slurm").glob("*.sbatch"))
    assert TEMPLATE_DIRS[0] == REPO / "slurm" and TEMPLATE_DIRS[1].parts[-3:] == (
        "share",
        "crosscity",
        "slurm",
    )


@pytest.mark.slurm
def test_dry_run_prints_scripts_and_submits_nothing(tmp_path: Path) -> None:
    require_slurm()
    n = max_array_size() + 2
    run_dir = tmp_path / "dry"
    before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    done = crosscity("submit", str(CONFIG), f"topology.cities={n}", f"train.run_dir={run_dir}", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("#!/bin/bash") == 3  # coordinator + two array chunks
    assert (
        f"#SBATCH --array=0-{max_array_size() - 1}\n" in done.stdout
        and "#SBATCH --array=0-1\n" in done.stdout
    )
    via = crosscity(
        "submit",
        str(CONFIG),
        f"topology.cities={n}",
        f"train.run_dir={run_dir}",
        "--dry-run",
        "--via",
        "submitit",
    )
    assert via.returncode == 0, via.stderr
    assert via.stdout.count("#!/bin/bash") == 3 and "update_parameters(" in via.stdout
    size = max_array_size()
    assert f"#SBATCH --array=0-{size - 1}%{size}\n" in via.stdout and "#SBATCH --array=0-1%2\n" in via.stdout
    assert not run_dir.exists()
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout == before


@pytest.mark.slurm
def test_cancelled_job_shows_as_cancelled_within_30s_without_accounting(tmp_path: Path) -> None:
    require_slurm()
    switch = subprocess.run(
        [str(DEV_CLUSTER), "accounting", "off"], capture_output=True, text=True, timeout=60
    )
    assert switch.returncode == 0, switch.stdout + switch.stderr
    try:
        assert subprocess.run(["sacct", "-n", "-X"], capture_output=True, timeout=10).returncode != 0
        job = sbatch("--wrap", "sleep 300", "-o", str(tmp_path / "job.out"), cwd=tmp_path)
        entry = {
            "name": "city0",
            "job": job,
            "run_dir": str(tmp_path),
            "ranks": [0],
            "log": str(tmp_path / "job.out"),
        }
        write_jobs(tmp_path, {"kind": "run", "arrays": [job], "entries": [entry]})
        subprocess.run(["scancel", job], check=True, timeout=10)
        start = time.monotonic()
        while True:
            done = crosscity("status", str(tmp_path), "--json", timeout=30)
            rows = json.loads(done.stdout)
            if rows[0]["state"] == "CANCELLED":
                break
            assert time.monotonic() - start < 30, rows
            time.sleep(0.5)
        assert done.returncode == 1  # a city that did not complete
        assert time.monotonic() - start < 30
    finally:
        subprocess.run([str(DEV_CLUSTER), "accounting", "on"], capture_output=True, timeout=60, check=True)


def test_status_table_format() -> None:
    rows = [
        {
            "name": "city0",
            "job": "5_0",
            "state": "RUNNING",
            "exit": "",
            "restarts": 1,
            "step": 40,
            "last_line": "[rank 0] step 40",
        }
    ]
    text = format_rows(rows)
    assert text.splitlines()[0].split() == ["name", "job", "state", "exit", "restarts", "step", "last_line"]
    assert "city0  5_0  RUNNING" in text and text.endswith("[rank 0] step 40")


# ---------------------------------------------------------------- with the trainer


def final_params(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "final" / "model.pt", weights_only=False)["model"]


def submit_and_wait(run_dir: Path, overrides: list[str], timeout_s: float = 90) -> dict:
    done = crosscity("submit", str(CONFIG), *overrides, f"train.run_dir={run_dir}")
    assert done.returncode == 0, done.stderr
    jobs = json.loads((run_dir / "slurm" / "jobs.json").read_text())
    states = wait_finished([e["job"] for e in jobs["entries"]], timeout_s=timeout_s)
    logs = "\n".join(Path(e["log"]).read_text()[-1500:] for e in jobs["entries"] if Path(e["log"]).exists())
    assert {s.state for s in states.values()} == {"COMPLETED"}, logs
    return jobs


@pytest.mark.slurm
@pytest.mark.parametrize(
    ("template", "extra"),
    [
        ("city.sbatch", ""),
        ("city-mpi.sbatch", " lan.backend=gloo"),
    ],  # Horovod is optional: MPI start, gloo LAN
)
def test_city_template_trains_one_city_of_two_tasks(
    small_dataset: Path, tmp_path: Path, template: str, extra: str
) -> None:
    require_slurm()
    if template == "city-mpi.sbatch":
        require_mpiexec()
    run_dir = tmp_path / "city"
    overrides = f"data.dir={small_dataset} data.cities=north train.steps=8 {' '.join(QUICK)}{extra}"
    env = f"ALL,CONFIG={CONFIG},RUN_DIR={run_dir},OVERRIDES={overrides},PYTHON={sys.executable}"
    out = tmp_path / "city.out"
    job = sbatch(
        "-N2",
        "--ntasks-per-node=1",
        f"--export={env}",
        "-o",
        str(out),
        str(REPO / "slurm" / template),
        cwd=REPO,
    )
    state = wait_finished([job], timeout_s=90)[job]
    assert state.state == "COMPLETED", out.read_text()[-3000:]
    assert (run_dir / "summary.json").is_file() and (run_dir / "final" / "model.pt").is_file()
    assert {p.name for p in (run_dir / "metrics").glob("rank*.jsonl")} == {"rank0.jsonl", "rank1.jsonl"}


@pytest.mark.slurm
def test_submit_two_cities_of_two_tasks(small_dataset: Path, tmp_path: Path) -> None:
    require_slurm()
    run_dir = tmp_path / "run"
    common = [
        f"data.dir={small_dataset}",
        "data.cities=north,east",
        "topology.cities=2",
        "topology.ranks_per_city=2",
    ]
    jobs = submit_and_wait(run_dir, [*common, "train.steps=8", *QUICK])
    assert [e["name"] for e in jobs["entries"]] == ["city0", "city1"]
    ranks = {
        json.loads(line)["global_rank"]
        for p in (run_dir / "metrics").glob("rank*.jsonl")
        for line in p.read_text().splitlines()
    }
    assert ranks == {0, 1, 2, 3}
    cities = {
        json.loads(line)["city"]
        for p in (run_dir / "metrics").glob("rank*.jsonl")
        for line in p.read_text().splitlines()
    }
    assert cities == {0, 1}
    assert wait_finished([jobs["coordinator"]], timeout_s=30)[jobs["coordinator"]].state == "COMPLETED"


@pytest.mark.slurm
def test_requeue_signal_requeues_only_that_city_and_resumes_exactly(
    small_dataset: Path, tmp_path: Path
) -> None:
    """Two identical runs side by side; one gets the requeue signal in city 1: same final parameters."""
    require_slurm()
    common = requeue_run_overrides(small_dataset)
    ref, run_dir = tmp_path / "ref", tmp_path / "pre"
    for folder in (ref, run_dir):
        done = crosscity("submit", str(CONFIG), *common, f"train.run_dir={folder}")
        assert done.returncode == 0, done.stderr
    jobs = json.loads((run_dir / "slurm" / "jobs.json").read_text())
    ref_jobs = json.loads((ref / "slurm" / "jobs.json").read_text())
    city0, city1 = (e["job"] for e in jobs["entries"])
    metrics = run_dir / "metrics" / "rank2.jsonl"  # city 1, local rank 0
    deadline = time.monotonic() + 90
    while not (metrics.exists() and '"step": 6,' in metrics.read_text()):
        assert time.monotonic() < deadline, "city 1 never reached step 6"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR2", city1], check=True, timeout=10)  # what --signal=USR2@T sends
    states = wait_finished([e["job"] for e in jobs["entries"] + ref_jobs["entries"]], timeout_s=120)
    assert {s.state for s in states.values()} == {"COMPLETED"}, states
    assert states[city1].restarts == 1 and states[city0].restarts == 0
    assert f"requeueing {city1} only" in Path(jobs["entries"][1]["log"]).read_text()
    want, got = final_params(ref), final_params(run_dir)
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
