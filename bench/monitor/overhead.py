"""Cost of the telemetry sampler on a training-like loop: sampler on vs off, same process.

Why this shape: the sampler is a thread in the training process, so its cost is GIL and core
time taken from the step. Blocks of steps with the sampler off / on (at several intervals) are
interleaved in a seeded random order and repeated, and each "on" block is compared with the
"off" blocks of the same repetition, so machine-load drift cancels. The direct per-sample cost
is also timed: cost / interval is what the sampler can at most take from one core.

    python -m bench.monitor.overhead --reps 7 --block-s 2 --intervals 5 0.1 0.01
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from crosscity.train.distributed.topology import Topology
from crosscity.train.observe.gpu_monitor import GpuMonitor
from crosscity.train.observe.metrics_log import MetricsLog


def make_step(seed: int) -> tuple[nn.Module, Callable[[], None]]:
    """A forward/backward/AdamW step of an MLP shaped like the demo's (48 h x 12 inputs -> 24 h)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(48 * 12, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 24)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 48, 12), torch.randn(64, 24)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()

    return model, step


def run_block(step: Callable[[], None], seconds: float) -> tuple[float, float]:
    """(wall, process CPU) seconds per step over a block of about `seconds`.

    Process CPU time includes the sampler thread but not the other tenants of a shared machine,
    so its ratio is the steadier of the two on a loaded host.
    """
    n, start, cpu = 0, time.perf_counter(), time.process_time()
    while (elapsed := time.perf_counter() - start) < seconds:
        step()
        n += 1
    return elapsed / n, (time.process_time() - cpu) / n


def sample_cost(mon: GpuMonitor, n: int = 200) -> tuple[float, str]:
    """(seconds per sample including the sink's JSONL write, what was sampled)."""
    mon._open()
    what = f"NVML: {len(mon.devices)} GPU(s)" if mon.nvml is not None else "no GPU: host samples only"
    start = time.perf_counter()
    for _ in range(n):
        for record in mon.sample():
            mon.sink(record)
    cost = (time.perf_counter() - start) / n
    mon._close()
    return cost, what


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--block-s", type=float, default=2.0, help="seconds per block of steps")
    ap.add_argument(
        "--intervals", type=float, nargs="+", default=[5.0, 0.1, 0.01], help="sampler periods (s)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    ap.add_argument("--fake-gpus", type=int, default=0, help="also time the Python side of N GPU samples")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    _, step = make_step(args.seed)
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="monitor-bench-"))
    log = MetricsLog(tmp / "metrics" / "rank0.jsonl", Topology(0, 1, 0, 1))

    def sink(record: dict) -> None:  # the trainer's wiring
        log.write(**record)

    cost, mode = sample_cost(GpuMonitor(sink, 1.0))
    print(f"{mode}; one sample + JSONL write: {cost * 1e6:.1f} us", flush=True)
    if args.fake_gpus:
        from tests.fake_pynvml import FakeGpu, FakeNvml, typical_values

        fake = FakeNvml([FakeGpu(f"GPU-{i}", values=typical_values()) for i in range(args.fake_gpus)])
        fake_cost, _ = sample_cost(GpuMonitor(sink, 1.0, nvml=fake))
        print(f"Python side of {args.fake_gpus} GPU samples + host, fake NVML: {fake_cost * 1e6:.1f} us")

    for _ in range(20):  # warm-up: allocator, caches, CPU clocks
        step()
    modes = ["off", *args.intervals]
    wall: dict[str, list[float]] = {str(m): [] for m in modes}
    cpu: dict[str, list[float]] = {str(m): [] for m in modes}
    t_start = time.perf_counter()
    total = args.reps * len(modes)
    for rep in range(args.reps):
        order = modes[:]
        rng.shuffle(order)
        for m in order:
            mon = None if m == "off" else GpuMonitor(sink, float(m)).start()
            w, c = run_block(step, args.block_s)
            wall[str(m)].append(w)
            cpu[str(m)].append(c)
            if mon is not None:
                mon.stop()
        done = (rep + 1) * len(modes)
        elapsed = time.perf_counter() - t_start
        eta = elapsed / done * (total - done)
        print(f"rep {rep + 1}/{args.reps}: {done / elapsed:.2f} blocks/s, ETA {eta:.0f} s", flush=True)
    log.close()

    def overhead(per_mode: dict[str, list[float]], m: float) -> list[float]:
        """Percent slower than the sampler-off block of the same repetition, sorted."""
        return sorted(100 * (on / ref - 1) for on, ref in zip(per_mode[str(m)], per_mode["off"], strict=True))

    rows = []
    for m in args.intervals:
        w, c = overhead(wall, m), overhead(cpu, m)
        rows.append(
            {
                "interval_s": m,
                "wall_pct_median": statistics.median(w),
                "wall_pct_range": [w[0], w[-1]],
                "cpu_pct_median": statistics.median(c),
                "cpu_pct_range": [c[0], c[-1]],
                "bound_pct": 100 * cost / m,
            }
        )
    print(
        f"\nstep, sampler off: {1e3 * statistics.median(wall['off']):.3f} ms wall, "
        f"{1e3 * statistics.median(cpu['off']):.3f} ms CPU (medians of {args.reps} blocks)"
    )
    print("| interval (s) | wall: median [min, max] | CPU time: median [min, max] | sample cost / interval |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['interval_s']:g} | {r['wall_pct_median']:+.2f} % [{r['wall_pct_range'][0]:+.1f}, "
            f"{r['wall_pct_range'][1]:+.1f}] | {r['cpu_pct_median']:+.2f} % [{r['cpu_pct_range'][0]:+.1f}, "
            f"{r['cpu_pct_range'][1]:+.1f}] | {r['bound_pct']:.3f} % |"
        )
    if args.out:
        result = {
            "mode": mode,
            "sample_cost_us": cost * 1e6,
            "step_ms_off": 1e3 * statistics.median(wall["off"]),
            "rows": rows,
            "argv": sys.argv[1:],
        }
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
