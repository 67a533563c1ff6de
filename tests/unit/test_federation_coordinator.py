"""The coordinator over real loopback sockets: rounds, quorum, weights, outer step, restart, refusals."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from crosscity.bench.chaos.faults import read_events
from crosscity.federation import certs
from crosscity.federation import protocol as p
from crosscity.federation.audit import verify
from crosscity.federation.client import Refused, Unreachable
from crosscity.federation.endpoints import certs_dir
from crosscity.federation.wire import Message
from tests.helpers.federation import CoordinatorThread, ScriptedCity, global_of, run_config
from tests.unit.test_federation_outer import reference

N = 10


def initial() -> np.ndarray:
    return np.arange(N, dtype=np.float32) / 10


def started(run_dir: Path, cfg, cities: int, **kw) -> list[ScriptedCity]:
    group = [ScriptedCity(run_dir, cfg, c, N, **kw) for c in range(cities)]
    for city in group:
        city.join(initial())
    with ThreadPoolExecutor(cities) as pool:
        list(pool.map(lambda c: c.start(), group))
    return group


def all_exchange(group: list[ScriptedCity], grads: list[np.ndarray], version: int) -> list[list[Message]]:
    with ThreadPoolExecutor(len(group)) as pool:
        return list(pool.map(lambda cg: cg[0].exchange(cg[1], version, 10), zip(group, grads, strict=True)))


def test_diloco_round_is_the_outer_nesterov_step_of_the_mean(tmp_path: Path) -> None:
    cfg = run_config(tmp_path, 2, 2, "wan.algorithm=diloco", "wan.outer_lr=0.7", "wan.outer_momentum=0.9")
    service = CoordinatorThread(tmp_path)
    try:
        group = started(tmp_path, cfg, 2)
        grads = [np.full(N, 0.5 * (c + 1), np.float32) for c in range(2)]  # equal weights: mean 0.75
        first = all_exchange(group, grads, 0)
        for replies in first:
            assert {r.fields["status"] for r in replies} == {p.COMMITTED}
            assert replies[0].fields["participants"] == [0, 1] and replies[0].fields["version"] == 1
            # first Nesterov step: buf = g, update = g + mu g = 1.9 g
            np.testing.assert_allclose(global_of(replies), initial() - 0.7 * 1.9 * 0.75, rtol=1e-6)
        second = all_exchange(group, grads, 1)
        # buf = 0.9 * 0.75 + 0.75, update = 0.75 + 0.9 buf
        buf = 0.9 * 0.75 + 0.75
        want = initial() - 0.7 * 1.9 * 0.75 - 0.7 * (0.75 + 0.9 * buf)
        np.testing.assert_allclose(global_of(second[0]), want, rtol=1e-5)
        assert np.array_equal(global_of(second[0]), global_of(second[1]))  # every city: the same bits
        trail = verify(tmp_path / "audit.jsonl")  # who connected, joined, and what was averaged
        assert trail.ok, trail.problem
        events = [json.loads(line)["event"] for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert events.count("round") == 2 and events.count("update") == 4 and events.count("join") == 2
        assert events.count("connection") >= 6  # every rank's data link and each city's two control links
    finally:
        for city in locals().get("group", []):
            city.close()
        service.stop()


def test_a_silent_city_is_not_waited_for_and_a_late_one_misses_the_round(tmp_path: Path) -> None:
    cfg = run_config(tmp_path, 3, 1, "wan.algorithm=average", "wan.min_cities=2")
    service = CoordinatorThread(tmp_path)
    try:
        group = started(tmp_path, cfg, 3)
        group[2].agent.stop()  # city 2 hangs: no more heartbeats
        start = time.monotonic()
        replies = all_exchange(group[:2], [np.ones(N, np.float32), 3 * np.ones(N, np.float32)], 0)
        waited = time.monotonic() - start
        assert replies[0][0].fields["participants"] == [0, 1]
        np.testing.assert_allclose(global_of(replies[0]), initial() - 2.0, rtol=1e-6)  # FedAvg: the mean
        assert waited < cfg.wan.round_timeout_s + 1.0  # never the full timeout per silent city and more
        late = group[2].exchange(np.ones(N, np.float32), 0, 10)[0]
        assert late.fields["status"] in (p.MISSED, p.SKIPPED) and late.fields["participants"] == []
        np.testing.assert_allclose(group[2].fetch()[0], initial() - 2.0, rtol=1e-6)  # it can heal
    finally:
        for city in locals().get("group", []):
            city.close()
        service.stop()


def test_no_quorum_skips_the_round_within_the_timeout_and_moves_nothing(tmp_path: Path) -> None:
    cfg = run_config(tmp_path, 3, 1, "wan.algorithm=average", "wan.min_cities=2")
    service = CoordinatorThread(tmp_path)
    try:
        group = started(tmp_path, cfg, 3)
        start = time.monotonic()
        reply = group[0].exchange(np.ones(N, np.float32), 0, 10)[0]  # the others are busy: alone
        assert reply.fields["status"] == p.SKIPPED and "no quorum" in reply.fields["reason"]
        assert cfg.wan.round_timeout_s - 0.1 <= time.monotonic() - start < cfg.wan.round_timeout_s + 1.0
        assert group[0].fetch() == (pytest.approx(initial()), 0)
    finally:
        for city in locals().get("group", []):
            city.close()
        service.stop()


def restarted(
    service: CoordinatorThread, group: list, run_dir: Path, heartbeat_s: float
) -> tuple[CoordinatorThread, list]:
    """Another coordinator on the stopped one's state, and what each city fetches from it: the links
    reconnect to the new address by themselves, and heartbeats make the cities live again (a restored
    coordinator waits for nobody it has not heard from since: a round before that is a city's alone)."""
    service.stop()
    service = CoordinatorThread(run_dir)
    fetched = [city.fetch() for city in group]
    deadline = time.monotonic() + 15
    while True:
        seen = read_events(run_dir)
        after = seen[max(i for i, e in enumerate(seen) if e["event"] == "restored") :]
        if {e.get("city") for e in after if e["event"] == "live"} >= {city.city for city in group}:
            return service, fetched
        assert time.monotonic() < deadline, "the cities did not heartbeat to the restarted coordinator"
        time.sleep(heartbeat_s)


def test_a_restarted_coordinator_resumes_from_its_state(tmp_path: Path) -> None:
    cfg = run_config(tmp_path, 2, 2, "wan.algorithm=diloco")
    service = CoordinatorThread(tmp_path)
    group = started(tmp_path, cfg, 2)
    try:
        all_exchange(group, [np.ones(N, np.float32), np.ones(N, np.float32)], 0)
        before = group[0].fetch()
        service, (after, _) = restarted(service, group, tmp_path, cfg.wan.heartbeat_s)
        assert after[1] == before[1] == 1 and np.array_equal(after[0], before[0])
        replies = all_exchange(group, [np.ones(N, np.float32), np.ones(N, np.float32)], 1)
        assert replies[0][0].fields["status"] == p.COMMITTED and replies[0][0].fields["version"] == 2
    finally:
        for city in group:
            city.close()
        service.stop()


def test_a_city_is_heard_leaving_after_a_coordinator_restart(tmp_path: Path) -> None:
    """The control connection (register, final, leave) idles between its calls, and a coordinator that
    restarted meanwhile has closed it: the next call must go out on a new connection. On the stale one,
    preempted cities read as silent and their final reports were lost (chaos bench)."""
    cfg = run_config(tmp_path, 2, 1, "wan.algorithm=average")
    service = CoordinatorThread(tmp_path)
    group = started(tmp_path, cfg, 2)
    try:
        service, _ = restarted(service, group, tmp_path, cfg.wan.heartbeat_s)
        group[0].agent.leave("preempted")
        leaves = [e for e in read_events(tmp_path) if e["event"] == "leave"]
        assert [(e["city"], e["reason"]) for e in leaves] == [(0, "preempted")]
    finally:
        for city in group:
            city.close()
        service.stop()


def test_fedadam_state_survives_a_coordinator_restart(tmp_path: Path) -> None:
    """diloco + outer_optimizer=adam: the second round after a restart is the second FedAdam step."""
    cfg = run_config(tmp_path, 2, 1, "wan.algorithm=diloco", "wan.outer_optimizer=adam", "wan.outer_lr=0.01")
    service = CoordinatorThread(tmp_path)
    group = started(tmp_path, cfg, 2)
    grads = [np.linspace(-1, 1, N, dtype=np.float32) * (c + 1) for c in range(2)]  # mean: 1.5 x linspace
    try:
        all_exchange(group, grads, 0)
        service, _ = restarted(service, group, tmp_path, cfg.wan.heartbeat_s)
        second = all_exchange(group, grads, 1)
        assert second[0][0].fields["version"] == 2
        want = reference([1.5 * np.linspace(-1, 1, N)] * 2, initial(), yogi=False)
        np.testing.assert_allclose(global_of(second[0]), want, rtol=1e-5, atol=1e-7)
    finally:
        for city in group:
            city.close()
        service.stop()


def test_scaffold_control_variate_moves_by_the_mean_delta_times_participation(tmp_path: Path) -> None:
    """c += |S|/N x the participants' weighted mean delta c_i; each participant gets c, and c persists."""
    cfg = run_config(tmp_path, 3, 2, "wan.algorithm=average", "wan.scaffold=true", "wan.min_cities=2")
    service = CoordinatorThread(tmp_path)
    try:
        group = [ScriptedCity(tmp_path, cfg, c, N, n_extra=N) for c in range(3)]
        for city in group:
            city.join(initial())
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda c: c.start(), group))
        deltas = [np.full(N, c + 1.0, np.float32) for c in range(3)]
        zero = np.zeros(N, np.float32)
        with ThreadPoolExecutor(3) as pool:
            first = list(pool.map(lambda c: c.exchange(zero, 0, 10, extra=deltas[c.city]), group))
        c1 = np.concatenate([r.arrays[1] for r in first[2]])  # full mode: [global stripe, c stripe]
        np.testing.assert_allclose(c1, np.full(N, 2.0), rtol=1e-6)  # all 3 of 3: the mean of 1, 2, 3
        group[2].agent.stop()  # city 2 goes silent: the next round is cities 0 and 1
        with ThreadPoolExecutor(2) as pool:
            second = list(pool.map(lambda c: c.exchange(zero, 1, 10, extra=deltas[c.city]), group[:2]))
        assert second[0][0].fields["participants"] == [0, 1]
        c2 = np.concatenate([r.arrays[1] for r in second[0]])
        np.testing.assert_allclose(c2, np.full(N, 2.0 + 2 / 3 * 1.5), rtol=1e-6)
        state = json.loads((tmp_path / "coordinator" / "state.json").read_text())
        with np.load(tmp_path / "coordinator" / state["arrays"]) as npz:
            assert np.array_equal(npz["control"], c2)  # persisted with the global model
    finally:
        for city in locals().get("group", []):
            city.close()
        service.stop()


