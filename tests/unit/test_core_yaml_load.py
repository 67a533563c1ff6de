"""Duplicate YAML keys are refused everywhere YAML is read: schemas, cities files, run configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from crosscity.config import ConfigError, load_config
from crosscity.core.yaml_load import DuplicateKeyError, safe_load_unique


def test_same_result_as_safe_load_without_duplicates() -> None:
    text = "a: 1\nb: {c: [1, 2], d: null}\nbase: &b {x: 1}\nmerged: {<<: *b, x: 2}\n"
    assert safe_load_unique(text) == yaml.safe_load(text)  # a merge key may be overridden


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("a: 1\nb: 2\na: 3\n", "line 3, column 1: duplicate key 'a' (first at line 1)"),
        ("outer:\n  x: 1\n  x: 2\n", "line 3, column 3: duplicate key 'x' (first at line 2)"),
        ("- {k: 1, k: 2}\n", "line 1, column 10: duplicate key 'k' (first at line 1)"),
        ("1: a\n1: b\n", "duplicate key 1"),
    ],
)
def test_a_repeated_key_is_one_line_naming_both_places(text: str, where: str) -> None:
    with pytest.raises(DuplicateKeyError) as err:
        safe_load_unique(text)
    assert isinstance(err.value, yaml.YAMLError) and where in str(err.value)
    assert "\n" not in str(err.value)


def test_run_config_with_a_repeated_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  steps: 10\n  steps: 20\n")
    with pytest.raises(
        ConfigError, match=r"run.yaml: not valid YAML \(line 3, column 3: duplicate key 'steps'"
    ):
        load_config(path)
