"""Errors of the data layer. Each message names the file (and line, key or shard) and what is allowed."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class DataPrepError(Exception):
    """Base class: the CLI prints the message as one line."""


class SchemaError(DataPrepError):
    """A schema or cities file is malformed (names file, key, value and what is allowed)."""

    @classmethod
    def at(cls, path: Path, key: str, value: Any, allowed: str) -> SchemaError:
        return cls(f"{path}: key '{key}': value {value!r} not allowed; expected {allowed}")


class InputError(DataPrepError):
    """A raw input row or file is bad and the policy is `error` (names file:line and the reason)."""


class ConflictError(DataPrepError):
    """A row for an existing (station, time) differs and the conflict policy is `error`."""


class DatasetError(DataPrepError):
    """A prepared dataset fails verification (names the city and shard, and what to run)."""


class RunDataError(DataPrepError):
    """The config asks for something the prepared data cannot give (names the key and what is allowed)."""
