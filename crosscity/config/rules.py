"""Every rule a run config must satisfy beyond its types: each named, all checked at load, here only.

A rule reads the whole config and returns None, or the one line that says what is wrong and what is
allowed; `check` raises the first such line as ConfigError(rule=name). Nothing is imported to check
a rule: what the host offers (CUDA, Horovod) is the launcher's preflight (crosscity/launch/preflight.py),
what the data holds is the data check before training. Rules marked `slurm` hold only for a run
submitted to Slurm (`load_config(..., slurm=True)`): there the config is all a login node can check.
"""

from __future__ import annotations

import math
import re
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from crosscity.config.errors import ConfigError
from crosscity.config.sections import WORLD_ALGORITHMS, Config, SlurmConfig, field_types, per_city_index
from crosscity.core.yaml_load import safe_load_unique

Check = Callable[[Config], str | None]


@dataclass(frozen=True)
class Rule:
    name: str
    keys: tuple[str, ...]  # the fields it reads (a test asserts every field is covered)
    check: Check
    slurm: bool = False  # only for a Slurm submission


RULES: dict[str, Rule] = {}


def rule(name: str, *keys: str, slurm: bool = False) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        assert name not in RULES, f"rule {name} registered twice"
        RULES[name] = Rule(name, keys, fn, slurm)
        return fn

    return register


def check(cfg: Config, *, slurm: bool = False) -> None:
    """Run every rule in order (a rule may rely on the ones before it); raise the first failure."""
    for r in RULES.values():
        if r.slurm and not slurm:
            continue
        message = r.check(cfg)
        if message:
            raise ConfigError(message, rule=r.name)


