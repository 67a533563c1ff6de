"""The chaos benchmark in miniature: three faults on the emulated WAN, one of them a city's link cut
(the fault the local-launcher tests cannot make), and the run still ends well.

3 cities x 1 rank in network namespaces, the coordinator on the hub; city 1 is cut off the WAN,
city 2 is killed, the coordinator is killed. Asserts: the run exits 0; every fault was survived
(the faulted city - for the coordinator, some city - took part in a committed round after it);
the healthy city kept stepping through each fault. Needs root: skipped elsewhere, except in CI
(CI=true) where a missing privilege is a failure. Own prefix, subnet and queue: no collision with
`bench wan` (cc), `bench chaos` (ccx) or test_wan_emulator.py (cct).
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from crosscity.bench.chaos.faults import (
    CUT_LINK,
    KILL_CITY,
    KILL_COORDINATOR,
    KINDS,
    OUTAGES,
    Fault,
    PlanShape,
    plan_faults,
)
from crosscity.bench.chaos.outcome import timelines
from crosscity.bench.chaos.results_report import write_results
from crosscity.bench.chaos.run_bench import METHOD, _parser, report_only, run_chaos
from crosscity.bench.wan.emulator import WanEmulator
from crosscity.train.observe.metrics_log import read_records

PREFIX, SUBNET, QUEUE = "cxt", "10.78.1.0/24", 7781
TIMING = ["wan.heartbeat_s=0.2", "wan.dead_after_s=1.0", "wan.round_timeout_s=3.0"]

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("CI") != "true", reason="needs root for network namespaces"
)


def test_the_seeded_plan_is_reproducible_balanced_and_keeps_cities_healthy() -> None:
    shape = PlanShape()
    plan = plan_faults(0, cities=4, ranks=2, shape=shape)
    assert plan == plan_faults(0, cities=4, ranks=2, shape=shape)
    assert plan != plan_faults(1, cities=4, ranks=2, shape=shape)
    assert len(plan) == 24 and all(sum(f.kind == k for f in plan) == 4 for k in KINDS)
    assert [f.at_s for f in plan] == sorted(f.at_s for f in plan) and plan[0].at_s >= shape.start_s
    for f in plan:
        if f.kind in OUTAGES:
            assert shape.outage_s[0] <= f.duration_s <= shape.outage_s[1], f
        under = {
            g.city
            for g in plan
            if g.city is not None and g.at_s <= f.at_s < g.at_s + g.duration_s + shape.recovery_s
        }
        assert len(under) <= shape.max_down, f"{len(under)} cities under a fault at {f.at_s} s"
    with pytest.raises(ValueError, match="must stay healthy"):
        plan_faults(0, cities=2, ranks=1)


@needs_root
def test_three_faults_with_a_link_cut_are_survived_and_the_healthy_city_keeps_stepping(
    small_dataset: Path, tmp_path: Path
) -> None:
    faults = [
        Fault(CUT_LINK, at_s=4.0, city=1, duration_s=10.0),
        Fault(KILL_CITY, at_s=6.0, city=2),
        Fault(KILL_COORDINATOR, at_s=20.0),
    ]
    overrides = [
        f"data.dir={small_dataset}",
        "data.cities=centre,east,north",
        "topology.cities=3",
        "topology.ranks_per_city=1",
        "model.hidden=32",
        # The faults end ~30 s in: the healthy city must still be stepping then, and the cut-off city,
        # which trains on alone without waiting for rounds (about twice as fast here, where the cities
        # share the cores), must still have steps left when its link is back.
        "train.steps=2500",
        "train.eval_every=0",
        "train.max_val_windows=200",
        "train.checkpoint_every=25",
        "wan.sync_every=10",
        *METHOD,
        *TIMING,
    ]
    with WanEmulator(3, 50.0, 20.0, prefix=PREFIX, subnet=SUBNET, queue=QUEUE) as wan:
        run = run_chaos(wan, tmp_path / "ci", overrides, faults, label="ci")
    assert run.exit_code == 0, (tmp_path / "ci" / "logs" / "launcher.log").read_text()[-3000:]
    for r in run.results:
        assert r.fault.injected is not None, f"{r.fault.describe()} was never injected: the run ended first"
        assert r.survived, f"{r.fault.describe()}: no committed round with it after the fault ({r})"
    cut, killed = run.results[0], run.results[1]
    assert cut.detect_s is not None and cut.detect_s < 10.0, cut  # silent while its link was down
    # Restarted after the coordinator was: not held at the start gate for wan.start_timeout_s (300 s).
    assert killed.back_s is not None and killed.back_s < 120.0, killed
    # The healthy city (0) stepped during each city fault and the coordinator outage.
    line = timelines(read_records(tmp_path / "ci"))[0]
    for r in run.results:
        t0 = r.fault.injected
        assert t0 is not None and r.back_s is not None
        steps = [s for t, s, _ in line.steps if t0 <= t <= t0 + r.back_s]
        assert len(steps) >= 10, f"city 0 made {len(steps)} steps during {r.fault.describe()} ({r})"
    assert run.stats is not None and run.stats.final_rmse is not None  # the run's result exists
    # RESULTS.md again from results.json and the run directory alone: the same file
    results, argv = (
        tmp_path / "RESULTS.md",
        ["--cities", "3", "--ranks-per-city", "1", "--out", str(tmp_path)],
    )
    write_results(results, argv, _parser().parse_args(argv), [run], overrides, datetime.now(UTC))
    written = results.read_text()
    assert "| cut_link | 1 |" in written
    assert report_only(tmp_path, results) == 0 and results.read_text() == written
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert PREFIX not in listed  # the emulator left nothing behind
