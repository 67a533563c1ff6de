"""One typed config for a run: YAML file + dotted `key=value` overrides, validated at load.

Every field has a default, so a YAML file only names what it changes. An unknown key or a bad
value raises ConfigError naming the key and what is allowed; the CLI turns that into one line and
exit code 2.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config key or value is not allowed."""


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

    def check(self, wan_algorithm: str) -> None:
        """Horovod is an optional build without bfloat16, one world per city: say so at load time,
        not in every rank's log."""
        if self.backend != "horovod":
            return
        if self.grad_dtype == "bf16":
            raise ConfigError(
                "lan.grad_dtype='bf16': Horovod's PyTorch ops have no bfloat16 (lan.backend='horovod'); "
                "use lan.grad_dtype=fp16 or fp32"
            )
        if wan_algorithm == "flat":
            raise ConfigError(
                "lan.backend='horovod' with wan.algorithm='flat': Horovod runs one world per city and "
                "flat sums over all cities; use lan.backend=gloo (or nccl) for flat (docs/horovod.md)"
            )
        try:
            import horovod.torch  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"lan.backend='horovod': horovod is not importable ({exc}); build it into the venv with "
                "`bash .ci/build-horovod.sh` (Horovod 0.28.1 with torch >= 2.1, see docs/horovod.md)"
            ) from None


@dataclass
class WanConfig:
    algorithm: Literal["flat", "average", "diloco", "streaming", "torch_hierarchical"] = "average"
    sync_every: int = 10  # H: inner steps between inter-city rounds
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    nesterov: bool = True
    codec: Literal["none", "fp16", "bf16", "int8", "int4"] = "none"
    error_feedback: bool = False
    fragments: int = 4  # streaming: parameter fragments synced at staggered steps
    overlap_steps: int = 2  # streaming: tau inner steps a fragment exchange may overlap
    merge: Literal["fixed", "when_ready"] = "fixed"  # streaming: at step start+tau, or once landed (>= tau)
    warmup_steps: int = 0  # synchronous warm-up: average every step for the first W steps
    optimizer_state: Literal["keep", "average", "reset"] = "keep"
    torch_intra_every: int = 0  # torch_hierarchical only: extra intra-city averaging period (0 = none)
    prox_mu: float = 0.0  # FedProx: + mu/2 ||w - w_round||^2 on the inner loss (average, diloco, streaming)


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
    final_model: Literal["best", "last"] = "best"  # final/model.pt: lowest pooled val RMSE, or the last
    patience: int = 0  # early stopping: evaluations without improvement before stopping (0 = off)
    min_delta: float = 0.0  # ug/m3 the pooled val RMSE must drop by to count as an improvement
    init_from: str = ""  # RUN_DIR of a finished run: start from its final model (docs/model_quality.md)