def test_bad_requests_are_refused_with_a_reason(tmp_path: Path) -> None:
    cfg = run_config(tmp_path, 2, 1, "wan.algorithm=average")
    service = CoordinatorThread(tmp_path)
    try:
        group = started(tmp_path, cfg, 2)
        link = group[0].links[0]
        fields = {"fragment": 0, "stripe": 0, "attempt": 9, "base_version": 0, "steps": 10}
        bad = np.ones(N, np.float32)
        bad[3] = np.nan
        with pytest.raises(Refused, match="non-finite"):
            link.call(Message(p.EXCHANGE, fields, [bad]), 10)
        with pytest.raises(Refused, match="do not match the expected"):
            link.call(Message(p.EXCHANGE, fields, [np.ones(N + 1, np.float32)]), 10)
        with pytest.raises(Refused, match="fragment 3"):
            link.call(Message(p.EXCHANGE, {**fields, "fragment": 3}, [bad]), 10)
        with pytest.raises(Refused, match="is not a request"):
            link.call(Message(p.WELCOME, {"epoch": 1}), 10)
        other_model = Message(p.REGISTER, {"name": "x", "n_params": N + 1, "n_extra": 0, "initial_sha": ""})
        other_model.fields.update(versions=[0], step=0)
        with pytest.raises(Refused, match="another model config"):
            group[1].agent.control.call(other_model, 10)
    finally:
        for city in locals().get("group", []):
            city.close()
        service.stop()


