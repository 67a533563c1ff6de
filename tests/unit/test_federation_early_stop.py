"""Early stopping of a federated run at the coordinator (crosscity/federation/early_stop.py)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest

from crosscity.core.best_model import BestModel
from crosscity.federation import protocol as p
from crosscity.federation.client import Refused
from crosscity.federation.early_stop import EarlyStop, check_sums
from crosscity.federation.wire import Message
from tests.helpers.federation import CoordinatorThread, ScriptedCity, run_config
from tests.unit.test_federation_coordinator import N, all_exchange, started


def sums(rmse: float, count: float = 100.0) -> dict[str, float]:
    """A pass whose RMSE is `rmse` over `count` values."""
    return {
        "se": rmse**2 * count,
        "ae": rmse * count,
        "p_se": 0.0,
        "p_ae": 0.0,
        "count": count,
        "n_windows": 4,
    }


def test_a_step_is_decided_once_every_city_reported_it_on_the_pooled_rmse() -> None:
    early = EarlyStop(2, BestModel(patience=2))
    assert early.report(0, 10, sums(3.0)) == []  # city 1 has not reported step 10 yet
    [(step, rmse, decision)] = early.report(1, 10, sums(4.0, count=300))
    assert step == 10 and rmse == pytest.approx(math.sqrt((9 * 100 + 16 * 300) / 400))
    assert decision.improved and not decision.stop
    early.report(0, 20, sums(5.0))
    early.report(0, 30, sums(5.0))
    [(step, _, decision)] = early.report(1, 30, sums(5.0))  # 30 complete: 20 (city 1 skipped it) drops
    assert step == 30 and not decision.improved and not decision.stop and 20 not in early.reports
    assert early.report(1, 20, sums(1.0)) == []  # a pass older than a decided one counts no more
    early.report(0, 40, sums(6.0))
    [(_, _, decision)] = early.report(1, 40, sums(6.0))
    assert decision.stop and early.stop_step == 40 and early.best.best_step == 10
    assert early.report(0, 50, sums(0.1)) == []  # stopped: nothing moves it any more

    again = EarlyStop(2, BestModel(patience=2))
    again.load_state_dict(early.state_dict())
    assert (again.stop_step, again.decided, again.best.best_step) == (40, 40, 10)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ({**sums(1.0), "se": math.nan}, "se=nan: expected a finite number"),
        ({**sums(1.0), "count": -1.0}, "count=-1.0: expected >= 0"),
        ({**sums(1.0), "ae": "1"}, "ae='1': expected a finite number"),
        ({"se": 1.0}, "validation sums have keys ['se']"),
    ],
)
def test_a_peer_s_bad_sums_are_refused_with_the_key(bad: dict, why: str) -> None:
    with pytest.raises(ValueError, match=re_escape(why)):
        check_sums(bad)


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_the_coordinator_ends_the_run_in_a_committed_round_after_patience(tmp_path: Path) -> None:
    cfg = run_config(tmp_path, 2, 1, "wan.algorithm=average", "train.patience=1", "train.eval_every=10")
    service = CoordinatorThread(tmp_path)
    try:
        group: list[ScriptedCity] = started(tmp_path, cfg, 2)
        grads = [np.zeros(N, np.float32), np.zeros(N, np.float32)]
        for step, rmse in ((10, 3.0), (20, 3.5)):  # no improvement at 20: patience 1 is used up
            for city in group:
                city.agent.report_validation(step, sums(rmse))  # delivered with the next heartbeat
            time.sleep(5 * cfg.wan.heartbeat_s)
            replies = all_exchange(group, grads, step // 10 - 1)
            finish = [r[0].fields["finish"] for r in replies]
            assert finish == [step == 20] * 2, (step, finish)
        with pytest.raises(Refused, match="validation sum se=-1.0: expected >= 0"):
            group[0].agent.control.call(
                Message(p.VALIDATION, {"step": 30, "sums": sums(1.0) | {"se": -1.0}}), 5
            )
        events = (tmp_path / "coordinator" / "events.jsonl").read_text()
        assert '"early_stop"' in events and '"best_step": 10' in events
    finally:
        for city in locals().get("group", []):
            city.close()
        service.stop()
