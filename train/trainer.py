"""What one rank does: join its city's world, train its city's data, meet the other cities over the WAN.

A city is a torch.distributed world of its own and meets the others only through the coordinator
(train/wan/federated.py): a preempted city checkpoints and leaves (EXIT_REQUEUE) while the others
train on; when it is back it resumes from its checkpoint and heals from the global model.

The two world-spanning baselines (flat, PyTorch's averager) instead run one world over every city:
there, `run_rank` is restartable - when any city is preempted every rank checkpoints at the same
step, the preempted city exits with EXIT_REQUEUE and the others start again in the next rendezvous
generation, resuming once the requeued city is back.
"""

from __future__ import annotations

import contextlib
import random
import signal
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from crosscity.config import Config, load_config
from crosscity.core.best_model import BestModel
from crosscity.core.exit_codes import EXIT_REQUEUE
from crosscity.core.forecast_scores import pool_metrics
from crosscity.core.rank_pids import write_pid_file
from crosscity.data_prep.run_checks import resolve_cities
from crosscity.data_prep.verify import full_check, quick_check
from crosscity.train.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    previous_path,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from crosscity.train.data.batches import BatchStream
from crosscity.train.data.windows import CityWindows
from crosscity.train.distributed.process_groups import (
    Groups,
    destroy_groups,
    init_city_groups,
    init_groups,
    pick_backend,
    pick_device,
)
from crosscity.train.distributed.rendezvous import (
    FINISHED_KEY,
    advance_generation,
    city_store,
    connect_store,
    generation,
    generation_store,
)
from crosscity.train.distributed.topology import Topology
from crosscity.train.distributed.topology_env import detect_topology
from crosscity.train.evaluate import score, window_options
from crosscity.train.init_from import load_init_model, previous_span_end, trained_on, windows_after
from crosscity.train.models import build_model
from crosscity.train.observe.metrics_log import MetricsLog
from crosscity.train.observe.straggler import StragglerDetector
from crosscity.train.observe.telemetry import start_telemetry
from crosscity.train.optim import add_to_gradients, build_optimizer, build_schedule, proximal_term
from crosscity.train.run_summary import write_candidate, write_city_result
from crosscity.train.wan.registry import SYNCS, build_sync
from crosscity.train.wan.sync import InterCitySync, WanRound

