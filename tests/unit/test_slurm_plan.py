"""The submission plan without a cluster: arrays, per-city resources, generated scripts, status table."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pytest

from crosscity.config import ConfigError, load_config
from crosscity.core.exit_codes import EXIT_REQUEUE
from crosscity.launch.slurm.plan import BODY_MARK, TEMPLATE_DIRS, resource_directives, template_section
from crosscity.launch.slurm.status import format_rows
from crosscity.launch.slurm.submit import plan_run
from crosscity.launch.slurm.submitit_jobs import describe_run
from crosscity.train import trainer
from crosscity.train.distributed.topology import TopologyError
from crosscity.train.distributed.topology_env import detect_topology
from tests.helpers.runs import CONFIG
from tests.helpers.slurm import REPO


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
    cfg = load_config(
        CONFIG,
        [
            "topology.ranks_per_city=8",
            *("slurm.partition=gpu", "slurm.account=proj", "slurm.qos=high", "slurm.time_min=120"),
            *("slurm.nodes=2", "slurm.gpus_per_node=4", "slurm.cpus_per_task=8", "slurm.mem=64G"),
            *("slurm.constraint=a100", "slurm.extra=--exclusive"),
        ],
    )
    lines = resource_directives(cfg.slurm, ranks_per_city=8)
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
    assert (
        "export SUBMITIT_PREEMPT_SIGNAL=USR2 EXIT_REQUEUE=75\n" in mem and 'scontrol requeue "$task"' in mem
    )
    script = mem.split("\n#!/bin/bash\n", 1)[1]  # after the parameters comment: the job script itself
    assert (
        script.index("\nrequeue_or_exit() {") < script.index("\nsrun ") < script.index("\nrequeue_or_exit $?")
    )
    gpu = blocks[f"cities 5 of {tmp_path}"]  # one city: a plain job, not an array
    assert "--array" not in gpu and "#SBATCH --partition=gpu\n" in gpu and "#SBATCH --nodes=2\n" in gpu
    assert "--mem" not in blocks[f"cities 0,2 of {tmp_path}"]


def test_templates_and_generated_scripts_take_exit_requeue_from_one_place(tmp_path: Path) -> None:
    """crosscity.core.exit_codes is the only definition: the template's default equals it, generated
    scripts export it, the ranks return it, and submitit's teardown is the template's own piece."""
    city = (REPO / "slurm" / "city.sbatch").read_text()
    assert re.findall(r"^EXIT_REQUEUE=\$\{EXIT_REQUEUE:-(\d+)\}$", city, re.M) == [str(EXIT_REQUEUE)]
    assert trainer.EXIT_REQUEUE is EXIT_REQUEUE
    plan = plan_run(load_config(CONFIG), tmp_path, max_array=10)
    for text in [plan.coordinator, *(t for _, t in plan.arrays)]:
        assert f"export EXIT_REQUEUE={EXIT_REQUEUE}\n" in text
    (_, script), *_ = plan.arrays
    assert script.count("scontrol requeue") == 1 and "requeue_or_exit $?" in script
    assert not re.search(r"\b75\b", city.split(BODY_MARK)[1]), "the body reads $EXIT_REQUEUE, never a literal"
    assert template_section("city.sbatch", "requeue")[-1].strip() == "}"  # requeue_or_exit, complete


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
