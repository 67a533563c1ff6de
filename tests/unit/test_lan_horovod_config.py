"""lan.backend=horovod without Horovod runs: config errors, slots, topology from horovodrun."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from crosscity.config.schema import ConfigError, load_config
from crosscity.train.distributed.topology import Topology, TopologyError
from crosscity.train.distributed.topology_env import detect_topology
from crosscity.train.lan.horovod import Slot, city_slots
from tests.helpers.runs import (
    CONFIG,
    REPO,
)


def test_city_slots_number_ranks_as_horovodrun_does() -> None:
    assert city_slots(["n1", "n1"]) == [
        Slot("localhost", 0, 0, 0, 2, 2, 1),
        Slot("localhost", 1, 1, 0, 2, 2, 1),
    ]
    # two hosts, ranks interleaved: local ranks count per host, cross rank = the host's order
    assert city_slots(["a", "b", "a", "b"]) == [
        Slot("a", 0, 0, 0, 4, 2, 2),
        Slot("b", 1, 0, 1, 4, 2, 2),
        Slot("a", 2, 1, 0, 4, 2, 2),
        Slot("b", 3, 1, 1, 4, 2, 2),
    ]


def test_missing_horovod_is_one_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "horovod.torch", None)  # `import horovod.torch` now raises ImportError
    with pytest.raises(ConfigError) as info:
        load_config(None, ["lan.backend=horovod"])
    message = str(info.value)
    assert message.startswith("lan.backend='horovod': horovod is not importable")
    assert ".ci/build-horovod.sh" in message and "docs/horovod.md" in message


def test_bf16_with_horovod_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="^lan.grad_dtype='bf16': Horovod's PyTorch ops have no bfloat16"):
        load_config(None, ["lan.backend=horovod", "lan.grad_dtype=bf16"])


def test_missing_horovod_is_one_line_exit_2(tmp_path: Path) -> None:
    hide = (
        "import sys; sys.modules['horovod.torch'] = None; "
        "from crosscity.launch.cli import main; sys.exit(main())"
    )
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


def test_flat_with_horovod_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="^lan.backend='horovod' with wan.algorithm='flat': Horovod runs"):
        load_config(None, ["lan.backend=horovod", "wan.algorithm=flat"])


def test_topology_from_horovodrun() -> None:
    """One horovodrun per city: HOROVOD_RANK/SIZE number the city's ranks."""
    env = {"HOROVOD_RANK": "1", "HOROVOD_SIZE": "2", "CROSSCITY_CITY": "1", "CROSSCITY_NUM_CITIES": "2"}
    assert detect_topology(env) == Topology(city=1, num_cities=2, local_rank=1, ranks_per_city=2)
    alone = {"HOROVOD_RANK": "3", "HOROVOD_SIZE": "4"}
    assert detect_topology(alone) == Topology(city=0, num_cities=1, local_rank=3, ranks_per_city=4)


def test_one_horovodrun_for_several_cities_is_a_topology_error() -> None:
    env = {"HOROVOD_RANK": "3", "HOROVOD_SIZE": "4", "CROSSCITY_NUM_CITIES": "2"}
    with pytest.raises(TopologyError, match="one horovodrun per city, each with its own CROSSCITY_CITY"):
        detect_topology(env)
