"""Validation-based model selection and early stopping (crosscity/core/best_model.py)."""

from __future__ import annotations

import math

from crosscity.core.best_model import BestModel


def test_keeps_the_lowest_rmse_and_stops_after_patience_evaluations_without_improvement() -> None:
    best = BestModel(patience=2)
    decisions = [best.update(step, rmse) for step, rmse in [(10, 40.0), (20, 35.0), (30, 36.0), (40, 35.5)]]
    assert [d.improved for d in decisions] == [True, True, False, False]
    assert [d.stop for d in decisions] == [False, False, False, True]
    assert (best.best_step, best.best_rmse) == (20, 35.0)


def test_improvements_below_min_delta_do_not_count_and_nan_never_improves() -> None:
    best = BestModel(patience=0, min_delta=0.5)
    assert best.update(1, math.nan).improved is False  # counts as not improving, never stops (patience 0)
    assert best.update(2, 40.0).improved is True
    assert best.update(3, 39.7).improved is False  # 0.3 < min_delta
    assert best.update(4, 39.4).improved is True  # 0.6 below the best
    assert not any(best.update(s, 50.0).stop for s in range(5, 50))
    assert best.best_step == 4


def test_state_round_trip_resumes_the_same_decisions() -> None:
    first = BestModel(patience=3, min_delta=0.1)
    for step, rmse in [(1, 30.0), (2, 31.0)]:
        first.update(step, rmse)
    second = BestModel(patience=3, min_delta=0.1)
    second.load_state_dict(first.state_dict())
    assert [second.update(s, 32.0).stop for s in (3, 4)] == [False, True]
    assert second.best_step == 1
