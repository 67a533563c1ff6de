"""`average`, `diloco` and `streaming`: the city side of a round with the coordinator.

Each city keeps `base`, its copy of the global model (per fragment), and trains its own parameters
P. When a fragment's round starts (the clock), rank k sends stripe k of the pseudo-gradient
base_f - P_f (codec-encoded, with error feedback) on its own connection; the coordinator - which
holds the global model and the outer optimizer, so `average` (FedAvg) and `diloco` (Nesterov) differ
only there - answers with the new global stripe. The city's ranks agree over the LAN on what
happened, gather the stripes and merge:

    base_f <- new global fragment
    P_f    <- base_f + (P_f(now) - P_f(when the round started))

i.e. the new global plus this city's own progress while the exchange was in flight (none when
`tau` = 0), which the next pseudo-gradient then carries to the other cities. Streaming DiLoCo runs F
fragments on staggered clocks and lets each exchange overlap the next `wan.overlap_steps` inner steps
(`wan.merge=when_ready`: merged at the first step >= start + tau at which every rank of the city
holds the result, learned from a "landed" vote that rides in the gradient all-reduce).

A round that did not take (missed, skipped, coordinator unreachable) changes nothing: the steps
trained meanwhile count towards the next round this city takes part in, and the error-feedback
residual stays as it was. A reply lost after the coordinator committed is resolved before the next
upload (`fetch` tells whether that attempt took effect), so an update counts exactly once. A city
cut off from the coordinator stops waiting for its replies once its heartbeats have failed for
`wan.dead_after_s` (the others have stopped waiting for it by then) and trains on.

Catching up (`wan.catch_up`): every reply says how far the other cities are (`fleet_step`). A city
more than three rounds behind them - restarted from its checkpoint, or frozen - takes the latest
global model and skips ahead to their step (its learning-rate schedule with it): its own unsent
steps are dropped, the run ends with every city at about the same time, and no city trains the last
rounds alone on its own data. Never the case without faults (the rounds keep cities within one).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from crosscity.config import Config, WanConfig
from crosscity.federation import protocol as p
from crosscity.federation.client import CityAgent, Link, Refused, Unreachable
from crosscity.federation.codecs import ErrorFeedback, make_codec
from crosscity.federation.coordinator import config_fingerprint
from crosscity.federation.endpoints import city_endpoint
from crosscity.federation.layout import Layout
from crosscity.federation.service import read_address
from crosscity.federation.wire import Message
from crosscity.train.distributed.topology import Topology
from crosscity.train.wan.clock import RoundClock
from crosscity.train.wan.scaffold import Scaffold
from crosscity.train.wan.sync import InterCitySync, WanRound

POLL_S = 0.25  # how often a rank waiting for a round's reply checks on the rest of its city


@dataclass
class Outcome:
    """What one rank's exchange call came back with (reply None: nothing came back)."""

    reply: Message | None
    sent: int
    recv: int
    seconds: float
    error: str = ""


@dataclass
class InFlight:
    """A fragment whose round has started and is not merged yet."""

    result: Future[Outcome]
    merge_step: int  # earliest merge (start + tau); `fixed` merges exactly here
    start_step: int
    snapshot: np.ndarray  # P_f when the round started: the base of the overlap drift
    attempt: int
    residual: np.ndarray | None  # error feedback residual if the round commits
    steps: int  # what the round carried, given back if it does not take
    samples: int


