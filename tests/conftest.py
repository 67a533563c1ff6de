"""Shared fixtures: a small real dataset (first weeks of the 12 Beijing stations), prepared once."""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path

import pytest

from crosscity.data_prep import cli as prep_cli
from crosscity.data_prep.datasets import beijing_files

# Tests run as `.venv/bin/python -m pytest` without an activated venv: put the interpreter's bin
# folder first on PATH so its console scripts (torchrun, mpiexec, crosscity) are found, by the tests
# and by the Slurm jobs they submit with --export=ALL.
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

PRESETS = Path(prep_cli.__file__).parent / "presets"
# A test's tier is the folder it lives in; `pytest -m unit` runs the fast in-process tier alone.
TIERS = ("unit", "dist", "cli", "slurm", "netns", "horovod")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = item.path.parent.name
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.path}: every test module lives in a tier folder {TIERS}")
        item.add_marker(tier)


SMALL_ROWS = 2000  # hours per station: enough windows for a few hundred steps, prep in ~1 s


def write_head(src: Path, dst: Path, rows: int) -> Path:
    opener = gzip.open if src.suffix == ".gz" else open
    with opener(src, "rt") as fin, dst.open("w") as fout:
        for i, line in enumerate(fin):
            if i > rows:
                break
            fout.write(line)
    return dst


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    csvs = [str(write_head(f, raw / f.name.removesuffix(".gz"), SMALL_ROWS)) for f in beijing_files()]
    out = tmp_path_factory.mktemp("prepared") / "beijing"
    code = prep_cli.main(
        [
            "--schema",
            str(PRESETS / "beijing_schema.yaml"),
            "--cities",
            str(PRESETS / "beijing_cities.yaml"),
            "--out",
            str(out),
            *csvs,
        ]
    )
    assert code == 0
    return out
