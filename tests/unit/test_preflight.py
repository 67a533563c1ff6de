"""Host checks before any rank starts (launch/preflight.py): this host for `run`, a login node for
`submit`."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crosscity.config import load_config
from crosscity.launch.cli import main as crosscity_main
from crosscity.launch.local.host import ThisHost
from crosscity.launch.preflight import HostError, LoginNode, check_host
from tests.helpers.runs import CONFIG, REPO

HIDE_HOROVOD = "import sys; sys.modules['horovod.torch'] = None; "


def test_loading_a_config_imports_neither_horovod_nor_torch() -> None:
    code = (
        "import sys; from crosscity.config import load_config; "
        "load_config(None, ['lan.backend=horovod', 'train.device=cuda'], slurm=False); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'horovod')))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr


def test_missing_horovod_is_a_host_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "horovod.torch", None)  # `import horovod.torch` now raises ImportError
    cfg = load_config(None, ["lan.backend=horovod"])  # a valid config: the host is what lacks Horovod
    with pytest.raises(HostError) as info:
        check_host(cfg, ThisHost())
    message = str(info.value)
    assert message.startswith("lan.backend='horovod': horovod is not importable")
    assert ".ci/build-horovod.sh" in message and "docs/horovod.md" in message


def test_missing_horovod_is_one_line_exit_2(tmp_path: Path) -> None:
    hide = HIDE_HOROVOD + "from crosscity.launch.cli import main; sys.exit(main())"
    r = subprocess.run(
        [sys.executable, "-c", hide, "run", str(CONFIG), "lan.backend=horovod", f"train.run_dir={tmp_path}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "lan.backend='horovod': horovod is not importable" in r.stderr
    assert not (tmp_path / "config.yaml").exists()


@pytest.mark.parametrize("override", ["train.device=cuda", "lan.backend=nccl"])
def test_cuda_on_this_host(override: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On a host without CUDA, `crosscity run` refuses in one line; with CUDA the check passes."""
    cfg = load_config(CONFIG, [override])
    if torch.cuda.is_available():
        check_host(cfg, ThisHost())
        return
    with pytest.raises(HostError, match="this host has no CUDA device torch can use"):
        check_host(cfg, ThisHost())
    assert crosscity_main(["run", str(CONFIG), override, f"train.run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("crosscity run: ") and "has no CUDA device" in err
    assert not (tmp_path / "run").exists()


def test_login_node_leaves_gpus_to_the_config_and_checks_horovod_without_torch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_host(load_config(CONFIG, ["train.device=cuda"]), LoginNode())  # compute nodes' GPUs: unknown here
    args = ["submit", str(CONFIG), "lan.backend=horovod", f"train.run_dir={tmp_path / 'run'}", "--dry-run"]
    code = crosscity_main(args)
    if importlib.util.find_spec("horovod") is not None:
        assert code == 0
        return
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lan.backend='horovod': horovod is not importable" in err