RESTART = -1  # a world-spanning baseline's rank starts the next generation


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

    def __init__(
        self,
        run_dir: Path,
        cfg: Config,
        topo: Topology,
        groups: Groups,
        device: torch.device,
        stop: StopFlag,
        world_store: dist.Store | None = None,
    ) -> None:
        """`world_store`: the world-spanning baselines' store (generations); None for a city's own world."""
        self.run_dir, self.cfg, self.topo, self.stop = run_dir, cfg, topo, stop
        self.groups, self.device, self.world_store = groups, device, world_store
        seed_everything(cfg.train.seed)  # same init on every rank of every city

        self.city_name = resolve_cities(cfg.data.dir, cfg.data.cities, cfg.topology.cities)[topo.city]
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
        self.sync: InterCitySync = build_sync(
            cfg, run_dir, self.model, self.optimizer, topo, self.groups, self.device, self.city_name
        )
        self.state = RankState()
        self.best = BestModel(cfg.train.patience, cfg.train.min_delta)  # early stopping (world baselines)
        self.history: list[dict[str, Any]] = []  # every validation pass: step, this city's sums (rank 0)
        self.new_hours: tuple[CityWindows, list[int], dict[str, float]] | None = None  # init_from
        self.log = MetricsLog(run_dir / "metrics" / f"rank{topo.global_rank}.jsonl", topo)
        self.sync.log_event = lambda **fields: self.log.write("event", **fields)
        # Who this rank sums gradients with: with Horovod, proof that its world is the city alone.
        reducer = self.sync.reducer
        self.log.write("lan", backend=cfg.lan.backend, lan_rank=reducer.rank, lan_size=reducer.size)
        self.interval = StepInterval()
        mon = cfg.monitor
        self.stragglers = StragglerDetector.per_check(
            mon.straggler_factor, mon.straggler_steps, cfg.train.log_every
        )
        self.telemetry = start_telemetry(cfg, run_dir, topo, self.device, self.log)
        self.resumed = self._resume()

    # ------------------------------------------------------------------ checkpoints

    def _ckpt_path(self) -> Path:
        return checkpoint_path(self.run_dir, self.topo.city, self.topo.local_rank)

    def _resume(self) -> bool:
        state = self._city_checkpoint()
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.best.load_state_dict(state["best"])
        self.history = state["history"]
        self.sync.load_state_dict(state["sync"])
        self.batches.load_state_dict(state["batches"])
        self.state = RankState(**state["rank"])
        set_rng_state(state["rng"])
        self.log.step = self.state.step
        self.log.write(
            "event", event="resume", message=f"resumed from its checkpoint at step {self.state.step}"
        )
        return True

    def _city_checkpoint(self) -> dict[str, Any] | None:
        """The newest checkpoint every rank of the city has (None: some rank has none, all start
        fresh): a kill during a save can leave one rank's latest a checkpoint ahead of the others'."""
        path = self._ckpt_path()
        saved = [s for s in (load_checkpoint(path), load_checkpoint(previous_path(path))) if s is not None]
        agreed = torch.tensor([max((s["rank"]["step"] for s in saved), default=-1)], device=self.device)
        if self.topo.ranks_per_city > 1:
            dist.all_reduce(agreed, op=dist.ReduceOp.MIN, group=self.groups.city)
        step = int(agreed.item())
        if step < 0:
            return None
        match = [s for s in saved if s["rank"]["step"] == step]
        if not match:
            raise RuntimeError(f"{path}: no checkpoint of step {step}, the newest every rank of the city has")
        return match[0]

    def save(self) -> None:
        save_checkpoint(
            self._ckpt_path(),
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict(),
                "best": self.best.state_dict(),
                "history": self.history,
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
        correction = self.sync.gradient_correction()
        if correction is not None:
            add_to_gradients(self.model, correction)
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
        self._skip_ahead()
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

    def _skip_ahead(self) -> None:
        """wan.catch_up: the city healed from the global model far behind the others; it takes up their
        step, learning-rate schedule included (train/wan/federated.py). Samples count what it trained."""
        target = min(self.sync.take_skip_to() or 0, self.cfg.train.steps)
        if target <= self.state.step:
            return
        self.log.write(
            "event",
            event="catch_up",
            message=f"skipped from step {self.state.step} to the other cities' {target}",
            skipped=target - self.state.step,
            to_step=target,
        )
        self.state.step = self.log.step = target
        self.schedule.last_epoch = target - 1
        with warnings.catch_warnings():  # "step() before optimizer.step()": right after a restart
            warnings.simplefilter("ignore", UserWarning)
            self.schedule.step()

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
        # Every city starts its step clock together (a city still loading would otherwise make the
        # others wait at their first round): the coordinator's start, or the world's barrier.
        self.sync.join(fresh=not self.resumed, step=self.state.step)
        self._skip_ahead()
        if self.world_store is not None:
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
            last = self.state.step == cfg.train.steps  # _finish validates the final model
            due = cfg.train.eval_every and self.state.step % cfg.train.eval_every == 0 and not last
            if (due and self.validate()) or self.sync.finish_early():
                self.log.write("event", event="early_stop", message=f"stopped at step {self.state.step}")
                break
        return self._finish(time.perf_counter() - t_start)

    def validate(self) -> bool:
        """A validation pass of the global model, recorded for the best-model choice at the end
        (launch/report/summary.py pools every city's passes). With train.patience, the pooled RMSE
        decides whether to stop: here (True) in a world over every city; for the federated algorithms
        at the coordinator, which the city's sums go to (the answer comes as `sync.finish_early`)."""
        sums = self.evaluate_city()
        entry: dict[str, Any] = {"step": self.state.step, "sums": sums if self.topo.local_rank == 0 else None}
        entry.update(self._new_hours())
        self.history = [e for e in self.history if e["step"] != self.state.step] + [entry]
        if (
            self.cfg.train.final_model == "best"
            and self.topo.local_rank == 0
            and self.sync.holds_global_model()
        ):
            with self._params(self.sync.global_params()):
                write_candidate(self.run_dir, self.cfg, self.state.step, self.model)
        if not self.cfg.train.patience:
            return False
        if not self.sync.spans_world:
            if self.topo.local_rank == 0:
                self.sync.report_validation(self.state.step, sums)
            return False
        pooled = pool_metrics([self.pooled_validation(sums)])
        return self.best.update(self.state.step, pooled["rmse"]).stop

    def pooled_validation(self, city_sums: dict[str, float]) -> dict[str, float]:
        """The validation sums of all cities, the same on every rank (so every rank takes the same
        early-stopping decision): one small all-reduce over the world, local rank 0 of each city
        contributing its city's sums. Only the world-spanning baselines have that world."""
        keys = sorted(city_sums)
        mine = [city_sums[k] if self.topo.local_rank == 0 else 0.0 for k in keys]
        total = torch.tensor(mine, dtype=torch.float64, device=self.device)
        dist.all_reduce(total, group=self.groups.world)
        return dict(zip(keys, total.tolist(), strict=True))

    def _new_hours(self) -> dict[str, Any]:
        """With train.init_from: this city's test windows that end after the previous run's data, scored
        by the initial model (once) and by the global model of this pass (local rank 0; a small set)."""
        end = previous_span_end(self.init_from, self.city_name) if self.init_from else None
        if end is None or self.topo.local_rank != 0:
            return {}
        if self.new_hours is None:
            test = CityWindows(self.city_dir, split="test", **self.window)
            windows = windows_after(test, end)
            with self._params(self.init_params):
                before = score(self.model, test, windows=windows).totals()
            self.new_hours = (test, windows, before)
        test, windows, before = self.new_hours
        with self._params(self.sync.global_params()):
            after = score(self.model, test, windows=windows).totals()
        return {"new_hours": {"after_time": end, "before": before, "after": after}}

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
        if self.world_store is None:  # a city of its own: it leaves, the others train on
            self.sync.leave("preempted")
            self.close()
            destroy_groups()
            return EXIT_REQUEUE
        if self.topo.global_rank == 0:
            advance_generation(self.world_store)
        dist.barrier(group=self.groups.world)
        self.close()
        destroy_groups()
        return EXIT_REQUEUE if leaving else RESTART

    def _finish(self, wall_s: float) -> int:
        """The final round, the city's validation of the final model, its result file, goodbye."""
        final = self.sync.finish()
        if final is not None:
            self._log_round(final)
        self.log.step = self.state.step
        self.validate()
        sums = self.history[-1]["sums"]
        samples = torch.tensor([float(self.state.samples)], dtype=torch.float64, device=self.device)
        if self.topo.ranks_per_city > 1:
            dist.all_reduce(samples, group=self.groups.city)
        self.save()
        if self.topo.local_rank == 0:
            result = write_city_result(
                self.run_dir,
                self.cfg,
                self.topo,
                self.city_name,
                sums,
                int(samples.item()),
                self.model,
                wall_s,
                write_model=self.sync.holds_global_model(),
                history=self.history,
                dataset=trained_on(self.train_ds),
            )
            self.sync.report_final(result)
        if self.world_store is not None:
            dist.barrier(group=self.groups.world)
        self.sync.leave("finished")
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
    topo = topo or detect_topology()
    write_pid_file(run_dir, topo.city, topo.local_rank)  # for tools that signal ranks (core/rank_pids.py)
    torch.set_num_threads(1)
    stop = StopFlag(cfg.train.requeue_signal)
    device = pick_device(cfg.train.device, topo.local_rank)
    backend = pick_backend(cfg.lan.backend, device)
    if SYNCS[cfg.wan.algorithm].spans_world:
        return _run_world(run_dir, cfg, topo, device, backend, stop)
    groups = init_city_groups(topo, city_store(topo, cfg.lan.timeout_s), backend, cfg.lan.timeout_s)
    return Trainer(run_dir, cfg, topo, groups, device, stop).run()


def _run_world(
    run_dir: Path, cfg: Config, topo: Topology, device: torch.device, backend: str, stop: StopFlag
) -> int:
    """The world-spanning baselines: one store for every rank, a new generation after a preemption."""
    store = connect_store(run_dir)
    while True:
        gen = generation(store)
        groups = init_groups(topo, generation_store(store, gen), backend, cfg.lan.timeout_s)
        code = Trainer(run_dir, cfg, topo, groups, device, stop, world_store=store).run()
        if code == 0:
            store.add(FINISHED_KEY, 1)
        if code != RESTART:
            return code
        stop.raised = False
        print(
            f"[rank {topo.global_rank}] waiting for the preempted city to rejoin", file=sys.stderr, flush=True
        )
