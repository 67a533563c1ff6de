"""The bad-input corpus (tests/corpus/cases.yaml), every case in-process through `crosscity`'s main:
the expected exit code, one line on stderr with the expected fragment, no traceback, and nothing
partial left behind (no output folder, an unchanged dataset, no run directory)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crosscity.launch.cli import main
from tests.helpers.corpus import CASES, invocation, prep_base


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus") / "data"
    assert main(prep_base(root)) == 0
    return root


def test_the_corpus_is_large_and_its_ids_unique() -> None:
    ids = [c["id"] for c in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)
    assert {c["command"] for c in CASES} == {"prep", "schema", "cities", "append", "verify", "run"}


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input_gives_one_line_and_leaves_nothing(
    case: dict, prepared: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = invocation(case, prepared, tmp_path)
    capsys.readouterr()
    code = main(run.argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert (code, len(lines)) == (case["exit"], 1), err
    assert case["message"] in lines[0], lines[0]
    assert run.left_behind() == ""
