"""A real SIGKILL at many points of a first prep and of an append (every file commit included, so also
between two cities' manifests): verify then passes on a complete old or new dataset version, or says
exactly what to run, and never says OK on a mix; rerunning the command completes the dataset."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from crosscity.data_prep.dataset import DATASET, load_manifest, read_dataset
from crosscity.data_prep.errors import DatasetError
from crosscity.data_prep.prepare import append, prepare
from crosscity.data_prep.verify import verify_dataset
from tests.helpers.data import PRESET_SCHEMA, prepare_small, small_cities, small_inputs

MUTATIONS = ("replace", "unlink", "rmdir", "mkdir", "fsync")  # every way prep changes the file system
CITIES = ("north", "centre")


def in_child(work: Callable[[], object], kill_at: int | None) -> tuple[int, list[str]]:
    """Run `work` in a forked child that SIGKILLs itself just before its kill_at-th file-system
    mutation. Returns (wait status, the mutations it saw: "replace dataset.json", ...)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        code = 1
        try:
            os.close(read_fd)
            seen: list[str] = []
            real = {name: getattr(os, name) for name in MUTATIONS}

            def hooked(name: str) -> Callable[..., object]:
                def call(*args: object, **kw: object) -> object:
                    seen.append(label(name, args))
                    os.write(write_fd, (seen[-1] + "\n").encode())
                    if len(seen) == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)
                    # a SIGKILL loses no page cache, so fsync only costs time here (power loss is
                    # another story, which the fsyncs are for): counted as a kill point, not run
                    return None if name == "fsync" else real[name](*args, **kw)

                return call

            for name in MUTATIONS:
                setattr(os, name, hooked(name))
            work()
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while block := os.read(read_fd, 1 << 16):
        chunks.append(block)
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    return status, b"".join(chunks).decode().splitlines()


def label(name: str, args: tuple[object, ...]) -> str:
    """`replace dataset.json`, `unlink Changping_2013.v1.h5`, `fsync` ..."""
    path = args[1] if name == "replace" else args[0]
    if name == "fsync" or not isinstance(path, str | os.PathLike):
        return name
    return f"{name} {Path(os.fsdecode(path)).name}"


def kill_points(seen: list[str], extra: int) -> list[int]:
    """Just before every file commit (rename), just after the dataset's commit, and `extra` points
    spread over the rest (staging, cleanup)."""
    renames = [i + 1 for i, s in enumerate(seen) if s.startswith("replace")]
    after = [i + k for i, s in enumerate(seen) if s == f"replace {DATASET}" for k in (2, 4)]  # 4: mid-cleanup
    spread = [round(1 + k * (len(seen) - 1) / (extra - 1)) for k in range(extra)]
    return sorted({*renames, *after, *spread})


@pytest.fixture(autouse=True)
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """The reruns here need no durability against power loss, only speed on a shared disk."""
    monkeypatch.setattr(os, "fsync", lambda fd: None)


def rows(root: Path) -> dict[str, int]:
    return {c: load_manifest(root / c)["rows"] for c in CITIES}


def test_sigkill_during_a_first_prep(tmp_path: Path) -> None:
    inputs, cities = small_inputs(tmp_path, rows=60), small_cities(tmp_path)
    expected = {"north": 120, "centre": 60}

    def prep(out: Path) -> Callable[[], object]:
        return lambda: prepare(PRESET_SCHEMA, cities, out, inputs, progress=False)

    status, seen = in_child(prep(tmp_path / "whole"), None)
    assert status == 0 and rows(tmp_path / "whole") == expected
    points = kill_points(seen, extra=3)
    assert len(points) >= 10
    outcomes = set()
    for k in points:
        out = tmp_path / f"kill{k}"
        status, _ = in_child(prep(out), k)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (k, seen[k - 1])
        try:
            verified = verify_dataset(out, "full")
        except DatasetError as exc:  # before the commit: never OK, and it says what to run
            assert not (out / DATASET).exists(), (k, exc)
            assert "rerun the same prep command" in str(exc) or "run `crosscity prep --out" in str(exc), exc
            outcomes.add("unfinished")
        else:  # after the commit: the complete dataset
            assert verified.version == 1 and rows(out) == expected, (k, seen[k - 1])
            outcomes.add("complete")
        report = prepare(PRESET_SCHEMA, cities, out, inputs, progress=False)  # the same command again
        assert report.dataset_version == 1 and rows(out) == expected, k
        assert verify_dataset(out, "structure").leftovers == [], k
    assert outcomes == {"unfinished", "complete"}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return prepare_small(tmp_path, "v1", rows=60)


def test_sigkill_during_an_append(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "new").mkdir()
    new = small_inputs(tmp_path / "new", rows=40, start=60)
    old, grown = {"north": 120, "centre": 60}, {"north": 200, "centre": 100}
    whole = tmp_path / "whole"
    shutil.copytree(dataset, whole)
    status, seen = in_child(lambda: append(whole, new, progress=False), None)
    assert status == 0 and rows(whole) == grown
    between = [i + 1 for i, s in enumerate(seen) if s == "replace manifest.v2.json"]
    assert len(between) == 2  # north's and centre's next manifests: a kill between them must not mix
    points = kill_points(seen, extra=3)
    assert len(points) >= 10 and between[1] in points  # killed after north's manifest, before centre's
    versions = set()
    for k in points:
        root = tmp_path / f"kill{k}"
        shutil.copytree(dataset, root)
        status, _ = in_child(lambda root=root: append(root, new, progress=False), k)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (k, seen[k - 1])
        verified = verify_dataset(root, "full")  # never fails: the old version until the commit
        assert rows(root) == (grown if verified.version == 2 else old), (k, seen[k - 1])
        assert set(verified.cities.values()) == {verified.version}  # both cities at one version
        versions.add(verified.version)
        report = append(root, new, progress=False)  # the same command again completes it
        assert read_dataset(root)["version"] == 2 and rows(root) == grown, k
        assert report.rows_added in (0, 120) and verify_dataset(root, "structure").leftovers == [], k
    assert versions == {1, 2}
