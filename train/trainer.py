"""What one rank does: join the groups, train its city's data, meet the other cities over the WAN.

`run_rank` is restartable: when any city is preempted, every rank checkpoints at the same step;
the preempted city exits with EXIT_REQUEUE and the others start `run_rank` again in the next
rendezvous generation, resuming from their checkpoints once the requeued city is back.
"""

from __future__ import annotations

import contextlib
import random
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from crosscity.config.schema import Config, load_config
from crosscity.data_prep.verify import full_check, quick_check
from crosscity.train.best_model import BestModel
from crosscity.train.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from crosscity.train.data.batches import BatchStream
from crosscity.train.data.windows import CityWindows
from crosscity.train.distributed.process_groups import destroy_groups, init_groups, pick_backend, pick_device
from crosscity.train.distributed.rendezvous import (
    FINISHED_KEY,
    advance_generation,
    connect_store,
    generation,
    generation_store,
)
from crosscity.train.distributed.topology import Topology
from crosscity.train.evaluate import pool_metrics, score, window_options
from crosscity.train.init_from import (
    load_init_model,
    load_outer_state,
    previous_span_end,
    trained_on,
    windows_after,
)
from crosscity.train.models import build_model
from crosscity.train.observe.metrics_log import MetricsLog
from crosscity.train.observe.straggler import StragglerDetector
from crosscity.train.observe.telemetry import start_telemetry
from crosscity.train.optim import build_optimizer, build_schedule, proximal_term
from crosscity.train.run_summary import write_summary
from crosscity.train.wan.registry import build_sync
from crosscity.train.wan.sync import InterCitySync, WanRound

EXIT_REQUEUE = 75  # EX_TEMPFAIL: "checkpointed, requeue me"
RESTART = -1


def city_names(cfg: Config) -> list[str]:
    if cfg.data.cities:
        return list(cfg.data.cities)
    root = Path(cfg.data.dir)
    names = sorted(p.name for p in root.iterdir() if (p / "manifest.json").is_file()) if root.is_dir() else []
    if len(names) < cfg.topology.cities:
        raise FileNotFoundError(
            f"data.dir={root}: found {len(names)} prepared cities {names}, "
            f"topology.cities={cfg.topology.cities}; "
            "run `crosscity prep` first"
        )
    return names[: cfg.topology.cities]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class StopFlag:
    """Set by the requeue signal; read at step boundaries, never acted on inside the handler."""

    def __init__(self, signame: str) -> None:
        self.raised = False
        signal.signal(getattr(signal, f"SIG{signame}"), self._handler)

    def _handler(self, signum: int, frame: Any) -> None:
        self.raised = True


class StepInterval:
    """Sums of the per-step timings between two log lines."""

    KEYS = ("t_data", "t_compute", "t_lan", "t_wan", "t_step")

    def __init__(self) -> None:
        self.steps, self.samples = 0, 0
        self.totals = dict.fromkeys(self.KEYS, 0.0)

    def add(self, m: dict[str, float]) -> None:
        self.steps += 1
        self.samples += int(m["samples"])
        for k in self.KEYS:
            self.totals[k] += m[k]

    def means(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.totals.items()}


@dataclass
class RankState:
    step: int = 0
    samples: int = 0


