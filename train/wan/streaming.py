"""Streaming DiLoCo: F parameter fragments, each synced on its own staggered clock, each WAN exchange
overlapped with the next tau inner steps.

Fragment f (a contiguous 1/F of the flat parameters) starts a round at every step s > W with
(s - W) % H == ((f + 1) * H // F) % H: its pseudo-gradient (anchor_f - params_f) goes to a
background thread that runs the striped WAN exchange, while training continues. tau steps later
the averaged pseudo-gradient is merged (see docs/wan_algorithms.md):

    anchor_f <- OuterSGD(anchor_f, mean pseudo-gradient)
    params_f <- anchor_f + (params_f(now) - params_f(at start))

i.e. the new global fragment plus this city's own progress during the overlap, which the next
pseudo-gradient then carries to the other cities: nothing is dropped and nothing counted twice.
With F=1 and tau=0 this is exactly DiLoCo. Only one fragment is in flight per clock step and the
WAN moves 1/F of the model per round, so the peak WAN rate drops F-fold.

`wan.merge=when_ready` merges at the first step >= start + tau at which every rank of the city
held the result when the step's gradients were summed (a "landed" vote per fragment rides in the
gradient all-reduce: no extra sync point), and blocks only when the fragment's next round is due.
The rule above holds at any merge step, so the cities stay consistent (their anchors get the same
outer step); the trajectory then depends on timing, so runs are not bitwise repeatable.
`fixed` (the default) merges exactly at start + tau: deterministic.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from crosscity.config.schema import ConfigError, WanConfig
from crosscity.train.wan.clock import RoundClock
from crosscity.train.wan.collectives import WanBytes, gather_stripes, stripe_bounds, weighted_mean
from crosscity.train.wan.sync import InterCitySync, WanRound

Exchange = tuple[torch.Tensor, WanBytes, float]  # (mean stripe, bytes, seconds the exchange took)


@dataclass
class _InFlight:
    """A fragment whose exchange has started and is not merged yet."""

    result: Future[Exchange]
    merge_step: int  # earliest merge (start + tau); `fixed` merges exactly here
    snapshot: torch.Tensor  # params_f when the round started: the base of the overlap drift
    start_step: int


class StreamingSync(InterCitySync):
    """Fragment-wise DiLoCo with background exchanges; the stripe group belongs to its worker thread."""

    @classmethod
    def make_clock(cls, cfg: WanConfig) -> RoundClock:
        return RoundClock(cfg.sync_every, cfg.warmup_steps, cfg.fragments)

    def __init__(self, cfg: WanConfig, *args: Any, **kwargs: Any) -> None:
        if cfg.optimizer_state != "keep":
            raise ConfigError(
                f"wan.optimizer_state={cfg.optimizer_state!r}: streaming supports only 'keep' "
                "(fragments meet at different steps: there is no one step to average or reset all state at)"
            )
        super().__init__(cfg, *args, **kwargs)
        flat = self._flat_params()
        self.bounds = [stripe_bounds(flat.numel(), cfg.fragments, f) for f in range(cfg.fragments)]
        self.anchors = [nn.Parameter(flat[a:b].clone(), requires_grad=False) for a, b in self.bounds]
        nesterov = cfg.nesterov and cfg.outer_momentum > 0
        self.outer = torch.optim.SGD(
            self.anchors, lr=cfg.outer_lr, momentum=cfg.outer_momentum, nesterov=nesterov
        )
        self.samples_since = [0] * cfg.fragments  # per rank, since the fragment's last round started
        self.steps_since = [0] * cfg.fragments
        self.in_flight: dict[int, _InFlight] = {}
        self.blocked_s = 0.0  # total time the training thread waited for an exchange to land
        self.landed: set[int] = set()  # when_ready: fragments every rank of the city holds (this step)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wan-streaming")

    # ------------------------------------------------------------------ the step clock

    def after_step(self, step: int, samples: int) -> WanRound | None:
        for f in range(self.cfg.fragments):
            self.samples_since[f] += samples
            self.steps_since[f] += 1
        if self.clock.in_warmup(step):
            return self._round()
        merged = None
        for f in self._mergeable(step):
            merged = self._merge(f, step)
        for f in self.clock.fragments_due(step):
            self._start(f, step)
            if self.cfg.overlap_steps == 0:
                merged = self._merge(f, step)
        return merged

    def _final_round(self) -> WanRound | None:
        """Land every exchange in flight, then one synchronous round of every fragment; the returned
        round carries the bytes of all of them (the trainer logs one final round)."""
        rounds = [self._merge(f, None) for f in sorted(self.in_flight)]
        if any(self.steps_since):
            rounds.append(self._round())
        self.worker.shutdown(wait=True)
        if not rounds:
            return None
        last = rounds[-1]
        last.bytes_sent, last.bytes_recv = (
            sum(r.bytes_sent for r in rounds),
            sum(r.bytes_recv for r in rounds),
        )
        return last

    def close(self) -> None:
        """Stop the worker thread without another round (after a checkpoint, when the rank leaves)."""
        self.worker.shutdown(wait=True)
        super().close()

    # ------------------------------------------------------------------ one fragment

    def _slice(self, f: int) -> tuple[torch.Tensor, int, int]:
        a, b = self.bounds[f]
        return self._flat_params(), a, b

    def _begin(self, f: int) -> tuple[torch.Tensor, float, torch.Tensor]:
        """This rank's stripe of fragment f's pseudo-gradient, the city's weight, and params_f now."""
        flat, a, b = self._slice(f)
        local = flat[a:b].clone()
        s0, s1 = stripe_bounds(b - a, self.topo.ranks_per_city, self.topo.local_rank)
        stripe = (self.anchors[f].detach() - local)[s0:s1].clone()
        weight = float(self.samples_since[f] * self.topo.ranks_per_city)
        self.samples_since[f] = self.steps_since[f] = 0
        return stripe, weight, local

    def _exchange(self, stripe: torch.Tensor, weight: float, f: int) -> Exchange:
        start = time.perf_counter()
        mean, moved = weighted_mean(
            stripe, weight, self.groups.stripe, self.codec, self.feedback, f"fragment{f}"
        )
        return mean, moved, time.perf_counter() - start

    def _apply(self, f: int, mean_stripe: torch.Tensor, snapshot: torch.Tensor) -> None:
        """Outer step on the averaged pseudo-gradient, then the merge rule (module docstring)."""
        flat, a, b = self._slice(f)
        mean = gather_stripes(mean_stripe, b - a, self.groups.city, self.topo.ranks_per_city)
        self._outer_step(f, mean)
        flat[a:b] = self.anchors[f].detach() + (flat[a:b] - snapshot)
        self._set_params(flat)

    def _start(self, f: int, step: int) -> None:
        stripe, weight, local = self._begin(f)
        job = self.worker.submit(self._exchange, stripe, weight, f)
        self.in_flight[f] = _InFlight(job, step + self.cfg.overlap_steps, local, step)

    def _mergeable(self, step: int) -> list[int]:
        """Fragments to merge at this step: all due ones (`fixed`), or those every city rank holds."""
        due = sorted(f for f, job in self.in_flight.items() if job.merge_step <= step)
        if self.cfg.merge == "fixed" or not due:
            return due
        # when_ready: landed on every rank of the city, or forced because the fragment starts again now
        due_again = {f for f in due if self.in_flight[f].start_step + self.cfg.sync_every <= step}
        return [f for f in due if f in self.landed or f in due_again]

    def city_votes(self) -> list[float]:
        """Per fragment: 1 if its exchange has landed on this rank (when_ready only)."""
        if self.cfg.merge == "fixed":
            return []
        jobs = [self.in_flight.get(f) for f in range(self.cfg.fragments)]
        return [float(job is not None and job.result.done()) for job in jobs]

    def take_city_votes(self, sums: list[float]) -> None:
        self.landed = {f for f, n in enumerate(sums) if n == self.topo.ranks_per_city}

    def _merge(self, f: int, step: int | None) -> WanRound:
        job = self.in_flight.pop(f)
        waited = time.perf_counter()
        mean_stripe, moved, exchange_s = job.result.result()
        blocked = time.perf_counter() - waited
        self.blocked_s += blocked
        self._apply(f, mean_stripe, job.snapshot)
        late = {} if step is None else {"merged_after_steps": step - job.start_step}
        return self._fragment_round(moved, exchange_s, f, blocked_s=blocked, **late)

    def _outer_step(self, f: int, mean_pseudo_grad: torch.Tensor) -> None:
        self.anchors[f].grad = mean_pseudo_grad
        self.outer.step()  # the other anchors have no grad: SGD leaves them and their momentum alone
        self.anchors[f].grad = None

    def _fragment_round(self, moved: WanBytes, seconds: float, f: int | None, **extra: Any) -> WanRound:
        self.rounds += 1
        return WanRound(
            self.rounds,
            moved.sent,
            moved.recv,
            seconds,
            list(range(self.topo.num_cities)),
            fragment=f,
            extra={**extra, "blocked_total_s": self.blocked_s, "overlap_steps": self.cfg.overlap_steps},
        )

    def _round(self) -> WanRound:
        """Synchronous round of every fragment that trained since its last round (warm-up, finish)."""
        start, moved = time.perf_counter(), WanBytes()
        fragments = [f for f in range(self.cfg.fragments) if self.steps_since[f] > 0]
        for f in fragments:
            stripe, weight, local = self._begin(f)
            mean_stripe, moved_f, _ = self._exchange(stripe, weight, f)
            self._apply(f, mean_stripe, local)
            moved = moved + moved_f
        return self._fragment_round(moved, time.perf_counter() - start, None)

    def global_params(self) -> torch.Tensor:
        """Each fragment's global value at its own last round."""
        return torch.cat([a.detach() for a in self.anchors])

    # ------------------------------------------------------------------ checkpoint

    def state_dict(self) -> dict[str, Any]:
        """Waits for exchanges in flight and stores their results, so a resume merges them on time."""
        in_flight = {}
        for f, job in self.in_flight.items():
            mean_stripe, moved, seconds = job.result.result()
            in_flight[f] = {
                "merge_step": job.merge_step,
                "start_step": job.start_step,
                "snapshot": job.snapshot.clone(),
                "mean_stripe": mean_stripe.clone(),
                "bytes": (moved.sent, moved.recv),
                "seconds": seconds,
            }
        return {
            **super().state_dict(),
            "anchors": [a.detach().clone() for a in self.anchors],
            "outer": self.outer.state_dict(),
            "feedback": self.feedback.state_dict() if self.feedback else {},
            "samples_since": list(self.samples_since),
            "steps_since": list(self.steps_since),
            "blocked_s": self.blocked_s,
            "in_flight": in_flight,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        with torch.no_grad():
            for anchor, saved in zip(self.anchors, state["anchors"], strict=True):
                anchor.copy_(saved)
        self.outer.load_state_dict(state["outer"])
        if self.feedback is not None:
            self.feedback.load_state_dict(state["feedback"])
        self.samples_since, self.steps_since = list(state["samples_since"]), list(state["steps_since"])
        self.blocked_s = state["blocked_s"]
        self.in_flight = {}
        for f, saved in state["in_flight"].items():
            done: Future[Exchange] = Future()
            done.set_result((saved["mean_stripe"], WanBytes(*saved["bytes"]), saved["seconds"]))
            self.in_flight[f] = _InFlight(done, saved["merge_step"], saved["snapshot"], saved["start_step"])