@dataclass
class MonitorConfig:
    gpu_interval_s: float = 5.0  # NVML / host sampling period (0 = off)
    straggler_factor: float = 2.0  # warn when a rank's step time > factor x city median ...
    straggler_steps: int = 20  # ... for this many consecutive steps
    tensorboard: bool = False
    prometheus_port: int = 0  # 0 = off


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

    def check(self, ranks_per_city: int, cities: int = 1, names: list[str] | tuple[str, ...] = ()) -> None:
        """The shared resources, then every city's resolved ones (so a bad per_city entry fails at load)."""
        self._check_resources(ranks_per_city)
        if self.coordinator != "job" and not re.match(r"^[\w.-]+:\d+$", self.coordinator):
            raise ConfigError(f"slurm.coordinator={self.coordinator!r}: allowed 'job' or HOST:PORT")
        self.for_cities(ranks_per_city, cities, names)

    def _check_resources(self, ranks_per_city: int) -> None:
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

    def tasks_per_node_for(self, ranks_per_city: int) -> int:
        return self.tasks_per_node or max(1, ranks_per_city // self.nodes)

    def for_cities(
        self, ranks_per_city: int, cities: int, names: list[str] | tuple[str, ...] = ()
    ) -> list[SlurmConfig]:
        """The resolved, checked resources of every city: its slurm.per_city entry over the shared fields."""
        allowed = [*names, *map(str, range(cities))]
        by_city: dict[int, str] = {}
        for key in self.per_city:
            if key in names:
                city = list(names).index(key)
            elif key.isdigit() and int(key) < cities:
                city = int(key)
            else:
                raise ConfigError(f"slurm.per_city: unknown city {key!r}: allowed {', '.join(allowed)}")
            if city in by_city:
                raise ConfigError(f"slurm.per_city: {by_city[city]!r} and {key!r} both name city {city}")
            by_city[city] = key
        hints = typing.get_type_hints(SlurmConfig)
        out = []
        for city in range(cities):
            key = by_city.get(city)
            if key is None:
                out.append(dataclasses.replace(self, per_city={}))
                continue
            entry = self.per_city[key]
            if not isinstance(entry, dict):
                raise ConfigError(f"slurm.per_city.{key}={entry!r}: expected a mapping of field: value")
            values = {}
            for name, value in entry.items():
                if name not in PER_CITY_FIELDS:
                    raise ConfigError(
                        f"unknown key 'slurm.per_city.{key}.{name}': allowed {', '.join(PER_CITY_FIELDS)}"
                    )
                values[name] = _coerce(f"slurm.per_city.{key}.{name}", value, hints[name])
            resolved = dataclasses.replace(self, per_city={}, **values)
            try:
                resolved._check_resources(ranks_per_city)
            except ConfigError as exc:
                raise ConfigError(f"slurm.per_city.{key} (city {city}): {exc}") from None
            out.append(resolved)
        return out


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lan: LanConfig = field(default_factory=LanConfig)
    wan: WanConfig = field(default_factory=WanConfig)
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def validate(self) -> None:
        """Cross-field rules that a single type cannot express."""
        self.lan.check(self.wan.algorithm)
        self.slurm.check(self.topology.ranks_per_city, self.topology.cities, self.data.cities)
        positive = {
            "data.past_hours": self.data.past_hours,
            "data.horizon_hours": self.data.horizon_hours,
            "data.batch_size": self.data.batch_size,
            "model.hidden": self.model.hidden,
            "model.layers": self.model.layers,
            "wan.sync_every": self.wan.sync_every,
            "wan.fragments": self.wan.fragments,
            "topology.cities": self.topology.cities,
            "topology.ranks_per_city": self.topology.ranks_per_city,
            "train.steps": self.train.steps,
            "train.log_every": self.train.log_every,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"{key}={value}: must be an integer >= 1")
        non_negative = {
            "data.num_workers": self.data.num_workers,
            "wan.warmup_steps": self.wan.warmup_steps,
            "wan.overlap_steps": self.wan.overlap_steps,
            "wan.torch_intra_every": self.wan.torch_intra_every,
            "train.eval_every": self.train.eval_every,
            "train.checkpoint_every": self.train.checkpoint_every,
            "train.max_val_windows": self.train.max_val_windows,
            "optim.lr": self.optim.lr,
            "optim.weight_decay": self.optim.weight_decay,
            "optim.grad_clip": self.optim.grad_clip,
            "optim.warmup_steps": self.optim.warmup_steps,
            "wan.prox_mu": self.wan.prox_mu,
            "train.patience": self.train.patience,
            "train.min_delta": self.train.min_delta,
            "monitor.gpu_interval_s": self.monitor.gpu_interval_s,
        }
        for key, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{key}={value}: must be >= 0")
        if not 0 <= self.data.max_missing <= 1:
            raise ConfigError(f"data.max_missing={self.data.max_missing}: allowed [0, 1]")
        if self.data.fill_hours < -1:
            raise ConfigError(f"data.fill_hours={self.data.fill_hours}: allowed -1 (schema default) or >= 0")
        if not 0 < self.data.horizon_hours <= 24:
            raise ConfigError(f"data.horizon_hours={self.data.horizon_hours}: allowed 1..24")
        if self.monitor.straggler_factor <= 1:
            raise ConfigError(f"monitor.straggler_factor={self.monitor.straggler_factor}: must be > 1")
        if self.monitor.straggler_steps < 1:
            raise ConfigError(f"monitor.straggler_steps={self.monitor.straggler_steps}: must be >= 1")
        if not 0 <= self.monitor.prometheus_port <= 65535:
            raise ConfigError(f"monitor.prometheus_port={self.monitor.prometheus_port}: allowed 0..65535")
        if not 0 <= self.optim.momentum < 1:
            raise ConfigError(f"optim.momentum={self.optim.momentum}: allowed [0, 1)")
        if not 0 <= self.model.dropout < 1:
            raise ConfigError(f"model.dropout={self.model.dropout}: allowed [0, 1)")
        if not 0 < self.wan.outer_lr <= 10:
            raise ConfigError(f"wan.outer_lr={self.wan.outer_lr}: allowed (0, 10]")
        if not 0 <= self.wan.outer_momentum < 1:
            raise ConfigError(f"wan.outer_momentum={self.wan.outer_momentum}: allowed [0, 1)")
        if self.wan.warmup_steps > self.train.steps:
            raise ConfigError(
                f"wan.warmup_steps={self.wan.warmup_steps}: must not exceed train.steps={self.train.steps}"
            )
        if self.wan.algorithm == "streaming" and self.wan.fragments > self.wan.sync_every:
            raise ConfigError(
                f"wan.fragments={self.wan.fragments}: must be <= wan.sync_every={self.wan.sync_every} "
                "(each fragment needs its own step in the H-step cycle)"
            )
        if self.wan.torch_intra_every and self.wan.sync_every % self.wan.torch_intra_every:
            raise ConfigError(
                f"wan.torch_intra_every={self.wan.torch_intra_every}: "
                f"must divide wan.sync_every={self.wan.sync_every}"
            )
        if self.wan.algorithm == "streaming" and self.wan.overlap_steps >= self.wan.sync_every:
            raise ConfigError(
                f"wan.overlap_steps={self.wan.overlap_steps}: must be < wan.sync_every={self.wan.sync_every} "
                "(a fragment's exchange must land before its next round)"
            )
        self._check_quality_keys()
        if self.data.cities and len(self.data.cities) != self.topology.cities:
            raise ConfigError(
                f"data.cities lists {len(self.data.cities)} cities but topology.cities={self.topology.cities}"
            )

    def _check_quality_keys(self) -> None:
        """The recipe keys of docs/model_quality.md: schedule, FedProx, early stopping, init_from."""
        if not 0 <= self.optim.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio={self.optim.min_lr_ratio}: allowed [0, 1]")
        if self.wan.prox_mu > 0 and self.wan.algorithm not in ("average", "diloco", "streaming"):
            raise ConfigError(
                f"wan.prox_mu={self.wan.prox_mu} with wan.algorithm={self.wan.algorithm!r}: FedProx needs "
                "a global model held between rounds: average, diloco or streaming"
            )
        if self.train.patience and not self.train.eval_every:
            raise ConfigError(
                f"train.patience={self.train.patience} needs validation passes: set train.eval_every > 0"
            )
        if self.train.init_from:
            check_init_from(self, Path(self.train.init_from))


def check_init_from(cfg: Config, source: Path) -> None:
    """train.init_from must name a finished run whose model has the shape this config builds."""
    key = f"train.init_from={source}"
    if not (source / "final" / "model.pt").is_file() or not (source / "config.yaml").is_file():
        raise ConfigError(f"{key}: no final/model.pt and config.yaml there (not a finished run directory)")
    try:
        before = yaml.safe_load((source / "config.yaml").read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: its config.yaml is not valid YAML ({exc})") from None
    mine = to_dict(cfg)
    shape = [("model", k) for k in ("kind", "hidden", "layers")]
    shape += [("data", k) for k in ("past_hours", "horizon_hours", "target")]
    for section, name in shape:
        then = (before.get(section) or {}).get(name)
        if then != mine[section][name]:
            raise ConfigError(
                f"{key}: that run has {section}.{name}={then!r}, this one {mine[section][name]!r}; "
                "the model must have the same shape"
            )


# ---------------------------------------------------------------- loading and overrides


def _allowed(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is list:
        return "a list"
    return f"a {getattr(tp, '__name__', tp)}"


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Turn a YAML or command-line value into the field's type, or say what is allowed."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}={value!r}: allowed values are {', '.join(map(str, choices))}")
        return value
    if origin is dict:  # slurm.per_city: its entries are checked by SlurmConfig.for_cities
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping, e.g. {{west: {{mem: 32G}}}}")
        return {str(k): v for k, v in value.items()}
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r}: expected a list (YAML list or comma-separated)")
        (item_tp,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: expected an integer") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: expected a number") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - programming error


def _fields(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def _set(obj: Any, key: str, parts: list[str], value: Any) -> None:
    fields = _fields(obj)
    name = parts[0]
    where = key.rsplit(".", len(parts) - 1)[0] if len(parts) > 1 else key
    if name not in fields:
        prefix = where.rsplit(".", 1)[0] + "." if "." in where else ""
        raise ConfigError(f"unknown key {where!r}: allowed keys are {', '.join(prefix + n for n in fields)}")
    current = getattr(obj, name)
    if dataclasses.is_dataclass(current):
        if len(parts) == 1:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of {', '.join(_fields(current))}")
            for sub, sub_value in value.items():
                _set(current, f"{key}.{sub}", [str(sub)], sub_value)
            return
        _set(current, key, parts[1:], value)
        return
    if isinstance(current, dict) and len(parts) > 1:  # slurm.per_city.east.mem=32G: checked at validate
        entry = current
        for part in parts[1:-1]:
            entry = entry.setdefault(part, {})
            if not isinstance(entry, dict):
                raise ConfigError(f"{key}: {part!r} is {entry!r}, not a mapping")
        entry[parts[-1]] = value
        return
    if len(parts) > 1:
        raise ConfigError(f"unknown key {key!r}: {where!r} is {_allowed(fields[name])}, it has no sub-keys")
    setattr(obj, name, _coerce(key, value, fields[name]))


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", parsed YAML scalar)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key=value, e.g. wan.sync_every=20")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), raw if value is None else value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- overrides, then validate."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        for key, value in data.items():
            _set(cfg, str(key), [str(key)], value)
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, key.split("."), value)
    cfg.validate()
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    from crosscity.core.atomic_io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))


__all__ = ["Config", "ConfigError", "load_config", "save_config", "to_dict", "parse_override"]


def keys_table() -> str:
    """Markdown table of every key, its default and what is allowed (the README's config section)."""
    import inspect

    rows = ["| key | default | allowed / meaning |", "|---|---|---|"]
    for section in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[section.name]
        comments = dict(re.findall(r"^\s+(\w+): .*?#\s*(.*)$", inspect.getsource(cls), re.M))
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            allowed = (
                " \\| ".join(map(str, typing.get_args(tp)))
                if typing.get_origin(tp) is Literal
                else getattr(tp, "__name__", str(tp))
            )
            note = f"; {comments[f.name]}" if f.name in comments else ""
            rows.append(f"| `{section.name}.{f.name}` | `{getattr(cls(), f.name)}` | {allowed}{note} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(keys_table(), end="")
