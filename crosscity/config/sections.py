"""The sections of a run config: one dataclass per YAML section, every field with its default.

A field's trailing comment is its meaning in the README's key table (crosscity/config/keys_table.py);
what a value may be is the type here plus the rules in crosscity/config/rules.py.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class DataConfig:
    dir: str = "data/beijing"  # prepared dataset root: one folder per city (crosscity prep)
    cities: list[str] = field(default_factory=list)  # city folders to use; empty = all, sorted
    past_hours: int = 48
    horizon_hours: int = 24
    target: str = "PM2.5"
    batch_size: int = 64  # per rank
    num_workers: int = 0
    verify: Literal["quick", "full", "off"] = "full"  # dataset check before training (full = sha256)
    max_missing: float = 0.25  # drop windows with a larger share of missing input values
    stats: Literal["city", "global"] = "city"  # normalisation: per city, or pooled sufficient statistics
    fill_hours: int = -1  # forward-fill gaps up to this many hours (-1 = the schema's gap_fill_hours)


@dataclass
class ModelConfig:
    kind: Literal["mlp", "gru", "tcn"] = "mlp"  # tcn: causal dilated convolutions over the window
    hidden: int = 128
    layers: int = 2
    dropout: float = 0.0


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "adamw"
    lr: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # 0 = off
    schedule: Literal["constant", "cosine"] = "constant"  # per inner step, after the warm-up
    warmup_steps: int = 0  # linear learning-rate warm-up from lr/warmup_steps to lr
    min_lr_ratio: float = 0.0  # cosine: the floor reached at train.steps, as a fraction of optim.lr


@dataclass
class LanConfig:
    backend: Literal["auto", "gloo", "nccl", "horovod"] = "auto"  # horovod: one Horovod world per city
    grad_dtype: Literal["fp32", "bf16", "fp16"] = "fp32"  # gradient compression on the LAN all-reduce
    timeout_s: float = 120.0  # a city's collective that hangs this long (a stuck rank) fails the city


# The baselines that run one torch.distributed world over every city (plaintext gloo across the WAN,
# all-or-nothing); the other algorithms meet through the coordinator (crosscity.federation).
WORLD_ALGORITHMS = ("flat", "torch_hierarchical")


@dataclass
class WanConfig:
    algorithm: Literal["flat", "average", "diloco", "streaming", "torch_hierarchical"] = "average"
    sync_every: int = 10  # H: inner steps between inter-city rounds
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    nesterov: bool = True
    outer_optimizer: Literal["sgd", "adam", "yogi"] = "sgd"  # diloco, streaming: or FedAdam, FedYogi
    outer_beta1: float = 0.9  # adam, yogi: decay of the pseudo-gradient's mean
    outer_beta2: float = 0.99  # adam, yogi: decay of its second moment
    outer_eps: float = 1e-3  # adam, yogi: tau, the adaptivity (large: like SGD with lr outer_lr/tau)
    codec: Literal["none", "fp16", "bf16", "int8", "int4"] = "none"
    error_feedback: bool = False
    fragments: int = 4  # streaming: parameter fragments synced at staggered steps
    overlap_steps: int = 2  # streaming: tau inner steps a fragment exchange may overlap
    merge: Literal["fixed", "when_ready"] = "fixed"  # streaming: at step start+tau, or once landed (>= tau)
    warmup_steps: int = 0  # synchronous warm-up: average every step for the first W steps
    optimizer_state: Literal["keep", "reset"] = "keep"  # reset: drop the inner optimizer state after a merge
    torch_intra_every: int = 0  # torch_hierarchical only: extra intra-city averaging period (0 = none)
    prox_mu: float = 0.0  # FedProx: + mu/2 ||w - w_global||^2 on the inner loss (average, diloco, streaming)
    scaffold: bool = False  # SCAFFOLD: each inner gradient + (c - c_city), control variates (average, diloco)
    min_cities: int = 1  # a round commits with at least this many cities (wait-after-minimum)
    round_timeout_s: float = 20.0  # a forming round waits this long for the cities still missing
    heartbeat_s: float = 1.0  # each city tells the coordinator it is alive this often
    dead_after_s: float = 5.0  # ... and is not waited for once silent this long (< round_timeout_s)
    catch_up: bool = True  # a city over 3 rounds behind the others (restarted, frozen) heals and skips ahead
    start_timeout_s: float = 300.0  # the first round waits this long for every city to register
    min_rate_mbit: float = 10.0  # slowest city link to tolerate: sets how long a round's uploads may take
    aggregate: Literal["mean", "trimmed_mean", "median"] = (
        "mean"  # Byzantine-robust options at the coordinator
    )
    trim: int = 1  # trimmed_mean: cities dropped from each end, per coordinate
    clip_factor: float = (
        10.0  # an update with a norm above this x the round's median is scaled down (0 = off)
    )


@dataclass
class SecurityConfig:
    """Who may talk to the coordinator (docs/security.md)."""

    certs: str = (
        ""  # TLS identities: an operator dir or this site's exported kit ("" = a fresh CA for the run)
    )
    insecure: bool = False  # plaintext between cities and coordinator: only for the world-spanning baselines


@dataclass
class TopologyConfig:
    cities: int = 4
    ranks_per_city: int = 2


@dataclass
class TrainConfig:
    steps: int = 300
    seed: int = 0
    eval_every: int = 100  # steps between validation passes (0 = only at the end)
    log_every: int = 10
    checkpoint_every: int = 0  # steps between periodic checkpoints (0 = only on signal/end)
    requeue_signal: Literal["USR2", "HUP", "TERM", "URG"] = "USR2"  # never USR1: NCCL owns it
    run_dir: str = "runs/latest"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_val_windows: int = 0  # cap validation windows per city (0 = all), for quick runs
    max_city_restarts: int = 10  # local launcher: restarts of a failed city before the run gives up on it
    fork_server: bool = True  # local launcher: fork each city's ranks from one process that imported torch
    final_model: Literal["best", "last"] = "best"  # final/model.pt: lowest pooled val RMSE, or the last
    patience: int = 0  # early stopping: validation passes without improvement of the pooled RMSE (0 = off)
    min_delta: float = 0.0  # ug/m3 the pooled val RMSE must drop by to count as an improvement
    init_from: str = ""  # RUN_DIR of a finished run: start from its final model (docs/model_quality.md)


@dataclass
class MonitorConfig:
    gpu_interval_s: float = 5.0  # NVML / host sampling period (0 = off)
    straggler_factor: float = 2.0  # warn when a rank's step time > factor x city median ...
    straggler_steps: int = 20  # ... for this many consecutive steps
    tensorboard: bool = False
    prometheus_port: int = 0  # 0 = off
    prometheus_host: str = "127.0.0.1"  # address the exporter binds; 0.0.0.0 exposes it on every interface


# What slurm.per_city may set for one city: the resources of one array task (not the coordinator).
PER_CITY_FIELDS = (
    "partition",
    "account",
    "qos",
    "time_min",
    "nodes",
    "tasks_per_node",
    "gpus_per_node",
    "cpus_per_task",
    "mem",
    "constraint",
    "signal_lead_s",
    "extra",
)


@dataclass
class SlurmConfig:
    """Resources of EACH city (one Slurm array task); read by `crosscity submit` and `crosscity sweep`."""

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
    per_city: dict[str, dict[str, Any]] = field(default_factory=dict)  # {city name or index: {field: value}}

    def tasks_per_node_for(self, ranks_per_city: int) -> int:
        return self.tasks_per_node or max(1, ranks_per_city // self.nodes)

    def for_cities(self, cities: int, names: Sequence[str] = ()) -> list[SlurmConfig]:
        """Every city's resources: its slurm.per_city entry over the shared fields (checked at load)."""
        entries = {per_city_index(key, names, cities): entry for key, entry in self.per_city.items()}
        return [dataclasses.replace(self, per_city={}, **entries.get(city, {})) for city in range(cities)]


def per_city_index(key: str, names: Sequence[str], cities: int) -> int | None:
    """The city a slurm.per_city key names: a data.cities name or an index; None if it names none."""
    if key in names:
        return list(names).index(key)
    if key.isdigit() and int(key) < cities:
        return int(key)
    return None


@dataclass
class Config:
    """A whole run: what `load_config` returns and what RUN_DIR/config.yaml holds."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lan: LanConfig = field(default_factory=LanConfig)
    wan: WanConfig = field(default_factory=WanConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type of a section (of Config: its sections), in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}
