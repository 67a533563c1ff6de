"""Defaults <- YAML file <- dotted `key=value` overrides, each value coerced to its field's type.

An unknown key or a value of the wrong type raises ConfigError naming the key and what is allowed;
then every rule of crosscity/config/rules.py runs, so a config that loads is a config that can run.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from crosscity.config import rules
from crosscity.config.errors import ConfigError
from crosscity.config.sections import PER_CITY_FIELDS, Config, SlurmConfig, field_types
from crosscity.core.atomic_io import atomic_write_text
from crosscity.core.yaml_load import safe_load_unique


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
    if origin is dict:  # slurm.per_city: its entries are coerced by _per_city once every override is in
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
    if tp in (int, float):
        expected = f"{key}={value!r}: expected {'an integer' if tp is int else 'a number'}"
        if isinstance(value, bool) or (tp is int and isinstance(value, float) and not value.is_integer()):
            raise ConfigError(expected)
        try:
            return tp(value)
        except (TypeError, ValueError):
            raise ConfigError(expected) from None
    if tp is str:
        if isinstance(value, bool):
            raise ConfigError(
                f"{key}={value!r}: expected a string (quote it: YAML reads yes/no/on/off as booleans)"
            )
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover - programming error


def _set(obj: Any, key: str, parts: list[str], value: Any) -> None:
    fields = field_types(type(obj))
    name = parts[0]
    where = key.rsplit(".", len(parts) - 1)[0] if len(parts) > 1 else key
    if name not in fields:
        prefix = where.rsplit(".", 1)[0] + "." if "." in where else ""
        raise ConfigError(f"unknown key {where!r}: allowed keys are {', '.join(prefix + n for n in fields)}")
    current = getattr(obj, name)
    if dataclasses.is_dataclass(current):
        if len(parts) == 1:
            if not isinstance(value, dict):
                raise ConfigError(f"{key}: expected a mapping of {', '.join(field_types(type(current)))}")
            for sub, sub_value in value.items():
                _set(current, f"{key}.{sub}", [str(sub)], sub_value)
            return
        _set(current, key, parts[1:], value)
        return
    if isinstance(current, dict) and len(parts) > 1:  # slurm.per_city.east.mem=32G
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


def _per_city(slurm: SlurmConfig) -> dict[str, dict[str, Any]]:
    """slurm.per_city with every entry's fields known and typed (which city a key names is a rule)."""
    hints = field_types(SlurmConfig)
    out: dict[str, dict[str, Any]] = {}
    for key, entry in slurm.per_city.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"slurm.per_city.{key}={entry!r}: expected a mapping of field: value")
        out[key] = {}
        for name, value in entry.items():
            if name not in PER_CITY_FIELDS:
                raise ConfigError(
                    f"unknown key 'slurm.per_city.{key}.{name}': allowed {', '.join(PER_CITY_FIELDS)}"
                )
            out[key][str(name)] = _coerce(f"slurm.per_city.{key}.{name}", value, hints[name])
    return out


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


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), *, slurm: bool = False
) -> Config:
    """Defaults <- YAML file <- overrides, then every rule; `slurm=True` adds the rules of a Slurm
    submission (the compute nodes' resources must fit the config)."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            data = safe_load_unique(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        for key, value in data.items():
            _set(cfg, str(key), [str(key)], value)
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, key.split("."), value)
    cfg.slurm.per_city = _per_city(cfg.slurm)
    rules.check(cfg, slurm=slurm)
    return cfg


def to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config (every key) atomically: what every rank and later tool reads."""
    atomic_write_text(Path(path), yaml.safe_dump(to_dict(cfg), sort_keys=False))
