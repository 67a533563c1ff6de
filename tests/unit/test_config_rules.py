"""Every config rule (crosscity/config/rules.py), one or more rows each: the overrides that break it and
the fragment of its one-line message. Each row is refused by load_config naming its rule, and by the
CLI (`crosscity run`, or `crosscity submit` for the Slurm rules) with exit 2, one stderr line and no
run folder (a few also through real processes: tests/cli/test_config_rules.py)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import NamedTuple

import pytest

from crosscity.config import Config, ConfigError, load_config
from crosscity.config.rules import RULES, TYPE_ONLY
from crosscity.launch.cli import main as crosscity_main
from tests.helpers.runs import CONFIG

# CONFIG (configs/beijing_mlp.yaml): 4 cities x 2 ranks, diloco, sync_every 20, 1000 steps, adamw.


class Row(NamedTuple):
    rule: str
    overrides: list[str]
    message: str


ROWS = [
    Row("finite_numbers", ["optim.lr=.inf"], "optim.lr=inf: must be a finite number"),
    Row("finite_numbers", ["model.dropout=nan"], "model.dropout=nan: must be a finite number"),
    Row(
        "finite_numbers",
        ["monitor.straggler_factor=-.inf"],
        "monitor.straggler_factor=-inf: must be a finite",
    ),
    Row("value_ranges", ["train.steps=0"], "train.steps=0: allowed >= 1"),
    Row("value_ranges", ["data.horizon_hours=30"], "data.horizon_hours=30: allowed 1..24"),
    Row("value_ranges", ["optim.lr=0"], "optim.lr=0.0: allowed > 0"),
    Row("value_ranges", ["optim.momentum=1"], "optim.momentum=1.0: allowed [0, 1)"),
    Row("value_ranges", ["data.max_missing=1.5"], "data.max_missing=1.5: allowed [0, 1]"),
    Row("value_ranges", ["wan.outer_lr=0"], "wan.outer_lr=0.0: allowed (0, 10]"),
    Row("value_ranges", ["train.seed=-1"], "train.seed=-1: allowed 0..4294967295"),
    Row("value_ranges", ["data.fill_hours=-2"], "data.fill_hours=-2: allowed >= -1"),
    Row("value_ranges", ["monitor.straggler_factor=1"], "monitor.straggler_factor=1.0: allowed > 1"),
    Row("value_ranges", ["monitor.prometheus_port=70000"], "monitor.prometheus_port=70000: allowed 0..65535"),
    Row("non_empty_strings", ["data.target="], "data.target='': must not be empty"),
    Row("non_empty_strings", ["monitor.prometheus_host="], "monitor.prometheus_host='': must not be empty"),
    Row("value_ranges", ["lan.timeout_s=0"], "lan.timeout_s=0.0: allowed > 0"),
    Row("value_ranges", ["train.max_city_restarts=-1"], "train.max_city_restarts=-1: allowed >= 0"),
    Row(
        "no_duplicates",
        ["data.cities=north,north", "topology.cities=2"],
        "data.cities=north,north: lists north more than once",
    ),
    Row(
        "no_duplicates", ["slurm.extra=--exclusive,--exclusive"], "slurm.extra=--exclusive,--exclusive: lists"
    ),
    Row("city_folder_names", ["data.cities=a/b,c,d,e"], "data.cities: 'a/b' is not a folder name"),
    Row(
        "cities_match_topology",
        ["data.cities=north,east"],
        "data.cities lists 2 cities but topology.cities=4",
    ),
    Row("warmup_within_steps", ["wan.warmup_steps=2000"], "must not exceed train.steps=1000"),
    Row("momentum_needs_sgd", ["optim.momentum=0.9"], "optim.momentum=0.9: only optim.name=sgd has momentum"),
    Row(
        "horovod_without_bf16",
        ["lan.backend=horovod", "lan.grad_dtype=bf16"],
        "lan.grad_dtype='bf16': Horovod's PyTorch ops have no bfloat16",
    ),
    Row(
        "horovod_not_flat",
        ["lan.backend=horovod", "wan.algorithm=flat"],
        "lan.backend='horovod' with wan.algorithm='flat': Horovod runs one world per city",
    ),
    Row(
        "nccl_needs_cuda_device",
        ["lan.backend=nccl", "train.device=cpu"],
        "lan.backend='nccl' with train.device='cpu': NCCL reduces CUDA tensors only",
    ),
    Row(
        "baselines_take_no_wan_options",
        ["wan.algorithm=torch_hierarchical", "wan.codec=int8"],
        "wan.codec='int8': wan.algorithm='torch_hierarchical' sends plain fp32",
    ),
    Row(
        "baselines_take_no_wan_options",
        ["wan.algorithm=flat", "wan.optimizer_state=reset"],
        "wan.optimizer_state='reset': wan.algorithm='flat' sends plain fp32",
    ),
    Row(
        "baselines_need_insecure",
        ["wan.algorithm=flat"],
        "wan.algorithm='flat' runs one torch.distributed world over every city: plain gloo across the WAN",
    ),
    Row("clip_factor_above_one", ["wan.clip_factor=0.5"], "wan.clip_factor=0.5: allowed 0 (off) or > 1"),
    Row(
        "security_certs_is_a_kit",
        ["security.certs=/nonexistent/kit"],
        "security.certs='/nonexistent/kit': no ca.pem",
    ),
    Row(
        "error_feedback_needs_codec",
        ["wan.error_feedback=true"],
        "wan.error_feedback=true with wan.codec='none': nothing is lost",
    ),
    Row(
        "streaming_fragments_fit_period",
        ["wan.algorithm=streaming", "wan.sync_every=3", "wan.fragments=4", "wan.overlap_steps=1"],
        "wan.fragments=4: must be <= wan.sync_every=3",
    ),
    Row(
        "streaming_overlap_fits_period",
        ["wan.algorithm=streaming", "wan.sync_every=5", "wan.overlap_steps=5"],
        "wan.overlap_steps=5: must be < wan.sync_every=5",
    ),
    Row(
        "streaming_keeps_optimizer_state",
        ["wan.algorithm=streaming", "wan.optimizer_state=reset"],
        "wan.optimizer_state='reset': streaming supports only 'keep'",
    ),
    Row(
        "torch_intra_every_divides_period",
        ["wan.algorithm=torch_hierarchical", "security.insecure=true", "wan.torch_intra_every=20"],
        "wan.torch_intra_every=20: must divide wan.sync_every=20 and be smaller",
    ),
    Row(
        "torch_intra_every_divides_period",
        ["wan.algorithm=torch_hierarchical", "security.insecure=true", "wan.torch_intra_every=3"],
        "wan.torch_intra_every=3: must divide wan.sync_every=20",
    ),
    Row("value_ranges", ["optim.min_lr_ratio=1.5"], "optim.min_lr_ratio=1.5: allowed [0, 1]"),
    Row("value_ranges", ["wan.prox_mu=-1"], "wan.prox_mu=-1.0: allowed >= 0"),
    Row(
        "fedprox_needs_global_model",
        ["wan.algorithm=flat", "security.insecure=true", "wan.prox_mu=0.1"],
        "wan.prox_mu=0.1 with wan.algorithm='flat': FedProx needs a global model held between rounds",
    ),
    Row("value_ranges", ["wan.outer_beta2=1"], "wan.outer_beta2=1.0: allowed [0, 1)"),
    Row("value_ranges", ["wan.outer_eps=0"], "wan.outer_eps=0.0: allowed > 0"),
    Row(
        "adaptive_outer_needs_outer_step",
        ["wan.algorithm=average", "wan.outer_optimizer=adam"],
        "wan.outer_optimizer='adam' with wan.algorithm='average': only diloco and streaming",
    ),
    Row(
        "scaffold_needs_whole_model_rounds",
        ["wan.algorithm=streaming", "wan.fragments=2", "wan.scaffold=true"],
        "wan.scaffold=true with wan.algorithm='streaming': SCAFFOLD's control variates",
    ),
    Row(
        "early_stopping_needs_validation",
        ["train.patience=3", "train.eval_every=0"],
        "train.patience=3 needs validation passes: set train.eval_every > 0",
    ),
    Row(
        "init_from_is_a_finished_run_of_this_shape",
        ["train.init_from=/nonexistent/run"],
        "train.init_from=/nonexistent/run: no final/model.pt and config.yaml there",
    ),
    Row("min_cities_within_topology", ["wan.min_cities=5"], "wan.min_cities=5: allowed 1..topology.cities=4"),
    Row(
        "dead_city_found_before_round_gives_up",
        ["wan.heartbeat_s=6"],
        "wan.heartbeat_s=6.0 < wan.dead_after_s=5.0 < wan.round_timeout_s=20.0 must hold",
    ),
    Row("prometheus_ports_fit", ["monitor.prometheus_port=65530"], "monitor.prometheus_port=65530: rank G"),
    Row("slurm_coordinator_address", ["slurm.coordinator=elsewhere"], "allowed 'job' or HOST:PORT"),
    Row("slurm_coordinator_address", ["slurm.coordinator=h:0"], "slurm.coordinator='h:0': allowed 'job'"),
    Row(
        "slurm_per_city_names", ["slurm.per_city.x.mem=1G"], "slurm.per_city: unknown city 'x': allowed 0, 1"
    ),
    Row("slurm_counts", ["slurm.nodes=0"], "slurm.nodes=0: allowed >= 1"),
    Row(
        "slurm_counts",
        ["slurm.per_city.1.cpus_per_task=0"],
        "slurm.per_city.1 (city 1): slurm.cpus_per_task=0: allowed >= 1",
    ),
    Row("slurm_tasks_fill_city", ["slurm.nodes=3"], "slurm.nodes=3 x slurm.tasks_per_node=0: must equal"),
    Row("slurm_signal_before_limit", ["slurm.time_min=1"], "slurm.signal_lead_s=120: must be shorter than"),
    Row("slurm_names", ["slurm.partition=gpu a100"], "slurm.partition='gpu a100': no spaces"),
    Row("slurm_mem", ["slurm.mem=lots"], "slurm.mem='lots': allowed '' (cluster default) or a size"),
    Row("slurm_extra_options", ["slurm.extra=exclusive"], "slurm.extra: 'exclusive' is not an sbatch option"),
    Row("slurm_gpus_for_cuda", ["train.device=cuda"], "train.device='cuda' needs GPUs on the compute nodes"),
    Row(
        "slurm_gpus_for_cuda",
        ["lan.backend=nccl", "slurm.per_city.2.gpus_per_node=0", "slurm.gpus_per_node=1"],
        "slurm.per_city.2 (city 2): lan.backend='nccl' needs GPUs on the compute nodes",
    ),
]
IDS = [f"{r.rule}:{' '.join(r.overrides)}" for r in ROWS]


def test_every_rule_has_a_row_and_every_field_a_rule() -> None:
    assert {r.rule for r in ROWS} == set(RULES), "add a row for every rule (and only for rules)"
    covered = {key for r in RULES.values() for key in r.keys} | set(TYPE_ONLY)
    fields = {
        f"{s.name}.{f.name}"
        for s in dataclasses.fields(Config)
        for f in dataclasses.fields(typing.get_type_hints(Config)[s.name])
    }
    assert fields - covered == set(), "decide a rule for these fields (or list them in TYPE_ONLY)"
    assert load_config(CONFIG, slurm=True) == load_config(CONFIG)  # the examples break no rule


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_rule_refuses_at_load(row: Row) -> None:
    slurm = RULES[row.rule].slurm
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG, row.overrides, slurm=slurm)
    assert info.value.rule == row.rule and row.message in str(info.value)
    if slurm:  # a local run does not need the compute nodes' GPUs
        load_config(CONFIG, row.overrides)


@pytest.mark.parametrize("row", ROWS, ids=IDS)
def test_rule_is_one_line_exit_2_before_anything_starts(
    row: Row, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """In-process `crosscity run` (or `submit`): exit 2, one stderr line, no run folder, nothing submitted."""
    command = "submit" if RULES[row.rule].slurm else "run"
    run_dir = tmp_path / "run"
    assert crosscity_main([command, str(CONFIG), *row.overrides, f"train.run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and row.message in err and err.startswith(f"crosscity {command}: config error:")
    )
    assert not run_dir.exists()
