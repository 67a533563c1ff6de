"""A representative subset of the bad-input corpus through the real `crosscity` command (a subprocess
each): the same exit code and one line as in-process, no traceback, nothing left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.corpus import CASES, invocation, prep_base
from tests.helpers.runs import crosscity

SUBSET = (
    "truncated_gzip",  # prep: a broken input file
    "year_2113_last_row",  # prep: the plausible time window
    "dup_top_key",  # a schema with a repeated key
    "station_in_two_cities",  # a cities file
    "append_conflict",  # append: nothing committed
    "flipped_shard_byte_verify",  # verify: exit 1
    "fewer_topology_cities",  # run: no silent subset, before any rank starts
    "run_config_dup_key",  # run: a config file with a repeated key
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "data"
    assert crosscity(*prep_base(root)).returncode == 0
    return root


@pytest.mark.parametrize("case", [c for c in CASES if c["id"] in SUBSET], ids=lambda c: c["id"])
def test_bad_input_through_the_command(case: dict, prepared: Path, tmp_path: Path) -> None:
    run = invocation(case, prepared, tmp_path)
    done = crosscity(*run.argv, timeout=120)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert (done.returncode, len(lines)) == (case["exit"], 1), done.stderr
    assert case["message"] in lines[0]
    assert run.left_behind() == ""


def test_the_subset_names_existing_cases() -> None:
    assert set(SUBSET) <= {c["id"] for c in CASES}
