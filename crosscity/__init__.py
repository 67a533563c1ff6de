"""crosscity: train one model on data that stays in several cities.

The public Python API is these few functions (README: Python API); each wraps what the `crosscity`
command runs and imports its module only when called, so `import crosscity` stays cheap and never
imports torch:

    import crosscity

    crosscity.prepare_dataset("data/beijing", preset="beijing")  # the shipped CSVs -> 4 city datasets
    cfg = crosscity.load_config("my.yaml", ["topology.cities=2"])
    code = crosscity.run_local("my.yaml", ["train.steps=50"], run_dir="runs/api")
    run_dir, jobs = crosscity.submit("my.yaml", ["slurm.partition=gpu"])

Bad input raises (ConfigError, HostError, DataPrepError) with the one line the command would print.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from crosscity.config import Config
    from crosscity.data_prep.prepare import PrepReport
    from crosscity.data_prep.verify import Verified

__all__ = [
    "load_config",
    "run_local",
    "submit",
    "report",
    "prepare_dataset",
    "append_dataset",
    "verify_dataset",
]


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), *, slurm: bool = False
) -> Config:
    """Defaults <- YAML file <- `key=value` overrides, every rule checked (`slurm`: those of a
    submission too); raises crosscity.config.ConfigError naming the key and what is allowed."""
    from crosscity.config import load_config as load

    return load(path, overrides, slurm=slurm)


def run_local(
    config: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    run_dir: str | Path | None = None,
    echo: bool = True,
) -> int:
    """`crosscity run`: cities x ranks as processes on this machine, then the report; blocks until done.

    Raises ConfigError / HostError before anything starts; returns the exit code (0 = trained and
    RUN_DIR/summary.json written, 2 = the data is missing or broken, 1 = a rank failed)."""
    from crosscity.launch.local.run import run_command

    return run_command(config, overrides, Path(run_dir) if run_dir is not None else None, echo=echo)


def submit(
    config: str | Path, overrides: Sequence[str] = (), *, via: Literal["sbatch", "submitit"] = "sbatch"
) -> tuple[Path, dict]:
    """`crosscity submit`: the run's cities as Slurm job arrays; returns at once with the run folder and
    its jobs.json record (follow with `crosscity status RUN_DIR`). Raises SubmitError if Slurm refuses."""
    from crosscity.launch.slurm.submit import submit as submit_run

    return submit_run(config, overrides, via=via)


def report(run_dir: str | Path) -> Path:
    """`crosscity report RUN_DIR`: write report.md and plots/*.png of a run (finished or still going)."""
    from crosscity.launch.report.run_report import write_report

    return write_report(Path(run_dir))[0]


def prepare_dataset(
    out: str | Path,
    inputs: Sequence[str | Path] = (),
    *,
    preset: Literal["beijing"] | None = None,
    schema: str | Path | None = None,
    cities: str | Path | None = None,
    progress: bool = True,
) -> PrepReport:
    """`crosscity prep`: raw station CSVs -> per-city HDF5 shards + manifest in the new folder `out`.

    A preset supplies the schema and cities files (and, without `inputs`, the shipped data)."""
    from crosscity.data_prep.cli import PRESETS
    from crosscity.data_prep.errors import DataPrepError
    from crosscity.data_prep.prepare import prepare

    if preset is not None:
        preset_schema, preset_cities, files = PRESETS[preset]
        schema, cities, inputs = schema or preset_schema, cities or preset_cities, inputs or files()
    if schema is None or cities is None:
        raise DataPrepError("prepare_dataset: give schema= and cities=, or preset=")
    return prepare(schema, cities, out, [Path(p) for p in inputs], progress=progress)


def append_dataset(
    data_dir: str | Path, inputs: Sequence[str | Path], *, progress: bool = True
) -> PrepReport:
    """`crosscity prep append`: add rows to a prepared dataset (idempotent; a new version per city)."""
    from crosscity.data_prep.prepare import append

    return append(data_dir, [Path(p) for p in inputs], progress=progress)


def verify_dataset(path: str | Path, *, level: str = "full") -> Verified:
    """`crosscity prep verify`: check a dataset root or one city at `level` (structure | quick | full:
    sha256 of every shard); returns the dataset version and each city's, raises DatasetError."""
    from crosscity.data_prep.verify import verify_dataset as verify

    return verify(path, level)
