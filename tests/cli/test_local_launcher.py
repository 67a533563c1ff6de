"""Real multi-process runs through the local launcher (gloo on CPU)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from crosscity.core.rank_pids import rank_pids
from tests.helpers.data import flip_byte
from tests.helpers.runs import (
    CONFIG,
    QUICK,
    crosscity,
    final_params,
    start_crosscity,
    wait_for_step,
)


def test_hierarchical_h1_equals_flat_data_parallel(small_dataset: Path, tmp_path: Path) -> None:
    """2 cities x 2 ranks, H=1, plain SGD: averaging every step == one flat all-reduce over 4 ranks."""
    # no learning-rate warm-up: in 6 steps it would keep the steps too small to tell H=3 from flat
    common = [
        f"data.dir={small_dataset}",
        "data.cities=north,east",
        "topology.cities=2",
        "optim.name=sgd",
        "optim.lr=0.05",
        "optim.warmup_steps=0",
        "train.steps=6",
        *QUICK,
    ]
    for algo in ("average", "flat"):
        r = crosscity(
            "run",
            str(CONFIG),
            *common,
            f"wan.algorithm={algo}",
            *(["security.insecure=true"] if algo == "flat" else []),  # flat is plain gloo across cities
            "wan.sync_every=1",
            f"train.run_dir={tmp_path / algo}",
        )
        assert r.returncode == 0, r.stderr[-3000:]
    hier, flat = final_params(tmp_path / "average"), final_params(tmp_path / "flat")
    for name in hier:
        torch.testing.assert_close(hier[name], flat[name], rtol=1e-5, atol=1e-6)
    # and they really trained: different data per city means H=20 gives a different model
    r = crosscity(
        "run",
        str(CONFIG),
        *common,
        "wan.algorithm=average",
        "wan.sync_every=3",
        f"train.run_dir={tmp_path / 'h3'}",
    )
    assert r.returncode == 0, r.stderr[-3000:]
    h3 = final_params(tmp_path / "h3")
    assert any(not torch.allclose(h3[n], flat[n], atol=1e-6) for n in flat)


def test_bad_config_is_one_line_exit_2(small_dataset: Path, tmp_path: Path) -> None:
    r = crosscity("run", str(CONFIG), "wan.codec=int3", f"train.run_dir={tmp_path}")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "wan.codec='int3': allowed values are none, fp16, bf16, int8, int4" in r.stderr
    r = crosscity("run", str(CONFIG), "wan.sync_evry=3", f"train.run_dir={tmp_path}")
    assert r.returncode == 2 and "unknown key 'wan.sync_evry'" in r.stderr and "Traceback" not in r.stderr


def test_missing_data_path_is_one_line_exit_2(tmp_path: Path) -> None:
    r = crosscity("run", str(CONFIG), f"data.dir={tmp_path / 'nowhere'}", f"train.run_dir={tmp_path / 'run'}")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert "nowhere" in r.stderr and "crosscity prep" in r.stderr


def test_a_failed_rank_stops_a_world_spanning_baseline(small_dataset: Path, tmp_path: Path) -> None:
    """flat runs one gloo world over every city: a dead rank there cannot be healed, the run stops."""
    run_dir = tmp_path / "run"
    forever = [
        f"data.dir={small_dataset}",
        "wan.algorithm=flat",
        "security.insecure=true",
        "train.steps=100000",
        *QUICK,
    ]
    launcher = start_crosscity("run", str(CONFIG), *forever, f"train.run_dir={run_dir}")
    try:
        wait_for_step(run_dir, rank=5, step=3)
        pids = rank_pids(run_dir)
        assert len(pids) == 8
        os.kill(pids[(2, 1)], signal.SIGKILL)  # global rank 5
        start = time.monotonic()
        _, err = launcher.communicate(timeout=30)
        assert time.monotonic() - start < 30
    finally:
        launcher.kill()
    assert launcher.returncode != 0
    assert "rank 5 (city 2, local rank 1) failed: killed by SIGKILL" in err
    time.sleep(0.5)
    assert rank_pids(run_dir) == {}, "orphaned rank processes remain"


@pytest.mark.parametrize("algorithm", ["diloco"])  # streaming: tests/dist/test_wan_streaming.py (resume)
def test_a_stopped_run_resumes_on_the_same_trajectory(
    small_dataset: Path, tmp_path: Path, algorithm: str
) -> None:
    """SIGTERM to the launcher: every city stops right after its next round, the launcher exits 75;
    the same command again resumes, and the result equals an uninterrupted run bit for bit."""
    common = [
        f"data.dir={small_dataset}",
        "data.cities=centre,east",
        "topology.cities=2",
        f"wan.algorithm={algorithm}",
        "wan.sync_every=4",
        "wan.fragments=2",
        "wan.overlap_steps=1",
        "train.steps=60",
        *QUICK,
    ]
    r = crosscity("run", str(CONFIG), *common, f"train.run_dir={tmp_path / 'straight'}")
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir = tmp_path / "interrupted"
    args = ("run", str(CONFIG), *common, f"train.run_dir={run_dir}")
    launcher = start_crosscity(*args)
    wait_for_step(run_dir, rank=2, step=10)
    launcher.send_signal(signal.SIGTERM)
    out, err = launcher.communicate(timeout=240)
    assert launcher.returncode == 75, err[-3000:]
    assert "run the same command again to resume" in out
    events = (run_dir / "metrics" / "rank2.jsonl").read_text()
    assert '"event": "preempt"' in events and not (run_dir / "final" / "model.pt").exists()
    r = crosscity(*args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert '"event": "resume"' in (run_dir / "metrics" / "rank2.jsonl").read_text()
    straight, interrupted = final_params(tmp_path / "straight"), final_params(run_dir)
    for name in straight:
        torch.testing.assert_close(interrupted[name], straight[name], rtol=0, atol=0)


def test_run_refuses_a_corrupted_dataset(small_dataset: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(small_dataset, data)
    shard = sorted((data / "west").glob("*.h5"))[0]
    flip_byte(shard)
    r = crosscity("run", str(CONFIG), f"data.dir={data}", f"train.run_dir={tmp_path / 'run'}")
    assert r.returncode == 2, r.stderr
    assert shard.name in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "metrics").exists()  # no rank was started


def test_streaming_merge_when_ready_agrees_within_each_city(small_dataset: Path, tmp_path: Path) -> None:
    """Through the trainer: the "landed" votes ride in the gradient all-reduce, so both ranks of a
    city merge every fragment round at the same step, never before tau and never after H."""
    run_dir = tmp_path / "when_ready"
    r = crosscity(
        "run",
        str(CONFIG),
        f"data.dir={small_dataset}",
        "data.cities=north,east",
        "topology.cities=2",
        "train.steps=40",
        "wan.algorithm=streaming",
        "wan.sync_every=8",
        "wan.fragments=2",
        "wan.overlap_steps=1",
        "wan.merge=when_ready",
        f"train.run_dir={run_dir}",
        *QUICK,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    merges: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
    for rank in range(4):
        for line in (run_dir / "metrics" / f"rank{rank}.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec["kind"] == "wan" and "merged_after_steps" in rec:
                merges.setdefault((rec["city"], rec["round"], rec["fragment"]), []).append(
                    (rec["step"], rec["merged_after_steps"])
                )
    assert len(merges) >= 2 * 8  # both cities, 4 rounds of each of the 2 fragments in 40 steps
    for (_city, _round, _fragment), seen in merges.items():
        assert len(seen) == 2 and seen[0] == seen[1]  # the city's two ranks: same step, same delay
        assert 1 <= seen[0][1] <= 8