def test_a_city_revoked_mid_run_is_cut_off_at_once_and_not_waited_for(tmp_path: Path) -> None:
    cfg = run_config(tmp_path, 3, 1, "wan.algorithm=average", "wan.min_cities=2", "wan.round_timeout_s=30")
    service = CoordinatorThread(tmp_path)
    try:
        group = started(tmp_path, cfg, 3)
        certs.revoke(certs_dir(cfg, tmp_path), "city2")  # the operator: `crosscity certs revoke DIR city2`
        start = time.monotonic()
        with pytest.raises((Unreachable, Refused)):  # its open link is closed; a new handshake is refused
            for _ in range(100):
                group[2].links[0].call(Message(p.FETCH, {"fragment": 0, "stripe": 0}), 5)
                time.sleep(0.05)
        assert time.monotonic() - start < 5.0, "the revocation took effect within ticks, not at a reconnect"
        replies = all_exchange(group[:2], [np.ones(N, np.float32), 3 * np.ones(N, np.float32)], 0)
        assert replies[0][0].fields["participants"] == [0, 1]
        assert time.monotonic() - start < cfg.wan.round_timeout_s, "the round did not wait for city 2"
        records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
        left = [(r["fields"]["city"], r["fields"]["reason"]) for r in records if r["event"] == "leave"]
        assert left == [("city2", "revoked")]
        assert verify(tmp_path / "audit.jsonl").ok
    finally:
        for city in locals().get("group", []):
            city.close()
        service.stop()