def value(cfg: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def fields_of_type(tp: type) -> tuple[str, ...]:
    """Dotted keys of every field whose type is `tp` (float, list, ...), in section order."""
    return tuple(
        f"{section}.{name}"
        for section, cls in field_types(Config).items()
        for name, hint in field_types(cls).items()
        if hint is tp or typing.get_origin(hint) is tp
    )


FLOATS, LISTS = fields_of_type(float), fields_of_type(list)


# Fields whose type alone says what is allowed (a choice, a flag): no rule of their own.
TYPE_ONLY = (
    "data.verify",
    "data.stats",
    "model.kind",
    "optim.name",
    "optim.schedule",
    "lan.grad_dtype",
    "wan.algorithm",
    "wan.nesterov",
    "wan.codec",
    "wan.merge",
    "wan.aggregate",
    "wan.catch_up",
    "train.requeue_signal",
    "train.device",
    "train.final_model",
    "train.fork_server",
    "monitor.tensorboard",
)


# ---------------------------------------------------------------- single values


@dataclass(frozen=True)
class Bound:
    """An interval of allowed numbers, printed the way the error message says it."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def allows(self, x: float) -> bool:
        above = x > self.low if self.low_open else x >= self.low
        below = x < self.high if self.high_open else x <= self.high
        return above and below

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {_num(self.low)}"
        closed = not (self.low_open or self.high_open)
        if closed and float(self.low).is_integer() and self.high - self.low > 1:  # a range of integers
            return f"{_num(self.low)}..{_num(self.high)}"
        left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
        return f"{left}{_num(self.low)}, {_num(self.high)}{right}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


AT_LEAST_0, AT_LEAST_1, POSITIVE = Bound(0), Bound(1), Bound(0, low_open=True)
FRACTION = Bound(0, 1, high_open=True)
# Every number of every section but slurm (whose resources are checked per city, below).
BOUNDS = {
    "data.past_hours": AT_LEAST_1,
    "data.horizon_hours": Bound(1, 24),
    "data.batch_size": AT_LEAST_1,
    "data.num_workers": AT_LEAST_0,
    "data.max_missing": Bound(0, 1),
    "data.fill_hours": Bound(-1),  # -1 = the schema's gap_fill_hours
    "model.hidden": AT_LEAST_1,
    "model.layers": AT_LEAST_1,
    "model.dropout": FRACTION,
    "optim.lr": POSITIVE,
    "optim.momentum": FRACTION,
    "optim.weight_decay": AT_LEAST_0,
    "optim.grad_clip": AT_LEAST_0,
    "optim.warmup_steps": AT_LEAST_0,
    "optim.min_lr_ratio": Bound(0, 1),
    "wan.sync_every": AT_LEAST_1,
    "wan.outer_lr": Bound(0, 10, low_open=True),
    "wan.outer_momentum": FRACTION,
    "wan.outer_beta1": FRACTION,
    "wan.outer_beta2": FRACTION,
    "wan.outer_eps": POSITIVE,
    "wan.fragments": AT_LEAST_1,
    "wan.overlap_steps": AT_LEAST_0,
    "wan.warmup_steps": AT_LEAST_0,
    "wan.torch_intra_every": AT_LEAST_0,
    "wan.min_cities": AT_LEAST_1,  # at most topology.cities (min_cities_within_topology)
    "wan.round_timeout_s": POSITIVE,
    "wan.heartbeat_s": POSITIVE,
    "wan.dead_after_s": POSITIVE,
    "wan.start_timeout_s": POSITIVE,
    "wan.min_rate_mbit": POSITIVE,
    "wan.trim": AT_LEAST_1,
    "wan.clip_factor": AT_LEAST_0,  # 0 = off, else > 1 (clip_factor_above_one)
    "wan.prox_mu": AT_LEAST_0,
    "lan.timeout_s": POSITIVE,
    "topology.cities": AT_LEAST_1,
    "topology.ranks_per_city": AT_LEAST_1,
    "train.steps": AT_LEAST_1,
    "train.seed": Bound(0, 2**32 - 1),  # numpy's seed range
    "train.eval_every": AT_LEAST_0,
    "train.log_every": AT_LEAST_1,
    "train.checkpoint_every": AT_LEAST_0,
    "train.max_val_windows": AT_LEAST_0,
    "train.max_city_restarts": AT_LEAST_0,
    "train.patience": AT_LEAST_0,
    "train.min_delta": AT_LEAST_0,
    "monitor.gpu_interval_s": AT_LEAST_0,
    "monitor.straggler_factor": Bound(1, low_open=True),
    "monitor.straggler_steps": AT_LEAST_1,
    "monitor.prometheus_port": Bound(0, 65535),
}
SLURM_BOUNDS = {
    "time_min": AT_LEAST_1,
    "nodes": AT_LEAST_1,
    "tasks_per_node": AT_LEAST_0,  # 0 = topology.ranks_per_city / nodes
    "gpus_per_node": AT_LEAST_0,
    "cpus_per_task": AT_LEAST_1,
    "signal_lead_s": AT_LEAST_0,
}


@rule("finite_numbers", *FLOATS)
def _finite(cfg: Config) -> str | None:
    for key in FLOATS:
        if not math.isfinite(value(cfg, key)):
            return f"{key}={value(cfg, key)}: must be a finite number"
    return None


@rule("value_ranges", *BOUNDS)
def _ranges(cfg: Config) -> str | None:
    for key, bound in BOUNDS.items():
        if not bound.allows(value(cfg, key)):
            return f"{key}={value(cfg, key)}: allowed {bound}"
    return None


NON_EMPTY = ("data.dir", "data.target", "train.run_dir", "monitor.prometheus_host")


@rule("non_empty_strings", *NON_EMPTY)
def _non_empty(cfg: Config) -> str | None:
    for key in NON_EMPTY:
        if not str(value(cfg, key)).strip():
            return f"{key}={value(cfg, key)!r}: must not be empty"
    return None


def _lists(cfg: Config) -> Iterator[tuple[str, list[Any]]]:
    for key in LISTS:
        yield key, value(cfg, key)
    for city, entry in cfg.slurm.per_city.items():
        yield from ((f"slurm.per_city.{city}.{k}", v) for k, v in entry.items() if isinstance(v, list))


@rule("no_duplicates", *LISTS)
def _no_duplicates(cfg: Config) -> str | None:
    for key, items in _lists(cfg):
        twice = sorted({str(x) for x in items if items.count(x) > 1})
        if twice:
            return f"{key}={','.join(map(str, items))}: lists {', '.join(twice)} more than once"
    return None


@rule("city_folder_names", "data.cities")
def _city_names(cfg: Config) -> str | None:
    for name in cfg.data.cities:
        if "/" in name or name.strip() in ("", ".", ".."):
            return f"data.cities: {name!r} is not a folder name under data.dir"
    return None


# ---------------------------------------------------------------- cross-key


@rule("cities_match_topology", "data.cities", "topology.cities")
def _cities_match(cfg: Config) -> str | None:
    if cfg.data.cities and len(cfg.data.cities) != cfg.topology.cities:
        return f"data.cities lists {len(cfg.data.cities)} cities but topology.cities={cfg.topology.cities}"
    return None


@rule("warmup_within_steps", "wan.warmup_steps", "train.steps")
def _warmup(cfg: Config) -> str | None:
    if cfg.wan.warmup_steps > cfg.train.steps:
        return f"wan.warmup_steps={cfg.wan.warmup_steps}: must not exceed train.steps={cfg.train.steps}"
    return None


@rule("momentum_needs_sgd", "optim.momentum", "optim.name")
def _momentum(cfg: Config) -> str | None:
    if cfg.optim.momentum and cfg.optim.name != "sgd":
        return (
            f"optim.momentum={cfg.optim.momentum}: only optim.name=sgd has momentum "
            f"(optim.name={cfg.optim.name!r} would ignore it)"
        )
    return None


@rule("horovod_without_bf16", "lan.backend", "lan.grad_dtype")
def _horovod_bf16(cfg: Config) -> str | None:
    if cfg.lan.backend == "horovod" and cfg.lan.grad_dtype == "bf16":
        return (
            "lan.grad_dtype='bf16': Horovod's PyTorch ops have no bfloat16 (lan.backend='horovod'); "
            "use lan.grad_dtype=fp16 or fp32"
        )
    return None


@rule("horovod_not_flat", "lan.backend", "wan.algorithm")
def _horovod_flat(cfg: Config) -> str | None:
    if cfg.lan.backend == "horovod" and cfg.wan.algorithm == "flat":
        return (
            "lan.backend='horovod' with wan.algorithm='flat': Horovod runs one world per city and "
            "flat sums over all cities; use lan.backend=gloo (or nccl) for flat (docs/horovod.md)"
        )
    return None


@rule("nccl_needs_cuda_device", "lan.backend", "train.device")
def _nccl_device(cfg: Config) -> str | None:
    if cfg.lan.backend == "nccl" and cfg.train.device == "cpu":
        return "lan.backend='nccl' with train.device='cpu': NCCL reduces CUDA tensors only; use gloo on CPU"
    return None


@rule(
    "baselines_take_no_wan_options", "wan.algorithm", "wan.codec", "wan.error_feedback", "wan.optimizer_state"
)
def _baselines(cfg: Config) -> str | None:
    w = cfg.wan
    if w.algorithm not in ("flat", "torch_hierarchical"):
        return None
    ignored = {
        "wan.codec": w.codec != "none",
        "wan.error_feedback": w.error_feedback,
        "wan.optimizer_state": w.optimizer_state != "keep",
    }
    for key, is_set in ignored.items():
        if is_set:
            return (
                f"{key}={value(cfg, key)!r}: wan.algorithm={w.algorithm!r} sends plain fp32 and keeps "
                "each rank's optimizer state; codecs and optimizer-state policies need average, diloco "
                "or streaming"
            )
    return None


@rule("clip_factor_above_one", "wan.clip_factor")
def _clip_factor(cfg: Config) -> str | None:
    if 0 < cfg.wan.clip_factor <= 1:
        return f"wan.clip_factor={cfg.wan.clip_factor}: allowed 0 (off) or > 1 (x the round's median norm)"
    return None


@rule("error_feedback_needs_codec", "wan.error_feedback", "wan.codec")
def _feedback(cfg: Config) -> str | None:
    if cfg.wan.error_feedback and cfg.wan.codec == "none":
        return "wan.error_feedback=true with wan.codec='none': nothing is lost to feed back; pick a codec"
    return None


@rule("streaming_fragments_fit_period", "wan.algorithm", "wan.fragments", "wan.sync_every")
def _fragments(cfg: Config) -> str | None:
    w = cfg.wan
    if w.algorithm == "streaming" and w.fragments > w.sync_every:
        return (
            f"wan.fragments={w.fragments}: must be <= wan.sync_every={w.sync_every} "
            "(each fragment needs its own step in the H-step cycle)"
        )
    return None


@rule("streaming_overlap_fits_period", "wan.algorithm", "wan.overlap_steps", "wan.sync_every")
def _overlap(cfg: Config) -> str | None:
    w = cfg.wan
    if w.algorithm == "streaming" and w.overlap_steps >= w.sync_every:
        return (
            f"wan.overlap_steps={w.overlap_steps}: must be < wan.sync_every={w.sync_every} "
            "(a fragment's exchange must land before its next round)"
        )
    return None


@rule("streaming_keeps_optimizer_state", "wan.algorithm", "wan.optimizer_state")
def _streaming_state(cfg: Config) -> str | None:
    if cfg.wan.algorithm == "streaming" and cfg.wan.optimizer_state != "keep":
        return (
            f"wan.optimizer_state={cfg.wan.optimizer_state!r}: streaming supports only 'keep' "
            "(fragments meet at different steps: there is no one step to average or reset all state at)"
        )
    return None


@rule("torch_intra_every_divides_period", "wan.torch_intra_every", "wan.sync_every")
def _intra(cfg: Config) -> str | None:
    intra, every = cfg.wan.torch_intra_every, cfg.wan.sync_every
    if intra and (intra >= every or every % intra):
        return (
            f"wan.torch_intra_every={intra}: must divide wan.sync_every={every} and be smaller "
            "(torch_hierarchical's intra-city level runs between its inter-city rounds)"
        )
    return None


@rule("fedprox_needs_global_model", "wan.prox_mu", "wan.algorithm")
def _fedprox(cfg: Config) -> str | None:
    if cfg.wan.prox_mu > 0 and cfg.wan.algorithm in WORLD_ALGORITHMS:
        return (
            f"wan.prox_mu={cfg.wan.prox_mu} with wan.algorithm={cfg.wan.algorithm!r}: FedProx needs "
            "a global model held between rounds: average, diloco or streaming"
        )
    return None


@rule("adaptive_outer_needs_outer_step", "wan.outer_optimizer", "wan.algorithm")
def _adaptive_outer(cfg: Config) -> str | None:
    w = cfg.wan
    if w.outer_optimizer != "sgd" and w.algorithm not in ("diloco", "streaming"):
        return (
            f"wan.outer_optimizer={w.outer_optimizer!r} with wan.algorithm={w.algorithm!r}: only diloco and "
            "streaming take an outer optimizer step (average is FedAvg: the cities' mean model); "
            f"FedAdam / FedYogi is wan.algorithm=diloco with wan.outer_optimizer={w.outer_optimizer}"
        )
    return None


@rule("scaffold_needs_whole_model_rounds", "wan.scaffold", "wan.algorithm")
def _scaffold(cfg: Config) -> str | None:
    if cfg.wan.scaffold and cfg.wan.algorithm not in ("average", "diloco"):
        return (
            f"wan.scaffold=true with wan.algorithm={cfg.wan.algorithm!r}: SCAFFOLD's control variates "
            "are refreshed at rounds of the whole model: average or diloco"
        )
    return None


@rule("early_stopping_needs_validation", "train.patience", "train.eval_every")
def _patience_eval(cfg: Config) -> str | None:
    if cfg.train.patience and not cfg.train.eval_every:
        return f"train.patience={cfg.train.patience} needs validation passes: set train.eval_every > 0"
    return None


MODEL_SHAPE = (
    "model.kind",
    "model.hidden",
    "model.layers",
    "data.past_hours",
    "data.horizon_hours",
    "data.target",
)


@rule("init_from_is_a_finished_run_of_this_shape", "train.init_from", *MODEL_SHAPE)
def _init_from(cfg: Config) -> str | None:
    """Checked where the run is started, like security.certs: the source must be there already."""
    if not cfg.train.init_from:
        return None
    source = Path(cfg.train.init_from)
    key = f"train.init_from={source}"
    if not (source / "final" / "model.pt").is_file() or not (source / "config.yaml").is_file():
        return f"{key}: no final/model.pt and config.yaml there (not a finished run directory)"
    try:
        before = safe_load_unique((source / "config.yaml").read_text()) or {}
    except yaml.YAMLError as exc:
        return f"{key}: its config.yaml is not valid YAML ({exc})"
    for dotted in MODEL_SHAPE:
        section, name = dotted.split(".")
        then, now = (before.get(section) or {}).get(name), value(cfg, dotted)
        if then != now:
            return (
                f"{key}: that run has {dotted}={then!r}, this one {now!r}; the model must have the same shape"
            )
    return None


@rule("min_cities_within_topology", "wan.min_cities", "topology.cities")
def _min_cities(cfg: Config) -> str | None:
    if cfg.wan.min_cities > cfg.topology.cities:
        cities = cfg.topology.cities
        return f"wan.min_cities={cfg.wan.min_cities}: allowed 1..topology.cities={cities}"
    return None


@rule("dead_city_found_before_round_gives_up", "wan.heartbeat_s", "wan.dead_after_s", "wan.round_timeout_s")
def _liveness(cfg: Config) -> str | None:
    w = cfg.wan
    if not w.heartbeat_s < w.dead_after_s < w.round_timeout_s:
        return (
            f"wan.heartbeat_s={w.heartbeat_s} < wan.dead_after_s={w.dead_after_s} < "
            f"wan.round_timeout_s={w.round_timeout_s} must hold (docs/fault_tolerance.md: a dead city "
            "is recognised before a round gives up waiting for it)"
        )
    return None


@rule("prometheus_ports_fit", "monitor.prometheus_port", "topology.cities", "topology.ranks_per_city")
def _ports(cfg: Config) -> str | None:
    port, world = cfg.monitor.prometheus_port, cfg.topology.cities * cfg.topology.ranks_per_city
    if port and port + world - 1 > 65535:
        return f"monitor.prometheus_port={port}: rank G serves port+G, so it must be <= {65536 - world}"
    return None


# ---------------------------------------------------------------- Slurm resources


@rule("slurm_coordinator_address", "slurm.coordinator")
def _coordinator(cfg: Config) -> str | None:
    found = re.fullmatch(r"[\w.-]+:(\d+)", cfg.slurm.coordinator)
    if cfg.slurm.coordinator != "job" and not (found and 0 < int(found.group(1)) <= 65535):
        return f"slurm.coordinator={cfg.slurm.coordinator!r}: allowed 'job' or HOST:PORT (port 1..65535)"
    return None


@rule("slurm_per_city_names", "slurm.per_city", "data.cities", "topology.cities")
def _per_city_names(cfg: Config) -> str | None:
    names, cities = cfg.data.cities, cfg.topology.cities
    seen: dict[int, str] = {}
    for key in cfg.slurm.per_city:
        city = per_city_index(key, names, cities)
        if city is None:
            allowed = ", ".join([*names, *map(str, range(cities))])
            return f"slurm.per_city: unknown city {key!r}: allowed {allowed}"
        if city in seen:
            return f"slurm.per_city: {seen[city]!r} and {key!r} both name city {city}"
        seen[city] = key
    return None


def _resources(cfg: Config) -> Iterator[tuple[str, SlurmConfig]]:
    """The shared resources, then each city that has a slurm.per_city entry (with its prefix)."""
    yield "", cfg.slurm
    resolved = cfg.slurm.for_cities(cfg.topology.cities, cfg.data.cities)
    for key in cfg.slurm.per_city:
        city = per_city_index(key, cfg.data.cities, cfg.topology.cities)
        assert city is not None  # slurm_per_city_names ran first
        yield f"slurm.per_city.{key} (city {city}): ", resolved[city]


def resource_rule(name: str, *fields: str, slurm: bool = False) -> Callable[[Callable], Check]:
    """A rule about one city's resources: run on the shared slurm section and on every per-city entry."""

    def register(fn: Callable[[SlurmConfig, Config], str | None]) -> Check:
        def each_city(cfg: Config) -> str | None:
            for prefix, res in _resources(cfg):
                message = fn(res, cfg)
                if message:
                    return prefix + message
            return None

        return rule(name, *(f"slurm.{f}" for f in fields), slurm=slurm)(each_city)

    return register


@resource_rule("slurm_counts", *SLURM_BOUNDS)
def _slurm_counts(res: SlurmConfig, cfg: Config) -> str | None:
    for name, bound in SLURM_BOUNDS.items():
        if not bound.allows(getattr(res, name)):
            return f"slurm.{name}={getattr(res, name)}: allowed {bound}"
    return None


@resource_rule("slurm_tasks_fill_city", "nodes", "tasks_per_node")
def _tasks(res: SlurmConfig, cfg: Config) -> str | None:
    ranks = cfg.topology.ranks_per_city
    if res.tasks_per_node_for(ranks) * res.nodes != ranks:
        return (
            f"slurm.nodes={res.nodes} x slurm.tasks_per_node={res.tasks_per_node}: must equal "
            f"topology.ranks_per_city={ranks}"
        )
    return None


@resource_rule("slurm_signal_before_limit", "signal_lead_s", "time_min")
def _signal(res: SlurmConfig, cfg: Config) -> str | None:
    if res.signal_lead_s >= res.time_min * 60:
        return (
            f"slurm.signal_lead_s={res.signal_lead_s}: must be shorter than "
            f"slurm.time_min={res.time_min} minutes"
        )
    return None


@resource_rule("slurm_names", "partition", "account", "qos", "constraint")
def _names(res: SlurmConfig, cfg: Config) -> str | None:
    for name in ("partition", "account", "qos", "constraint"):
        if re.search(r"\s", getattr(res, name)):
            return f"slurm.{name}={getattr(res, name)!r}: no spaces (it becomes one #SBATCH option)"
    return None


@resource_rule("slurm_mem", "mem")
def _mem(res: SlurmConfig, cfg: Config) -> str | None:
    if res.mem and not re.fullmatch(r"\d+[KMGT]?", res.mem):
        return f"slurm.mem={res.mem!r}: allowed '' (cluster default) or a size such as 16G, 500M, 16000"
    return None


@resource_rule("slurm_extra_options", "extra")
def _extra(res: SlurmConfig, cfg: Config) -> str | None:
    for option in res.extra:
        if not option.startswith("-"):
            return f"slurm.extra: {option!r} is not an sbatch option (e.g. --exclusive)"
    return None


@resource_rule("slurm_gpus_for_cuda", "gpus_per_node", slurm=True)
def _gpus(res: SlurmConfig, cfg: Config) -> str | None:
    needs = [k for k, v in (("train.device", "cuda"), ("lan.backend", "nccl")) if value(cfg, k) == v]
    if needs and res.gpus_per_node < 1:
        return (
            f"{needs[0]}={value(cfg, needs[0])!r} needs GPUs on the compute nodes: "
            "set slurm.gpus_per_node >= 1 (or train.device=cpu, lan.backend=gloo)"
        )
    return None


@rule("baselines_need_insecure", "wan.algorithm", "security.insecure")
def _baselines_insecure(cfg: Config) -> str | None:
    if cfg.wan.algorithm in ("flat", "torch_hierarchical") and not cfg.security.insecure:
        return (
            f"wan.algorithm={cfg.wan.algorithm!r} runs one torch.distributed world over every city: plain "
            "gloo across the WAN, no identities or encryption; allowed only with security.insecure=true "
            "(docs/security.md)"
        )
    return None


@rule("security_certs_is_a_kit", "security.certs")
def _certs_kit(cfg: Config) -> str | None:
    """Checked where the run is started: a kit that is not there fails before anything is scheduled."""
    folder = cfg.security.certs
    if folder and not (Path(folder) / "ca.pem").is_file():
        return (
            f"security.certs={folder!r}: no ca.pem there; make one with `crosscity certs init` (and give "
            "each site its kit with `crosscity certs export`), or leave it empty for a fresh CA for this run"
        )
    return None
