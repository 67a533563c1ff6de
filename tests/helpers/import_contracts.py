"""Run lint-imports (setup.cfg's contracts) on a view of the installed package layout.

setup.cfg maps crosscity.train -> train/, crosscity.launch -> launch/, ...; grimp builds its graph by
walking the root package's folder (crosscity/), which holds none of them. The view is a folder
`crosscity/` of symbolic links (crosscity/*, and one link per mapped subpackage) that grimp follows,
so the graph is the one a wheel installs.

    python -m tests.helpers.import_contracts     # lint-imports' own output and exit code
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def package_view(dest: Path) -> Path:
    """dest/crosscity laid out as installed; returns dest (the folder to put on sys.path)."""
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    mapping = dict(line.split("=") for line in parser["options"]["package_dir"].split("\n") if line.strip())
    mapping = {name.strip(): REPO / folder.strip() for name, folder in mapping.items()}
    root = dest / "crosscity"
    root.mkdir(parents=True)
    for entry in mapping.pop("crosscity").iterdir():
        if entry.name != "__pycache__":
            (root / entry.name).symlink_to(entry)
    for name, folder in mapping.items():
        parent, _, child = name.rpartition(".")
        assert parent == "crosscity", f"{name}: only direct subpackages of crosscity are mapped"
        (root / child).symlink_to(folder)
    return dest


def in_view(command: list[str]) -> subprocess.CompletedProcess:
    """Run `command` with the view first on the path (and as the working folder); output captured."""
    with tempfile.TemporaryDirectory(prefix="crosscity-view-") as tmp:
        view = package_view(Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(view)}
        return subprocess.run(command, cwd=view, env=env, capture_output=True, text=True, timeout=300)


def lint_imports(*args: str) -> subprocess.CompletedProcess:
    """`lint-imports setup.cfg`: every contract."""
    lint = Path(sys.executable).parent / "lint-imports"
    return in_view([str(lint), "--no-cache", str(REPO / "setup.cfg"), *args])


CYCLES = """
import grimp, json
graph = grimp.build_graph("crosscity")
edges = [(a, b) for a in graph.modules for b in graph.find_modules_directly_imported_by(a)]
print(json.dumps(sorted([a, b] for a, b in edges if graph.find_shortest_chain(importer=b, imported=a))))
"""


def cycle_imports() -> list[tuple[str, str]]:
    """Every direct import (importer, imported) between crosscity modules that lies on a cycle, found
    with grimp itself (a package's __init__ counts as a module, unlike in the acyclic_siblings contract)."""
    done = in_view([sys.executable, "-c", CYCLES])
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return [tuple(edge) for edge in json.loads(done.stdout)]


if __name__ == "__main__":
    done = lint_imports(*sys.argv[1:])
    print(done.stdout + done.stderr, end="")
    sys.exit(done.returncode)
