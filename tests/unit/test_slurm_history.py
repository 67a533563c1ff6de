"""What `crosscity status` makes of the coordinator's events and the coordinator job's records, and the
supervisor's backoff, without a cluster (the real thing: tests/slurm/test_slurm_faults.py)."""

from __future__ import annotations

import json
from pathlib import Path

from crosscity.launch.restart_policy import HEALTHY_S, failure_streak, restart_delay
from crosscity.launch.slurm.history import EVENTS, city_histories, describe, read_events

EVENTS_OF_A_RUN = [
    {"time": 100.0, "event": "join", "city": 0},
    {"time": 100.1, "event": "live", "city": 0},
    {"time": 101.0, "event": "join", "city": 1},
    {"time": 101.1, "event": "live", "city": 1},
    {"time": 102.0, "event": "round", "round": 1, "participants": [0, 1]},
    {"time": 110.0, "event": "silent", "city": 1, "after_s": 1.0},  # cancelled
    {"time": 111.0, "event": "round", "round": 2, "participants": [0]},
    {"time": 140.0, "event": "join", "city": 1, "state": "healing"},  # its task is back
    {"time": 140.2, "event": "live", "city": 1},
    {"time": 141.0, "event": "silent", "city": 1, "after_s": 1.0},  # slow before its first round
    {"time": 142.0, "event": "live", "city": 1},
    {"time": 143.0, "event": "round", "round": 3, "participants": [0, 1]},  # rejoined
    {"time": 150.0, "event": "leave", "city": 0, "reason": "preempted"},
    {"time": 151.0, "event": "round", "round": 4, "participants": [1]},
]


def test_outages_end_at_the_first_committed_round_after_the_return(tmp_path: Path) -> None:
    path = tmp_path / EVENTS
    path.parent.mkdir(parents=True)
    lines = [json.dumps(e) for e in EVENTS_OF_A_RUN]
    path.write_text("\n".join(lines) + '\n{"time": 152.0, "event": "jo')  # a line being written
    events = read_events(tmp_path)
    assert events == EVENTS_OF_A_RUN
    found = city_histories(events, [0, 1])
    one, zero = found[1], found[0]
    assert [(o.start, o.cause, o.back, o.rejoined, o.round) for o in one.outages] == [
        (110.0, "silent", 140.0, 143.0, 3)  # the silence before its first round is the same outage
    ]
    assert (one.live, one.since, one.last_round, one.in_quorum) == (True, 142.0, 4, True)
    assert [(o.cause, o.back, o.rejoined) for o in zero.outages] == [("left: preempted", None, None)]
    assert (zero.live, zero.last_round, zero.in_quorum, zero.finished) == (False, 3, False, False)
    assert city_histories([], [0])[0].live is None and read_events(tmp_path / "nothing") == []


def test_the_status_line_names_the_outage_the_rejoin_and_what_brought_the_city_back() -> None:
    found = city_histories(EVENTS_OF_A_RUN, [0, 1])
    records = [{"time": 112.0, "action": "requeue", "job": "7_1", "was": "7_1", "state": "CANCELLED"}]
    line = describe("city1", found[1], records)
    assert line.startswith("city1: live since ")
    assert "(in the current quorum)" in line and "outage 1: silent " in line and ", back " in line
    assert "rejoined in round 3 at " in line and "(33.0 s away)" in line
    assert "requeued " in line and "(7_1 was CANCELLED)" in line
    moved = [{"time": 112.0, "action": "resubmit", "job": "9_1", "was": "7_1", "state": "CANCELLED"}]
    assert "resubmitted " in describe("city1", found[1], moved) and ", now 9_1)" in describe(
        "c", found[1], moved
    )
    zero = describe("city0", found[0], [])
    assert (
        "not live since " in zero
        and "outage 1: left: preempted " in zero
        and "not in a round again yet" in zero
    )


def test_the_launchers_back_off_only_when_a_city_keeps_failing_soon_after_its_start() -> None:
    assert [restart_delay(n) for n in range(1, 9)] == [0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert failure_streak(0, 1.0) == 1
    assert failure_streak(3, HEALTHY_S - 1) == 4  # failed again soon after its start: a crash loop
    assert failure_streak(3, HEALTHY_S + 1) == 1  # ran a while: comes back at once
