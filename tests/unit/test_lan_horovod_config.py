"""lan.backend=horovod without Horovod runs: slots and topology from horovodrun (its config rules and
host check: tests/unit/test_config_rules.py, tests/unit/test_preflight.py)."""

from __future__ import annotations

import pytest

from crosscity.train.distributed.topology import Topology, TopologyError
from crosscity.train.distributed.topology_env import detect_topology
from crosscity.train.lan.horovod import Slot, city_slots


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
