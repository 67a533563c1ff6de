"""The public API (`import crosscity`): cheap to import, typed and documented, and each function does
what its command does (run_local: tests/cli/test_run_report.py; submit on Slurm: tests/slurm)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import crosscity
from crosscity.config import ConfigError
from crosscity.data_prep.errors import DatasetError
from tests.helpers.data import PRESET_SCHEMA, small_cities, small_inputs
from tests.helpers.runs import CONFIG, REPO


def test_import_is_cheap_and_every_function_typed_and_documented() -> None:
    heavy = "('torch', 'yaml', 'numpy', 'crosscity.')"
    code = f"import sys, crosscity; print(sorted(m for m in sys.modules if m.startswith({heavy})))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
    for name in crosscity.__all__:
        fn = getattr(crosscity, name)
        signature = inspect.signature(fn)
        assert fn.__doc__ and signature.return_annotation is not inspect.Signature.empty, name
        assert all(p.annotation is not inspect.Parameter.empty for p in signature.parameters.values()), name


def test_config_and_submit_refuse_before_anything_is_written(tmp_path: Path) -> None:
    cfg = crosscity.load_config(CONFIG, ["topology.cities=2"])
    assert cfg.topology.cities == 2 and cfg.wan.algorithm == "diloco"
    with pytest.raises(ConfigError, match="needs GPUs on the compute nodes"):  # a Slurm rule
        crosscity.submit(CONFIG, ["train.device=cuda", f"train.run_dir={tmp_path / 'run'}"])
    assert not (tmp_path / "run").exists()


def test_prepare_append_verify(tmp_path: Path) -> None:
    data = tmp_path / "data"
    report = crosscity.prepare_dataset(
        data,
        small_inputs(tmp_path, rows=300),
        schema=PRESET_SCHEMA,
        cities=small_cities(tmp_path),
        progress=False,
    )
    assert sorted(report.cities) == ["centre", "north"]
    assert sorted(crosscity.verify_dataset(data).cities) == ["centre", "north"]
    added = crosscity.append_dataset(data, small_inputs(tmp_path, rows=100, start=300), progress=False)
    assert sorted(added.cities) == ["centre", "north"]
    assert list(crosscity.verify_dataset(data / "north", level="quick").cities) == ["north"]
    for shard in (data / "north").glob("*.h5"):
        shard.write_bytes(b"not a shard")
    with pytest.raises(DatasetError):
        crosscity.verify_dataset(data)
