"""The layers hold (lint-imports with setup.cfg's contracts), no module sits on an import cycle, and
the commands a Slurm login node runs never import torch (checked in fresh interpreters)."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers.import_contracts import cycle_imports, lint_imports
from tests.helpers.runs import CONFIG, REPO

# What runs on a login node: the Slurm commands, the reports, the config, the public API.
LOGIN_NODE_MODULES = [
    "crosscity",
    "crosscity.launch.slurm.submit",
    "crosscity.launch.slurm.sweep",
    "crosscity.launch.slurm.status",
    "crosscity.launch.slurm.submitit_jobs",
    "crosscity.launch.report.command",
    "crosscity.launch.run_dir",
    "crosscity.launch.preflight",
    "crosscity.config",
]
TORCH_LOADED = "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
# One fresh interpreter imports them in turn and names the first that pulled torch in.
FIRST_WITH_TORCH = f"""
import importlib, sys
for module in {LOGIN_NODE_MODULES!r}:
    importlib.import_module(module)
    if "torch" in sys.modules:
        print(module)
        break
else:
    print("none")
"""


def test_import_contracts_hold() -> None:
    done = lint_imports()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken." in done.stdout


def test_no_module_is_on_an_import_cycle() -> None:
    """Stricter than the acyclic_siblings contract: a package's __init__ counts as a module too."""
    assert cycle_imports() == []


def _torch_modules(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", f"import sys; {code}; {TORCH_LOADED}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_login_node_modules_do_not_import_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FIRST_WITH_TORCH], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "none", done.stdout + done.stderr


def test_submit_and_sweep_dry_runs_do_not_import_torch(tmp_path) -> None:
    """Beyond importing: the whole login-node path of a submission (load, rules, plan, scripts)."""
    runs = [
        ["submit", str(CONFIG), f"train.run_dir={tmp_path / 'a'}", "--dry-run"],
        ["submit", str(CONFIG), f"train.run_dir={tmp_path / 'b'}", "--dry-run", "--via", "submitit"],
        ["sweep", str(CONFIG), "--grid", "optim.lr=1e-3,3e-3", "--out", str(tmp_path / "s"), "--dry-run"],
    ]
    code = "; ".join(f"assert main({args!r}) == 0" for args in runs)
    assert _torch_modules(f"from crosscity.launch.cli import main; {code}") == "[]"
