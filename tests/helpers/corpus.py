"""The bad-input corpus (tests/corpus/cases.yaml): each case as a `crosscity` command line, plus what
"nothing partial left behind" means for it. Used in-process (unit) and as a subprocess (cli)."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crosscity.core.yaml_load import safe_load_unique
from crosscity.data_prep.dataset import DATASET
from tests.helpers.data import flip_byte

CORPUS = Path(__file__).parents[1] / "corpus"
CASES: list[dict[str, Any]] = safe_load_unique((CORPUS / "cases.yaml").read_text())


def prep_base(out: Path) -> list[str]:
    """`crosscity prep` of the corpus's good input: the dataset the append/verify/run cases start from."""
    return [
        "prep",
        *_prep_args(CORPUS / "schema.yaml", CORPUS / "cities.yaml", out),
        str(CORPUS / "base.csv"),
    ]


def _prep_args(schema: Path, cities: Path, out: Path) -> list[str]:
    return ["--schema", str(schema), "--cities", str(cities), "--out", str(out), "--quiet"]


def snapshot(root: Path) -> dict[str, str]:
    """Every file under root (but the lock) with its sha256: what must not change."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _set(data: Any, dotted: str, value: Any = None, delete: bool = False) -> None:
    *path, last = dotted.split(".")
    for key in path:
        data = data[key]
    if delete:
        del data[last]
    else:
        data[last] = value


def _json_edit(root: Path, spec: dict[str, Any], delete: bool) -> None:
    path = root / spec["file"]
    data = json.loads(path.read_text())
    _set(data, spec["key"], spec.get("value"), delete)
    path.write_text(json.dumps(data, indent=1) + "\n")


def apply_edit(root: Path, edit: dict[str, Any]) -> None:
    """The one thing a dataset case breaks: flip a byte, delete, grow, write, rename, edit JSON.
    `rehash` then updates dataset.json's sha256 of the edited city manifest (to reach the structure
    checks behind the hash)."""
    if "flip_byte" in edit:
        flip_byte(root / edit["flip_byte"])
    if "delete" in edit:
        (root / edit["delete"]).unlink()
    if "append_bytes" in edit:
        with open(root / edit["append_bytes"], "ab") as fh:
            fh.write(b"x")
    for name, text in edit.get("write", {}).items():
        (root / name).write_text(text)
    for src, dst in edit.get("rename", {}).items():
        (root / src).rename(root / dst)
    if "json_set" in edit:
        _json_edit(root, edit["json_set"], delete=False)
    if "json_del" in edit:
        _json_edit(root, edit["json_del"], delete=True)
    if edit.get("rehash"):
        ds = json.loads((root / DATASET).read_text())
        for city, entry in ds["cities"].items():
            entry["sha256"] = hashlib.sha256((root / city / entry["manifest"]).read_bytes()).hexdigest()
        (root / DATASET).write_text(json.dumps(ds, indent=1) + "\n")


@dataclass
class Invocation:
    argv: list[str]  # after `crosscity`
    left_behind: Callable[[], str]  # "" when nothing partial is left, else what is


def invocation(case: dict[str, Any], prepared: Path, tmp: Path) -> Invocation:
    """The command line of a case, run against copies in tmp; `left_behind` checks the aftermath."""
    command, args = case["command"], case.get("args", [])
    given = CORPUS / case["file"] if "file" in case else None
    if command in ("prep", "schema", "cities"):
        out = tmp / "out"
        schema = given if command == "schema" else CORPUS / "schema.yaml"
        cities = given if command == "cities" else CORPUS / "cities.yaml"
        data = given if command == "prep" else CORPUS / "base.csv"
        argv = ["prep", *_prep_args(schema, cities, out), *args, str(data)]  # type: ignore[arg-type]
        return Invocation(argv, lambda: f"{out} exists: {snapshot(out)}" if out.exists() else "")
    root = tmp / "data"
    shutil.copytree(prepared, root)
    apply_edit(root, case.get("edit", {}))
    before = snapshot(root)
    if command == "append":
        argv = ["prep", "append", "--data", str(root), "--quiet", *args, str(given)]
    elif command == "verify":
        argv = ["prep", "verify", str(root), *args]
    else:
        config = CORPUS / case.get("config", "run.yaml")
        overrides = [case["override"]] if "override" in case else []
        argv = ["run", str(config), f"data.dir={root}", f"train.run_dir={tmp / 'run'}", *overrides]

    def left() -> str:
        if (tmp / "run").exists():
            return f"run dir {tmp / 'run'} was created"
        after = snapshot(root)
        return "" if after == before else f"dataset changed: {set(after.items()) ^ set(before.items())}"

    return Invocation(argv, left)