class FederatedSync(InterCitySync):
    def __init__(self, cfg: WanConfig, *args: Any, link: Link, agent: CityAgent | None = None, **kwargs: Any):
        super().__init__(cfg, *args, **kwargs)
        self.link, self.agent = link, agent
        self.codec = make_codec(cfg.codec)
        self.feedback = ErrorFeedback() if cfg.error_feedback else None  # this city's uplink residuals
        streaming = cfg.algorithm == "streaming"
        self.tau = cfg.overlap_steps if streaming else 0
        flat = self._params()
        self.layout = Layout(flat.size, self.clock.fragments, self.topo.ranks_per_city)
        frags = range(self.layout.fragments)
        self.base = [flat[a:b].copy() for a, b in (self.layout.fragment(f) for f in frags)]
        self.version = [0 for _ in frags]
        self.attempt = [0 for _ in frags]
        self.steps_since = [0 for _ in frags]  # since the fragment's last round started
        self.samples_since = [0 for _ in frags]
        self.in_flight: dict[int, InFlight] = {}
        self.uncertain: dict[int, InFlight] = {}  # started, reply lost: resolved before the next upload
        self.landed: set[int] = set()
        self.blocked_s = 0.0
        self.heal_bytes = 0
        self.final_local = False  # ended on its own model: the coordinator was away at the end
        self.run_stops = False  # the coordinator said so in a round's reply
        self.run_finishes = False  # early stopping: the coordinator said so in a round's reply
        self.fleet_step = -1  # how far the other cities are, from the last replies (agreed in the city)
        self.skip_to: int | None = None  # catch-up: where the trainer's step jumps (take_skip_to)
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wan-exchange")
        ranks = self.topo.ranks_per_city
        self.scaffold = Scaffold(flat.size, self.codec, ranks, self.topo.local_rank) if cfg.scaffold else None

    @classmethod
    def make_clock(cls, cfg: WanConfig) -> RoundClock:
        fragments = cfg.fragments if cfg.algorithm == "streaming" else 1
        return RoundClock(cfg.sync_every, cfg.warmup_steps, fragments)

    @property
    def reply_timeout_s(self) -> float:
        """The coordinator holds an upload at most this long (quorum wait + stripe transfer)."""
        w = self.cfg
        return (
            w.round_timeout_s + w.dead_after_s + 2 * self._payload_bytes() * 8 / (w.min_rate_mbit * 1e6) + 10
        )

    # ------------------------------------------------------------------ joining the run

    def join(self, fresh: bool, step: int) -> None:
        """Register (rank 0), hand the coordinator the initial model if it has none, wait for the
        start, and heal from the global model when this city's copy is not the current one."""
        rank0 = self.topo.local_rank == 0
        info = torch.zeros(3 + self.layout.fragments, dtype=torch.int64)
        mine = self._effective_versions()
        if rank0:
            assert self.agent is not None
            sha = _sha(np.concatenate(self.base)) if fresh else ""
            reply = self.agent.register(mine, step, sha, timeout_s=self.cfg.start_timeout_s)
            info[0] = int(reply.fields["need_initial"])
        self._city_broadcast(info)
        if info[0]:
            for f in range(self.layout.fragments):
                k = self.topo.local_rank
                s0, s1 = self.layout.stripe(f, k)
                self.link.call(Message(p.INITIAL, {"fragment": f, "stripe": k}, [self.base[f][s0:s1]]), 60)
        self._city_barrier()
        if rank0:
            assert self.agent is not None
            start = self.agent.wait_start(self.cfg.start_timeout_s + 60)
            info[1:] = torch.tensor([1, start.fields["fleet_step"], *start.fields["versions"]])
            self.agent.start_heartbeats()
        self._city_broadcast(info)
        current = [int(v) for v in info[3:]]
        if current != mine and not self.heal(list(range(self.layout.fragments)), self.cfg.start_timeout_s):
            raise RuntimeError(
                f"city {self.topo.city}: the coordinator has the global model but did not send it"
            )
        self.fleet_step = int(info[2])
        if self._behind(step):
            self.skip_to = self.fleet_step  # healed above (or the global has not moved since)

    def _effective_versions(self) -> list[int]:
        """The versions this city will hold once the committed results it checkpointed are merged."""
        out = list(self.version)
        for f, job in self.in_flight.items():
            reply = job.result.result().reply if job.result.done() else None
            if reply is not None and reply.fields["status"] == p.COMMITTED:
                out[f] = reply.fields["version"]
        return out

    def heal(self, fragments: list[int], patience_s: float) -> bool:
        """Replace this city's model (and its copy of the global) by the latest global fragments;
        exchanges still in flight for them are superseded. False if the coordinator stayed away."""
        start, before = time.perf_counter(), self.heal_bytes
        flat = self._params()
        for f in fragments:
            got = self._fetch(f, patience_s)
            if got is None:
                return False
            glob, version, _ = got
            a, b = self.layout.fragment(f)
            self.base[f], self.version[f] = glob, version
            flat[a:b] = glob
            self.steps_since[f] = self.samples_since[f] = 0
            self.in_flight.pop(f, None)
            self.uncertain.pop(f, None)
            if self.scaffold is not None:
                self.scaffold.restart(f)
        self._set(flat)
        self.log_event(
            event="heal",
            message=f"took the global model of fragments {fragments} (versions {self.version})",
            bytes=self.heal_bytes - before,
            seconds=time.perf_counter() - start,
        )
        return True

    # ------------------------------------------------------------------ the step clock

    def after_step(self, step: int, samples: int) -> WanRound | None:
        if self.agent is not None:
            self.agent.status.step = step
        for f in range(self.layout.fragments):
            self.steps_since[f] += 1
            self.samples_since[f] += samples
        if self.clock.in_warmup(step):
            return self._synchronous(list(range(self.layout.fragments)), step)
        merged = None
        for f in self._mergeable(step):
            merged = self._merge(f, step)
        if self._behind(step):
            fleet, self.fleet_step = self.fleet_step, -1  # acted on once; later replies tell again
            if any(not job.result.done() for job in self.in_flight.values()):
                self.link.abort()  # superseded by the global model about to be fetched
            if self.heal(list(range(self.layout.fragments)), self.cfg.dead_after_s):
                self.skip_to = fleet
                return merged  # the trainer skips ahead: the rounds due here belong to the old step
        for f in self.clock.fragments_due(step):
            if f in self.uncertain and not self._resolve(f):
                continue  # still cannot tell whether the last upload counted: do not send another
            self._start(f, step)
            if self.tau == 0:
                merged = self._merge(f, step)
        return merged

    def _behind(self, step: int) -> bool:
        """More than three rounds behind the other cities (same answer on every rank of the city)."""
        slack = max(3 * self.cfg.sync_every + self.tau, 20)
        return self.cfg.catch_up and self.fleet_step - step > slack

    def take_skip_to(self) -> int | None:
        target, self.skip_to = self.skip_to, None
        return target

    def finish(self) -> WanRound | None:
        """Land what is in flight, one synchronous round of every fragment that trained since, and
        take the latest global model where that round did not take: every city ends on the global."""
        rounds = [self._merge(f, None) for f in sorted(self.in_flight)]
        for f in sorted(self.uncertain):
            self._resolve(f)
        trained = [f for f in range(self.layout.fragments) if self.steps_since[f] > 0]
        if trained:
            rounds.append(self._synchronous(trained, None))
            behind = [f for f, stale in rounds[-1].extra["stale"].items() if stale]
            if behind and not self.heal(behind, self.cfg.round_timeout_s):
                self.log_event(
                    event="final_local", message="the coordinator is away: this city ends on its own model"
                )
        self.worker.shutdown(wait=True)
        if not rounds:
            return None
        last = rounds[-1]
        last.bytes_sent = sum(r.bytes_sent for r in rounds)
        last.bytes_recv = sum(r.bytes_recv for r in rounds)
        return last

    def agree_to_stop(self, city_votes: float, mine: bool, step: int) -> tuple[bool, bool]:
        """A city's own stop request (its preemption) takes effect right after its next round; the others
        go on without it and it heals when it is back. A stop of the whole run comes from the
        coordinator in a round every city merges at the same step: they all checkpoint there, and
        running the same command again continues exactly the trajectory the run would have had."""
        stop = self.run_stops or (city_votes > 0 and self.clock.is_round(step))
        return stop, stop

    def gradient_correction(self) -> torch.Tensor | None:
        """SCAFFOLD's c - c_i (wan.scaffold), at the learning rate of the step about to be taken."""
        if self.scaffold is None:
            return None
        return self.scaffold.correction(self.optimizer.param_groups[0]["lr"], self._device())

    def global_params(self) -> torch.Tensor:
        """The global model as of this city's last merged round of each fragment (`base`)."""
        return torch.from_numpy(np.concatenate(self.base)).to(self._device())

    def holds_global_model(self) -> bool:
        return not self.final_local

    def report_validation(self, step: int, sums: dict[str, float]) -> None:
        if self.agent is not None:
            self.agent.report_validation(step, sums)

    def finish_early(self) -> bool:
        return self.run_finishes  # set from a round every rank of the city committed: they agree

    def report_final(self, result: dict[str, Any]) -> None:
        if self.agent is None:
            return
        try:
            self.agent.final(result, 10.0)
        except (Unreachable, Refused) as exc:
            self.log_event(
                event="final_report", message=f"the coordinator did not take the final result: {exc}"
            )

    def leave(self, reason: str) -> None:
        if self.agent is not None:
            self.agent.leave(reason)
        self.log_event(
            event="wan_totals",
            message=f"bytes this rank put into its coordinator connections ({reason})",
            **self.wire_totals(),
        )

    def wire_totals(self) -> dict[str, int]:
        """Every byte this rank's links wrote and read (frames, before TLS): data plane and control."""
        control = [self.agent.control, self.agent.beat] if self.agent is not None else []
        return {
            "data_sent": self.link.bytes_sent,
            "data_recv": self.link.bytes_recv,
            "control_sent": sum(c.bytes_sent for c in control),
            "control_recv": sum(c.bytes_recv for c in control),
        }

    def close(self) -> None:
        self.worker.shutdown(wait=True)
        if self.agent is not None:
            self.agent.close()
        self.link.close()
        super().close()

    # ------------------------------------------------------------------ one fragment's round

    def _start(self, f: int, step: int) -> None:
        a, b = self.layout.fragment(f)
        snapshot = self._params()[a:b].copy()
        k = self.topo.local_rank
        s0, s1 = self.layout.stripe(f, k)
        pseudo_grad = self.base[f][s0:s1] - snapshot[s0:s1]
        residual = None
        if self.feedback is not None:
            payload, residual = self.feedback.propose(self.codec, pseudo_grad, f"{f}/{k}")
        else:
            payload = self.codec.encode(pseudo_grad)
        if self.scaffold is not None:
            payload = [*payload, *self.scaffold.propose(f, self.base[f], snapshot)]
        self.attempt[f] += 1
        fields = {
            "fragment": f,
            "stripe": k,
            "attempt": self.attempt[f],
            "base_version": self.version[f],
            "steps": self.steps_since[f],
        }
        job = self.worker.submit(self._call, Message(p.EXCHANGE, fields, payload))
        self.in_flight[f] = InFlight(
            job,
            step + self.tau,
            step,
            snapshot,
            self.attempt[f],
            residual,
            self.steps_since[f],
            self.samples_since[f],
        )
        self.steps_since[f] = self.samples_since[f] = 0

    def _call(self, msg: Message) -> Outcome:
        start = time.perf_counter()
        sent, recv = self.link.bytes_sent, self.link.bytes_recv
        try:
            reply: Message | None = self.link.call(msg, self.reply_timeout_s)
            error = ""
        except (Unreachable, Refused) as exc:
            reply, error = None, str(exc)
        return Outcome(
            reply,
            self.link.bytes_sent - sent,
            self.link.bytes_recv - recv,
            time.perf_counter() - start,
            error,
        )

    def _merge(self, f: int, step: int | None) -> WanRound:
        job = self.in_flight.pop(f)
        waited = time.perf_counter()
        out = self._wait(job)
        blocked = time.perf_counter() - waited
        self.blocked_s += blocked
        reply = out.reply
        committed = reply is not None and reply.fields["status"] == p.COMMITTED
        answered = reply is not None
        fleet = reply.fields.get("fleet_step", -1) if reply is not None else -1
        votes = self._city_sum([float(committed), float(answered), float(fleet)])
        ranks = self.topo.ranks_per_city
        if votes[1] == ranks:  # every rank heard how far the others are: the city agrees on the mean
            self.fleet_step = int(votes[2] // ranks)
        extra: dict[str, Any] = {"blocked_s": blocked, "blocked_total_s": self.blocked_s}
        if step is not None:
            extra["merged_after_steps"] = step - job.start_step
        if votes[0] == ranks:  # every rank holds the new global stripe
            assert reply is not None
            self._apply(f, job, self._stripe_result(f, reply), reply.fields["version"])
            self._commit_control(f, reply)
            self.run_stops = self.run_stops or reply.fields["stop"]
            self.run_finishes = self.run_finishes or reply.fields["finish"]
            status = p.COMMITTED
        elif votes[1] == ranks and votes[0] == 0:  # all answered, none committed: nothing moved
            self._give_back(f, job)
            status = reply.fields["status"] if reply is not None else p.SKIPPED
        else:  # a reply went missing somewhere: ask the coordinator whether the upload counted
            self.uncertain[f] = job
            status = "resolved" if self._resolve(f) else "uncertain"
        participants = reply.fields["participants"] if committed and reply is not None else []
        if status != p.COMMITTED:
            extra.update(status=status, reason=(reply.fields["reason"] if reply is not None else out.error))
        self.rounds += 1
        round_id = reply.fields["round"] if reply is not None else -1
        extra.update(coordinator_round=round_id, version=self.version[f], overlap_steps=self.tau)
        return WanRound(self.rounds, out.sent, out.recv, out.seconds, participants, fragment=f, extra=extra)

    def _wait(self, job: InFlight) -> Outcome:
        """This rank's reply, once every rank of the city holds its own - or sooner, when the city's
        heartbeats have failed for longer than wan.dead_after_s: the coordinator has stopped waiting
        for this city by then, so its calls are broken off (the round turns uncertain, resolved
        later) and the city trains on instead of sitting out the reply deadline (a cut link)."""
        ranks = self.topo.ranks_per_city
        while True:
            with contextlib.suppress(TimeoutError):
                job.result.result(timeout=POLL_S)
            cut_off = self.agent is not None and self.agent.unreachable_s() > self.cfg.dead_after_s
            done, cut = self._city_sum([float(job.result.done()), float(cut_off)])
            if done == ranks:
                return job.result.result()
            if cut > 0:
                self.link.abort()
                return job.result.result()

    def _stripe_result(self, f: int, reply: Message) -> np.ndarray:
        """This rank's stripe of the new global fragment from a committed reply."""
        k = self.topo.local_rank
        s0, s1 = self.layout.stripe(f, k)
        if reply.fields["mode"] == p.FULL:
            return reply.arrays[0].astype(np.float32)
        return self.base[f][s0:s1] + self.codec.decode(reply.arrays[: self._model_arrays(f, reply)], s1 - s0)

    def _model_arrays(self, f: int, reply: Message) -> int:
        """How many of a committed reply's arrays are the model's (SCAFFOLD's c follows them)."""
        if reply.fields["mode"] == p.FULL:
            return 1
        return len(self.codec.payload_shapes(self.layout.stripe_size(f, self.topo.local_rank)))

    def _commit_control(self, f: int, reply: Message | None) -> None:
        """SCAFFOLD: the round counted; its reply (None: lost) carries the coordinator's new c."""
        if self.scaffold is not None:
            server = None if reply is None else reply.arrays[self._model_arrays(f, reply) :]
            self.scaffold.commit(f, server, lambda stripe: self._gather(f, stripe))

    def _apply(self, f: int, job: InFlight, stripe: np.ndarray, version: int) -> None:
        """The merge rule (module docstring) with the city's gathered new global fragment."""
        new_base = self._gather(f, stripe)
        a, b = self.layout.fragment(f)
        flat = self._params()
        flat[a:b] = new_base + (flat[a:b] - job.snapshot)
        self._set(flat)
        self.base[f], self.version[f] = new_base, version
        if job.residual is not None and self.feedback is not None:
            self.feedback.commit(f"{f}/{self.topo.local_rank}", job.residual)
        if self.cfg.optimizer_state == "reset":
            self.optimizer.state.clear()

    def _give_back(self, f: int, job: InFlight) -> None:
        """The round did not take: its steps count towards the next one (residual untouched)."""
        self.steps_since[f] += job.steps
        self.samples_since[f] += job.samples
        if self.scaffold is not None:
            self.scaffold.give_back(f)

    def _resolve(self, f: int) -> bool:
        """Did the upload whose reply was lost take effect? True once decided (either way)."""
        job = self.uncertain[f]
        got = self._fetch(f, patience_s=0.0)
        decided = self._city_sum([float(got is not None)])[0] == self.topo.ranks_per_city
        if not decided or got is None:
            return False
        glob, version, committed_attempt = got
        del self.uncertain[f]
        if committed_attempt >= job.attempt:  # it counted: merge as if the reply had come
            a, b = self.layout.fragment(f)
            flat = self._params()
            flat[a:b] = glob + (flat[a:b] - job.snapshot)
            self._set(flat)
            self.base[f], self.version[f] = glob, version
            if job.residual is not None and self.feedback is not None:
                self.feedback.commit(f"{f}/{self.topo.local_rank}", job.residual)
            self._commit_control(f, None)
        else:
            self._give_back(f, job)
        return True

    def _fetch(self, f: int, patience_s: float) -> tuple[np.ndarray, int, int] | None:
        """The whole global fragment (each rank fetches its stripe, the city gathers them), its version
        and this city's last upload that took effect; None if the coordinator cannot be reached. With
        no patience (resolving a lost reply between steps) it does not queue behind another
        fragment's exchange on the link: behind a cut link that one can take its whole deadline."""
        k = self.topo.local_rank
        deadline, before = time.monotonic() + patience_s, self.link.bytes_sent + self.link.bytes_recv
        while True:
            try:
                msg = Message(p.FETCH, {"fragment": f, "stripe": k})
                reply = self.link.call(msg, 30.0, wait=patience_s > 0)
                break
            except (Unreachable, Refused):
                if time.monotonic() >= deadline:
                    reply = None
                    break
                time.sleep(0.2)
        self.heal_bytes += self.link.bytes_sent + self.link.bytes_recv - before  # healing is WAN traffic too
        ok = self._city_sum([float(reply is not None)])[0] == self.topo.ranks_per_city
        if not ok or reply is None:
            return None
        glob = self._gather(f, reply.arrays[0].astype(np.float32))
        return glob, int(reply.fields["version"]), int(reply.fields["committed_attempt"])

    def _synchronous(self, fragments: list[int], step: int | None) -> WanRound:
        """A round of each fragment in turn, waited for at once (warm-up, the final round)."""
        rounds, stale = [], {}
        for f in fragments:
            self._start(f, step or 0)
            r = self._merge(f, step)
            stale[f] = r.extra.get("status", p.COMMITTED) != p.COMMITTED
            rounds.append(r)
        last = rounds[-1]
        last.bytes_sent, last.bytes_recv = (
            sum(r.bytes_sent for r in rounds),
            sum(r.bytes_recv for r in rounds),
        )
        last.seconds = sum(r.seconds for r in rounds)
        last.fragment = None if len(fragments) > 1 else last.fragment
        last.extra["stale"] = stale
        return last

    # ------------------------------------------------------------------ when_ready votes

    def _mergeable(self, step: int) -> list[int]:
        due = sorted(f for f, job in self.in_flight.items() if job.merge_step <= step)
        if self.cfg.merge == "fixed" or not due:
            return due
        due_again = {f for f in due if self.in_flight[f].start_step + self.cfg.sync_every <= step}
        return [f for f in due if f in self.landed or f in due_again]

    def city_votes(self) -> list[float]:
        if self.cfg.merge == "fixed" or self.tau == 0:
            return []
        jobs = [self.in_flight.get(f) for f in range(self.layout.fragments)]
        return [float(job is not None and job.result.done()) for job in jobs]

    def take_city_votes(self, sums: list[float]) -> None:
        self.landed = {f for f, n in enumerate(sums) if n == self.topo.ranks_per_city}

    # ------------------------------------------------------------------ LAN helpers

    def _city_sum(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64)
        if self.topo.ranks_per_city > 1:
            dist.all_reduce(t, group=self.groups.city)
        return t.tolist()

    def _city_broadcast(self, t: torch.Tensor) -> None:
        if self.topo.ranks_per_city > 1:
            dist.broadcast(t, src=self.groups.city_ranks[0], group=self.groups.city)

    def _city_barrier(self) -> None:
        if self.topo.ranks_per_city > 1:
            dist.barrier(group=self.groups.city)

    def _gather(self, f: int, stripe: np.ndarray) -> np.ndarray:
        """The city's R stripes of fragment f, in order (every rank gets all)."""
        if self.topo.ranks_per_city == 1:
            return stripe.copy()
        sizes = [self.layout.stripe_size(f, k) for k in range(self.topo.ranks_per_city)]
        width = max(sizes)
        mine = torch.zeros(width, dtype=torch.float32)
        mine[: stripe.size] = torch.from_numpy(stripe)
        pieces = [torch.empty_like(mine) for _ in sizes]
        dist.all_gather(pieces, mine, group=self.groups.city)
        return np.concatenate([piece[:n].numpy() for piece, n in zip(pieces, sizes, strict=True)])

    # ------------------------------------------------------------------ parameters as one numpy vector

    def _params(self) -> np.ndarray:
        return self._flat_params().cpu().numpy().astype(np.float32, copy=True)

    def _set(self, flat: np.ndarray) -> None:
        self._set_params(torch.from_numpy(flat).to(self._device()))

    def _payload_bytes(self) -> int:
        return self.codec.payload_bytes(
            max(self.layout.stripe_size(f, 0) for f in range(self.layout.fragments))
        )

    # ------------------------------------------------------------------ checkpoints (weights_only-safe)

    def state_dict(self) -> dict[str, Any]:
        """Waits for exchanges in flight, so a resume merges them exactly when it would have (as a
        merge waits: not past the city's heartbeats failing for dead_after_s)."""
        for f in sorted(self.in_flight):
            self._wait(self.in_flight[f])
        pending = {}
        for f, job in {**self.in_flight, **self.uncertain}.items():
            out = job.result.result()
            pending[f] = {
                "in_flight": f in self.in_flight,
                "merge_step": job.merge_step,
                "start_step": job.start_step,
                "snapshot": torch.from_numpy(job.snapshot.copy()),
                "attempt": job.attempt,
                "residual": None if job.residual is None else torch.from_numpy(job.residual.copy()),
                "steps": job.steps,
                "samples": job.samples,
                "reply": None if out.reply is None else _reply_state(out.reply),
                "outcome": [out.sent, out.recv, out.seconds, out.error],
            }
        residuals = self.feedback.state_dict() if self.feedback else {}
        return {
            "rounds": self.rounds,
            "base": [torch.from_numpy(b.copy()) for b in self.base],
            "version": list(self.version),
            "attempt": list(self.attempt),
            "steps_since": list(self.steps_since),
            "samples_since": list(self.samples_since),
            "feedback": {k: torch.from_numpy(v.copy()) for k, v in residuals.items()},
            "blocked_s": self.blocked_s,
            "pending": pending,
            **({"scaffold": self.scaffold.state_dict()} if self.scaffold is not None else {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rounds = state["rounds"]
        self.base = [t.numpy().astype(np.float32, copy=True) for t in state["base"]]
        self.version, self.attempt = list(state["version"]), list(state["attempt"])
        self.steps_since, self.samples_since = list(state["steps_since"]), list(state["samples_since"])
        if self.feedback is not None:
            self.feedback.load_state_dict({k: v.numpy() for k, v in state["feedback"].items()})
        self.blocked_s = state["blocked_s"]
        if self.scaffold is not None:
            self.scaffold.load_state_dict(state["scaffold"])
        self.in_flight, self.uncertain = {}, {}
        for f, saved in state["pending"].items():
            reply = None if saved["reply"] is None else _reply_of(saved["reply"])
            done: Future[Outcome] = Future()
            done.set_result(Outcome(reply, *saved["outcome"]))
            residual = None if saved["residual"] is None else saved["residual"].numpy().copy()
            job = InFlight(
                done,
                saved["merge_step"],
                saved["start_step"],
                saved["snapshot"].numpy().copy(),
                saved["attempt"],
                residual,
                saved["steps"],
                saved["samples"],
            )
            (self.in_flight if saved["in_flight"] else self.uncertain)[int(f)] = job

    def _round(self) -> WanRound:  # pragma: no cover - rounds run through _start/_merge
        raise NotImplementedError


def _reply_state(msg: Message) -> dict[str, Any]:
    return {
        "kind": msg.kind,
        "fields": dict(msg.fields),
        "arrays": [torch.from_numpy(a.copy()) for a in msg.arrays],
    }


def _reply_of(state: dict[str, Any]) -> Message:
    return Message(state["kind"], dict(state["fields"]), [t.numpy().copy() for t in state["arrays"]])


def _sha(values: np.ndarray) -> str:
    return hashlib.sha256(values.astype(np.float32).tobytes()).hexdigest()


def connect(
    run_dir: Path, cfg: Config, topo: Topology, city_name: str, n_params: int
) -> tuple[Link, CityAgent | None]:
    """This rank's link to the run's coordinator (found through RUN_DIR/coordinator.json; mutual TLS
    with the city's certificate unless security.insecure), and for local rank 0 the city's agent."""
    run = config_fingerprint((Path(run_dir) / "config.yaml").read_text())
    max_payload = 8 * n_params + (1 << 20)  # a full float32 fragment stripe, with room to spare
    tls = city_endpoint(cfg, run_dir, city_name)
    heartbeat_s = cfg.wan.heartbeat_s

    def link(rank: int) -> Link:
        return Link(lambda: read_address(run_dir), topo.city, rank, run, max_payload, tls)

    n_extra = n_params if cfg.wan.scaffold else 0  # SCAFFOLD's control variate rides with the stripes
    agent = (
        CityAgent(lambda: link(0), city_name, n_params, n_extra, heartbeat_s)
        if topo.local_rank == 0
        else None
    )
    return link(topo.local_rank), agent