class Trainer:
    """One rank's training loop; small methods so each phase can be read on its own."""

    def __init__(self, run_dir: Path, cfg: Config, topo: Topology, store: dist.Store, stop: StopFlag) -> None:
        self.run_dir, self.cfg, self.topo, self.stop = run_dir, cfg, topo, stop
        self.gen = generation(store)
        seed_everything(cfg.train.seed)  # same init on every rank of every city
        self.device = pick_device(cfg.train.device, topo.local_rank)
        backend = pick_backend(cfg.lan.backend, self.device)
        self.groups = init_groups(topo, generation_store(store, self.gen), backend)
        self.store = store

        self.city_name = city_names(cfg)[topo.city]
        city_dir = Path(cfg.data.dir) / self.city_name
        if cfg.data.verify == "full" and topo.local_rank == 0:
            full_check(city_dir)  # one rank hashes; the others check sizes and versions
        elif cfg.data.verify != "off":
            quick_check(city_dir)
        window = window_options(cfg.data)
        self.city_dir, self.window = city_dir, window
        self.train_ds = CityWindows(city_dir, split="train", **window)
        self.val_ds = CityWindows(city_dir, split="val", **window)
        data_seed = cfg.train.seed * 1_000_003 + topo.city
        self.batches = BatchStream(
            self.train_ds,
            topo.local_rank,
            topo.ranks_per_city,
            cfg.data.batch_size,
            data_seed,
            cfg.data.num_workers,
        )

        self.model = build_model(
            cfg.model, cfg.data.past_hours, self.train_ds.n_inputs, cfg.data.horizon_hours
        ).to(self.device)
        self.init_from = Path(cfg.train.init_from) if cfg.train.init_from else None
        if self.init_from:
            load_init_model(self.model, self.init_from)  # before the sync copies it as the global model
        self.init_params = parameters_to_vector(self.model.parameters()).detach().clone()
        self.optimizer = build_optimizer(cfg.optim, self.model)
        self.schedule = build_schedule(cfg.optim, self.optimizer, cfg.train.steps)
        seed_everything(cfg.train.seed + 7919 * topo.global_rank)  # distinct dropout noise per rank
        self.sync: InterCitySync = build_sync(cfg, self.model, self.optimizer, topo, self.groups, self.device)
        self.state = RankState()
        self.best = BestModel(cfg.train.patience, cfg.train.min_delta)
        self.best_params: torch.Tensor | None = None  # the global model of the best evaluation so far
        self.best_sums: dict[str, float] | None = None  # and this city's validation sums for it
        self.last_sums: dict[str, float] = {}  # this city's sums of the latest validation pass
        self.log = MetricsLog(run_dir / "metrics" / f"rank{topo.global_rank}.jsonl", topo)
        if self.init_from:
            outer = load_outer_state(self.sync, cfg, self.init_from)
            self.log.write(
                "event", event="init_from", message=f"model from {self.init_from}; outer state: {outer}"
            )
        # Who this rank sums gradients with: with Horovod, proof that its world is the city alone.
        reducer = self.sync.reducer
        self.log.write("lan", backend=cfg.lan.backend, lan_rank=reducer.rank, lan_size=reducer.size)
        self.interval = StepInterval()
        mon = cfg.monitor
        self.stragglers = StragglerDetector.per_check(
            mon.straggler_factor, mon.straggler_steps, cfg.train.log_every
        )
        self.telemetry = start_telemetry(cfg, run_dir, topo, self.device, self.log)
        self._resume()

    # ------------------------------------------------------------------ checkpoints

    def _ckpt_path(self) -> Path:
        return checkpoint_path(self.run_dir, self.topo.city, self.topo.local_rank)

    def _resume(self) -> None:
        state = load_checkpoint(self._ckpt_path())
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.best.load_state_dict(state["best"]["tracker"])
        self.best_params, self.best_sums = state["best"]["params"], state["best"]["sums"]
        self.sync.load_state_dict(state["sync"])
        self.batches.load_state_dict(state["batches"])
        self.state = RankState(**state["rank"])
        set_rng_state(state["rng"])
        self.log.step = self.state.step
        self.log.write(
            "event", event="resume", message=f"resumed at step {self.state.step} (generation {self.gen})"
        )

    def save(self) -> None:
        save_checkpoint(
            self._ckpt_path(),
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "best": {
                    "tracker": self.best.state_dict(),
                    "params": self.best_params,
                    "sums": self.best_sums,
                },
                "sync": self.sync.state_dict(),
                "batches": self.batches.state_dict(),
                "rank": vars(self.state).copy(),
                "rng": rng_state(),
            },
        )

    # ------------------------------------------------------------------ the loop

    def train_step(self) -> dict[str, float]:
        t0 = time.perf_counter()
        x, y, mask = (t.to(self.device, non_blocking=True) for t in self.batches.next())
        t1 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=False)
        pred = self.model(x)
        loss = (((pred - y) ** 2) * mask).sum() / mask.sum().clamp(min=1.0)
        objective = loss
        if self.cfg.wan.prox_mu > 0:
            objective = loss + proximal_term(self.model, self.sync.global_params(), self.cfg.wan.prox_mu)
        objective.backward()
        t2 = time.perf_counter()
        (votes,) = self.sync.sum_gradients([float(self.stop.raised)])
        t3 = time.perf_counter()
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        t4 = time.perf_counter()
        self.state.step += 1
        self.state.samples += len(x)
        self.log.step = self.state.step
        wan_round = self.sync.after_step(self.state.step, len(x))
        t5 = time.perf_counter()
        if wan_round is not None:
            self._log_round(wan_round)
        m = {
            "loss": float(loss.detach()),
            "votes": votes,
            "t_data": t1 - t0,
            "t_compute": (t2 - t1) + (t4 - t3),
            "t_lan": 0.0,
            "t_wan": t5 - t4,
            "t_step": t5 - t0,
            "samples": len(x),
        }
        m[f"t_{self.sync.gradient_link}"] += t3 - t2  # the gradient sum: LAN, or WAN for flat
        return m

    def _log_round(self, r: WanRound) -> None:
        self.log.write(
            "wan",
            round=r.round,
            bytes_sent=r.bytes_sent,
            bytes_recv=r.bytes_recv,
            seconds=r.seconds,
            codec=self.cfg.wan.codec,
            participants=r.participants,
            fragment=r.fragment,
            **r.extra,
        )

    @contextlib.contextmanager
    def _params(self, flat: torch.Tensor) -> Iterator[None]:
        """The model with these parameters for the duration of the block, then its own again."""
        own = parameters_to_vector(self.model.parameters()).detach().clone()
        with torch.no_grad():
            vector_to_parameters(flat.clone(), self.model.parameters())
        try:
            yield
        finally:
            with torch.no_grad():
                vector_to_parameters(own, self.model.parameters())

    def evaluate_city(self) -> dict[str, float]:
        """Scores the global model (the sync's copy of the last round). Each rank of the city scores 1/R
        of the validation windows and the sums meet over the LAN: a pass takes 1/R of the time and no
        rank idles in the next all-reduce meanwhile."""
        start = time.perf_counter()
        with self._params(self.sync.global_params()):
            sums = score(
                self.model,
                self.val_ds,
                max_windows=self.cfg.train.max_val_windows,
                part=self.topo.local_rank,
                parts=self.topo.ranks_per_city,
            ).totals()
        if self.topo.ranks_per_city > 1:
            keys = sorted(sums)
            total = torch.tensor([sums[k] for k in keys], dtype=torch.float64, device=self.device)
            dist.all_reduce(total, group=self.groups.city)
            sums = dict(zip(keys, total.tolist(), strict=True))
        if self.topo.local_rank == 0:
            seconds = time.perf_counter() - start
            metrics = pool_metrics([sums])
            self.log.write("eval", split="val", city_name=self.city_name, seconds=seconds, **metrics)
        return sums

    def run(self) -> int:
        cfg = self.cfg
        # Every city starts its step clock together: a city still loading would otherwise make the
        # others wait for it at their first WAN exchange.
        dist.barrier(group=self.groups.world)
        t_start, last_log = time.perf_counter(), time.perf_counter()
        while self.state.step < cfg.train.steps:
            m = self.train_step()
            t0 = time.perf_counter()
            stop, leaving = self.sync.agree_to_stop(m["votes"], self.stop.raised, self.state.step)
            vote_s = time.perf_counter() - t0
            m["t_wan"] += vote_s
            m["t_step"] += vote_s
            self.interval.add(m)
            if self.state.step % cfg.train.log_every == 0 or self.state.step == cfg.train.steps:
                self._log_interval(m["loss"])
                if self.topo.global_rank == 0 and time.perf_counter() - last_log > 5:
                    last_log = time.perf_counter()
                    progress(self.state.step, cfg.train.steps, time.perf_counter() - t_start, m["loss"])
            if stop:
                return self._stop_for_requeue(leaving)
            if cfg.train.checkpoint_every and self.state.step % cfg.train.checkpoint_every == 0:
                self.save()
            last = self.state.step == cfg.train.steps  # _finish evaluates the final model
            due = cfg.train.eval_every and self.state.step % cfg.train.eval_every == 0 and not last
            if due and self.validate():
                self.log.write("event", event="early_stop", message=f"stopped at step {self.state.step}")
                break
        return self._finish(time.perf_counter() - t_start)

    def validate(self) -> bool:
        """A validation pass that may select this model as the best one; True: stop early."""
        sums = self.last_sums = self.evaluate_city()
        world = self.pooled_validation(sums)
        pooled = pool_metrics([world])
        decision = self.best.update(self.state.step, pooled["rmse"])
        if decision.improved:
            self.best_params, self.best_sums = self.sync.global_params().clone(), sums
        if self.topo.global_rank == 0:
            best = {"best_step": self.best.best_step, "best_rmse": self.best.best_rmse}
            self.log.write("val_pooled", **pooled, sums=world, **best)
        return decision.stop

    def _new_hours(self) -> dict[str, Any]:
        """With train.init_from: this city's test windows that end after the previous run's data, scored
        by the initial and the final model (local rank 0; a small set)."""
        end = previous_span_end(self.init_from, self.city_name) if self.init_from else None
        if end is None or self.topo.local_rank != 0:
            return {}
        test = CityWindows(self.city_dir, split="test", **self.window)
        windows = windows_after(test, end)
        with self._params(self.init_params):
            before = score(self.model, test, windows=windows).totals()
        after = score(self.model, test, windows=windows).totals()
        return {"new_hours": {"after_time": end, "before": before, "after": after}}

    def pooled_validation(self, city_sums: dict[str, float]) -> dict[str, float]:
        """The validation sums of all cities, the same on every rank (so every rank takes the same
        best-model and early-stopping decision): one small all-reduce over the world, local rank 0 of
        each city contributing its city's sums. The one exchange of validation results."""
        keys = sorted(city_sums)
        mine = [city_sums[k] if self.topo.local_rank == 0 else 0.0 for k in keys]
        total = torch.tensor(mine, dtype=torch.float64, device=self.device)
        dist.all_reduce(total, group=self.groups.world)
        return dict(zip(keys, total.tolist(), strict=True))

    def close(self) -> None:
        self.sync.close()
        self.telemetry.stop()
        self.log.close()

    def _log_interval(self, loss: float) -> None:
        """Mean step-time breakdown since the last log line, and the city's straggler check."""
        means = self.interval.means()
        self.log.write(
            "train",
            loss=loss,
            samples=self.state.samples,
            samples_per_s=self.interval.samples / max(self.interval.totals["t_step"], 1e-9),
            steps=self.interval.steps,
            lr=self.schedule.get_last_lr()[0],
            **means,
        )
        if self.topo.ranks_per_city > 1:
            # Busy time (data + compute) tells who is slow: the all-reduce makes step times equal.
            busy = torch.tensor([means["t_data"] + means["t_compute"]], device=self.device)
            times = [torch.zeros_like(busy) for _ in range(self.topo.ranks_per_city)]
            dist.all_gather(times, busy, group=self.groups.city)
            if self.topo.local_rank == 0:
                ranks = {self.topo.rank_of(self.topo.city, k): float(t) for k, t in enumerate(times)}
                for event in self.stragglers.update(self.state.step, ranks):
                    event.pop("kind")
                    print(f"[warning] city {self.topo.city}: {event['message']}", file=sys.stderr, flush=True)
                    self.log.write("event", **event)
        self.interval = StepInterval()

    def _stop_for_requeue(self, leaving: bool) -> int:
        self.save()
        self.log.write(
            "event", event="preempt", message=f"checkpointed at step {self.state.step}; leaving={leaving}"
        )
        if self.topo.global_rank == 0:
            advance_generation(self.store)
        dist.barrier(group=self.groups.world)
        self.close()
        destroy_groups()
        return EXIT_REQUEUE if leaving else RESTART

    def _finish(self, wall_s: float) -> int:
        final = self.sync.finish()
        if final is not None:
            self._log_round(final)
        self.log.step = self.state.step
        self.validate()
        self.save()  # the end of the trajectory, before the model may be replaced by the best one
        step, sums = self.state.step, self.last_sums
        if self.cfg.train.final_model == "best" and self.best_params is not None:
            step, sums = self.best.best_step, self.best_sums
            with torch.no_grad():
                vector_to_parameters(self.best_params.clone(), self.model.parameters())
        city = {"dataset": trained_on(self.train_ds), **self._new_hours()}
        gathered: list[Any] = [None] * self.topo.world_size
        mine = sums if self.topo.local_rank == 0 else None  # one entry per city
        dist.all_gather_object(
            gathered,
            {
                "city": self.topo.city,
                "name": self.city_name,
                "samples": self.state.samples,
                "sums": mine,
                **city,
            },
        )
        if self.topo.global_rank == 0:
            chosen = {
                "step": step,
                "selected_by": self.cfg.train.final_model,
                "last_step": self.state.step,
                "stopped_early": self.state.step < self.cfg.train.steps,
                "init_from": str(self.init_from or ""),
            }
            write_summary(self.run_dir, self.cfg, gathered, self.model, wall_s, final_model=chosen)
        dist.barrier(group=self.groups.world)
        self.close()
        destroy_groups()
        return 0


def progress(step: int, total: int, elapsed: float, loss: float) -> None:
    rate = step / max(elapsed, 1e-9)
    eta = (total - step) / max(rate, 1e-9)
    print(f"[train] step {step}/{total}  loss {loss:.4f}  {rate:.1f} steps/s  ETA {eta:.0f}s", flush=True)


def run_rank(run_dir: Path, topo: Topology | None = None) -> int:
    """Entry point of one rank (what launchers start). Returns the process exit code."""
    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    topo = topo or Topology.from_env()
    torch.set_num_threads(1)
    stop = StopFlag(cfg.train.requeue_signal)
    store = connect_store(run_dir)
    while True:
        code = Trainer(run_dir, cfg, topo, store, stop).run()
        if code == 0:
            store.add(FINISHED_KEY, 1)
        if code != RESTART:
            return code
        stop.raised = False
        print(
            f"[rank {topo.global_rank}] waiting for the preempted city to rejoin", file=sys.stderr, flush=True
        )
