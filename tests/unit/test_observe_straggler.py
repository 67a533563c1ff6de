"""Straggler detector: thresholds, consecutive-step rule, one event per episode."""

from __future__ import annotations

import pytest

from crosscity.train.observe.straggler import StragglerDetector, peer_ratios


def feed(det: StragglerDetector, rows: list[dict[int, float]], start: int = 1) -> list[dict]:
    events = []
    for step, times in enumerate(rows, start):
        events.extend(det.update(step, times))
    return events


def test_warns_after_m_consecutive_slow_steps_once_per_episode():
    det = StragglerDetector(factor=2.0, consecutive=3)
    normal = {0: 1.0, 1: 1.1, 2: 0.9, 3: 1.0}
    slow = {**normal, 2: 2.5}
    assert feed(det, [slow, slow]) == []  # only 2 steps
    events = feed(det, [slow, slow, slow, slow], start=3)  # episode continues: still one event
    assert len(events) == 1
    (e,) = events
    assert (e["kind"], e["event"], e["rank"], e["step"], e["first_step"]) == ("event", "straggler", 2, 3, 1)
    assert e["peer_median_s"] == 1.0 and e["ratio"] == 2.5 and "rank 2" in e["message"]
    assert feed(det, [normal], start=7) == []  # episode ends
    events = feed(det, [slow, slow, slow], start=8)
    assert [(e["rank"], e["first_step"], e["step"]) for e in events] == [(2, 8, 10)]
    assert "steps 8..10" in events[0]["message"]
    assert det.episodes == 2


def test_interruption_resets_the_count_and_threshold_is_strict():
    det = StragglerDetector(factor=2.0, consecutive=2)
    slow = {0: 1.0, 1: 3.0}
    at_threshold = {0: 1.0, 1: 2.0}
    assert feed(det, [slow, at_threshold, slow, at_threshold]) == []
    assert [e["rank"] for e in feed(det, [slow, slow], start=5)] == [1]


def test_two_rank_city_and_several_stragglers():
    det = StragglerDetector(factor=1.5, consecutive=1)
    # two ranks: compared with the other rank, so the slow one is found
    assert [e["rank"] for e in det.update(1, {0: 1.0, 1: 1.6})] == [1]
    det = StragglerDetector(factor=1.5, consecutive=1)
    times = {0: 1.0, 1: 1.0, 2: 1.0, 3: 1.7, 4: 1.8}
    assert [e["rank"] for e in det.update(1, times)] == [3, 4]
    assert det.update(2, {0: 5.0}) == []  # a lone rank has no peers


def test_peer_ratios_leave_the_rank_out():
    assert peer_ratios({0: 1.0, 1: 3.0}) == {0: (1 / 3, 3.0), 1: (3.0, 1.0)}
    assert peer_ratios({0: 2.0, 1: 1.0, 2: 1.0, 3: 4.0}) == {
        0: (2.0, 1.0),
        1: (0.5, 2.0),
        2: (0.5, 2.0),
        3: (4.0, 1.0),
    }
    assert peer_ratios({0: 1.0}) == {} and peer_ratios({0: 1.0, 1: 0.0}) == {1: (0.0, 1.0)}


def test_per_check_converts_steps_to_checks():
    assert StragglerDetector.per_check(2.0, 20, 10).consecutive == 2
    assert StragglerDetector.per_check(2.0, 25, 10).consecutive == 3
    assert StragglerDetector.per_check(2.0, 5, 10).consecutive == 1


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="factor=1.0"):
        StragglerDetector(1.0, 5)
    with pytest.raises(ValueError, match="consecutive steps=0"):
        StragglerDetector(2.0, 0)
