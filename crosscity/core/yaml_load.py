"""YAML that refuses duplicate keys: PyYAML keeps the last of two equal keys, silently.

A duplicated key in a schema, cities file or run config is almost always a paste error whose
first value the author meant; `safe_load_unique` raises DuplicateKeyError (a yaml.YAMLError, so
existing `except yaml.YAMLError` handlers report it) naming both lines. Torch-free.
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.error import Mark
from yaml.nodes import MappingNode

MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(ConstructorError):
    """A mapping names one key twice; str() is one line: `line L, column C: duplicate key ...`."""

    def __init__(self, key: Any, mark: Mark, first_line: int) -> None:
        problem = f"duplicate key {key!r} (first at line {first_line}); each key may appear once per mapping"
        super().__init__(problem=problem, problem_mark=mark)
        self.key, self.first_line = key, first_line

    def __str__(self) -> str:
        return f"line {self.problem_mark.line + 1}, column {self.problem_mark.column + 1}: {self.problem}"


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:  # `<<: *base` entries may be overridden: that is their point
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                break
            if first is not None:
                raise DuplicateKeyError(key, key_node.start_mark, first)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """yaml.safe_load, but a mapping that repeats a key raises DuplicateKeyError."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
