"""The coordinator: membership, per-round quorum, the global model and the outer optimizer of a run.

Cities never talk to each other. Each rank of each city uploads its stripe of a pseudo-gradient
(codec payload) to the coordinator; when a round's quorum is complete the coordinator averages the
updates (weights from what it knows, not from the message), takes the outer optimizer step, writes
its new state to the run directory, and only then answers every participant with the new global
stripe (the codec-compressed change for an up-to-date city, the float32 global for a stale one).
Whoever restarts - a city or the coordinator itself - continues from that persisted state: a city
fetches the latest global model (`fetch`), a restarted coordinator reloads it and the cities
re-register with backoff. Torch-free: numpy only, so it runs on a login node or a small VM.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crosscity.config import Config, load_config
from crosscity.core.atomic_io import atomic_write, atomic_write_text
from crosscity.core.best_model import BestModel
from crosscity.federation import endpoints, tls
from crosscity.federation import protocol as p
from crosscity.federation.aggregate import EmptyRound, aggregate, l2_norm
from crosscity.federation.audit import AuditLog
from crosscity.federation.codecs import ErrorFeedback, check_input, make_codec
from crosscity.federation.early_stop import EarlyStop, check_sums
from crosscity.federation.layout import Layout
from crosscity.federation.membership import Membership
from crosscity.federation.outer import make_outer
from crosscity.federation.rounds import CLOSED, COMMITTED, FORMING, SKIPPED, Round, Upload
from crosscity.federation.transport import Connection, ConnectionLost
from crosscity.federation.wire import Message, WireError, expect_arrays

STATE_FILE = "state.json"
INITIAL_MAX_PAYLOAD = 1 << 30  # before the model's size is known (the first registration fixes it)
TICK_S = 0.05


def config_fingerprint(config_text: str) -> str:
    """What a city and the coordinator compare in `hello`: the run's resolved config.yaml."""
    return hashlib.sha256(config_text.encode()).hexdigest()[:16]


class RequestError(Exception):
    """A request that is refused; the reason goes back to the peer as an `error` reply."""


class Coordinator:
    def __init__(self, run_dir: Path, cfg: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.run_dir, self.cfg, self.clock = Path(run_dir), cfg, clock
        self.dir = self.run_dir / "coordinator"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.fingerprint = config_fingerprint((self.run_dir / "config.yaml").read_text())
        w = cfg.wan
        self.cities = cfg.topology.cities
        self.stripes = cfg.topology.ranks_per_city
        self.fragments = w.fragments if w.algorithm == "streaming" else 1
        self.min_cities = w.min_cities
        self.samples_per_step = cfg.data.batch_size * self.stripes
        self.codec = make_codec(w.codec)
        self.feedback = ErrorFeedback() if w.error_feedback else None  # the downlink's residuals
        self.outer = make_outer(w)
        self.members = Membership(w.dead_after_s)
        self.layout: Layout | None = None
        self.n_extra = 0  # SCAFFOLD: the control variate's size (the model's), 0 without
        self.control: np.ndarray | None = None  # SCAFFOLD's server control variate c (persisted)
        self.globals: dict[int, np.ndarray] = {}
        self.versions: dict[int, int] = {}
        self.next_round = dict.fromkeys(range(self.fragments), 1)
        self.forming: dict[int, Round] = {}
        self.initial: dict[tuple[int, int], np.ndarray] = {}
        self.initial_city: int | None = None
        self.initial_sha = ""
        self.committed_attempt: dict[int, dict[int, int]] = {}  # city -> fragment -> attempt
        self.took_part: dict[int, dict[int, int]] = {}  # city -> fragment -> version it last joined at
        self.finals: dict[int, dict[str, Any]] = {}
        self.started = False  # the run's first start gate opened (persisted)
        self.registered_here: set[int] = set()  # cities that registered with this coordinator process
        self.first_here: float | None = None  # ... and when the first of them did
        self.heartbeating: set[int] = set()  # cities past the start gate of this process: the run is on
        self.state_generation = 0
        self.was_live: set[int] = set()  # for the live/silent events
        self.secure = not cfg.security.insecure
        self.names = endpoints.city_names(cfg, self.run_dir)  # what a city's certificate must say
        if self.secure and (self.names is None or len(self.names) != self.cities):
            raise ValueError(
                f"{self.run_dir}: no city names (dataset.json or data.cities) to check certificates against"
            )
        self.audit = AuditLog(self.run_dir / "audit.jsonl")
        self.cond = threading.Condition()
        self.stopping = False  # shutting the service down
        self.stopping_run = False  # the run stops: every participant of the next rounds is told to
        t = cfg.train
        self.early = EarlyStop(self.cities, BestModel(t.patience, t.min_delta)) if t.patience else None
        self._load()
        if not (self.dir / STATE_FILE).is_file() and cfg.train.init_from:
            self._carry_outer(Path(cfg.train.init_from))

    # ------------------------------------------------------------------ timing (docs/fault_tolerance.md)

    @property
    def transfer_s(self) -> float:
        """How long a quorum's remaining stripes may take once the round closed: the death-detection
        time plus two payloads at the slowest link rate the run promises to tolerate."""
        stripe = (self.layout.numel + self.n_extra) // max(self.stripes, 1) if self.layout else 0
        payload = self.codec.payload_bytes(stripe)
        return self.cfg.wan.dead_after_s + 2 * payload * 8 / (self.cfg.wan.min_rate_mbit * 1e6) + 1.0

    @property
    def max_payload(self) -> int:
        if self.layout is None:
            return INITIAL_MAX_PAYLOAD
        stripe = max(
            self.layout.stripe_size(f, k) for f in range(self.fragments) for k in range(self.stripes)
        )
        extra = -(-self.n_extra // self.stripes)
        return 4 * (stripe + extra) + 2 * self.codec.payload_bytes(stripe) + (1 << 16)

    # ------------------------------------------------------------------ serving one connection

    def serve_connection(self, conn: Connection) -> None:
        """hello first, then one reply per request until the peer goes away."""
        try:
            hello = conn.recv(self.clock_deadline(30.0))
            city, rank = self._hello(hello)
            self._admit(conn, city)
            conn.send(Message(p.WELCOME, {"epoch": self.members.epoch}), self.clock_deadline(30.0))
            while not self.stopping:
                conn.max_payload = self.max_payload
                msg = conn.recv(self.clock_deadline(3600.0))
                try:
                    reply = self.handle(city, rank, msg)
                except RequestError as exc:
                    self.event("refused", city=city, rank=rank, request=msg.kind, reason=str(exc))
                    reply = Message(p.ERROR, {"reason": str(exc)})
                conn.send(reply, self.clock_deadline(self.reply_timeout_s))
        except (ConnectionLost, TimeoutError):
            return
        except WireError as exc:
            self.event("bad_message", peer=conn.peer.address, reason=str(exc))
        except RequestError as exc:
            self.event("refused", peer=conn.peer.address, reason=str(exc))
            self._audit_connection(conn, False, reason="refused", detail=str(exc))
            with contextlib.suppress(ConnectionLost, TimeoutError):
                conn.send(Message(p.ERROR, {"reason": str(exc)}), self.clock_deadline(5.0))

    def _admit(self, conn: Connection, city: int) -> None:
        """With TLS, the certificate is the identity: a city may only speak as the name it carries."""
        peer = conn.peer.identity
        if self.secure:
            assert self.names is not None
            if not isinstance(peer, tls.Peer):
                raise RequestError("no verified certificate")
            if peer.role != "city" or peer.name != self.names[city]:
                raise RequestError(
                    f"certificate of {peer.role} {peer.name!r} may not speak as city {city} "
                    f"({self.names[city]!r})"
                )
        self._audit_connection(conn, True)

    def _audit_connection(self, conn: Connection, accepted: bool, reason: str = "", detail: str = "") -> None:
        peer = conn.peer.identity
        known = peer if isinstance(peer, tls.Peer) else None
        self.audit.connection(
            conn.peer.address,
            accepted,
            fingerprint=known.fingerprint_sha256 if known else None,
            role=known.role if known else None,
            name=known.name if known else None,
            reason=reason or None,
            detail=detail or None,
        )

    def refused_handshake(self, address: str, exc: BaseException) -> None:
        """The transport's callback: a TLS handshake that failed (no/foreign/expired/revoked certificate)."""
        why = tls.refusal(exc)
        self.event("refused", peer=address, reason=why.reason, detail=why.detail)
        self.audit.connection(address, False, reason=why.reason, detail=why.detail)

    def city_name(self, city: int) -> str:
        return self.names[city] if self.names else str(city)

    @staticmethod
    def clock_deadline(seconds: float) -> float:
        return time.monotonic() + seconds  # sockets run on the real clock, whatever `clock` is

    @property
    def reply_timeout_s(self) -> float:
        return self.cfg.wan.round_timeout_s + self.transfer_s + 5.0

    def _hello(self, msg: Message) -> tuple[int, int]:
        if msg.kind != p.HELLO:
            raise RequestError(f"the first message must be hello, got {msg.kind}")
        city, rank, run = msg.fields["city"], msg.fields["rank"], msg.fields["run"]
        if run != self.fingerprint:
            raise RequestError(f"run {run} is not this run ({self.fingerprint}): another config or run dir")
        if not (0 <= city < self.cities and 0 <= rank < self.stripes):
            raise RequestError(
                f"city {city} rank {rank}: this run has cities 0..{self.cities - 1}, ranks 0.."
            )
        return city, rank

    def handle(self, city: int, rank: int, msg: Message) -> Message:
        handler = {
            p.REGISTER: self._register,
            p.INITIAL: self._initial,
            p.WAIT_START: self._wait_start,
            p.HEARTBEAT: self._heartbeat,
            p.EXCHANGE: self._exchange,
            p.FETCH: self._fetch,
            p.VALIDATION: self._validation,
            p.FINAL: self._final,
            p.LEAVE: self._leave,
        }.get(msg.kind)
        if handler is None:
            raise RequestError(f"{msg.kind} is not a request")
        try:
            return handler(city, rank, msg)
        except WireError as exc:  # a well-formed frame whose arrays do not fit the request
            raise RequestError(str(exc)) from None

    # ------------------------------------------------------------------ membership

    def _register(self, city: int, rank: int, msg: Message) -> Message:
        f = msg.fields
        if rank != 0:
            raise RequestError("only local rank 0 registers its city")
        layout = Layout(f["n_params"], self.fragments, self.stripes)
        with self.cond:
            if self.layout is None:
                self.layout, self.n_extra = layout, f["n_extra"]
                self.control = np.zeros(self.n_extra, np.float32) if self.n_extra else None
            elif (layout, f["n_extra"]) != (self.layout, self.n_extra):
                raise RequestError(
                    f"city {city}: {f['n_params']} parameters / {f['n_extra']} state values, the run has "
                    f"{self.layout.numel} / {self.n_extra}: another model config"
                )
            if self.initial_sha and f["initial_sha"] and f["initial_sha"] != self.initial_sha:
                raise RequestError(
                    f"city {city}: its initial model differs from the run's (seed or model config?)"
                )
            now = self.clock()
            self.registered_here.add(city)
            self.first_here = self.first_here or now
            record = self.members.register(city, f["name"], now)
            up_to_date = [self.versions.get(i, 0) for i in range(self.fragments)] == f["versions"]
            record.state = "training" if up_to_date or not self.globals else "healing"
            need_initial = not self.globals and self.initial_city in (None, city)
            if need_initial:
                self.initial_city = city
            self.event(
                "join", city=city, name=f["name"], epoch=record.epoch, step=f["step"], state=record.state
            )
            self.audit.join(self.city_name(city), "", epoch=record.epoch, step=f["step"], state=record.state)
            self._save()
            self.cond.notify_all()
            return Message(
                p.REGISTERED,
                {"epoch": record.epoch, "versions": self._versions(), "need_initial": need_initial},
            )

    def _heartbeat(self, city: int, rank: int, msg: Message) -> Message:
        with self.cond:
            if city not in self.members.cities or self.members.cities[city].state in ("left", "finished"):
                raise RequestError(f"city {city} is not registered: register again")
            self.members.seen(city, self.clock(), msg.fields["step"], msg.fields["state"])
            self.heartbeating.add(city)
        return Message(p.OK)

    def _leave(self, city: int, rank: int, msg: Message) -> Message:
        with self.cond:
            finished = msg.fields["reason"] == "finished"
            self.members.leave(city, finished)
            self.event("leave", city=city, reason=msg.fields["reason"])
            self.audit.leave(self.city_name(city), msg.fields["reason"])
            self._save()
            self.cond.notify_all()
        return Message(p.OK)

    def _validation(self, city: int, rank: int, msg: Message) -> Message:
        """A city's validation pass: pooled per step for early stopping (federation/early_stop.py)."""
        try:
            sums = check_sums(msg.fields["sums"])
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        if rank != 0 or msg.fields["step"] < 0:
            raise RequestError(f"validation from rank {rank} at step {msg.fields['step']}: rank 0, step >= 0")
        if self.early is None:
            return Message(p.OK)
        with self.cond:
            decided = self.early.report(city, msg.fields["step"], sums)
            for step, rmse, decision in decided:
                self.event("validation", step=step, rmse=round(rmse, 4), best_step=self.early.best.best_step)
                if decision.stop:
                    self.event("early_stop", step=step, best_step=self.early.best.best_step)
            if decided:
                self._save()
        return Message(p.OK)

    def _final(self, city: int, rank: int, msg: Message) -> Message:
        with self.cond:
            self.finals[city] = msg.fields["metrics"]
            self._save()
        return Message(p.OK)

    # ------------------------------------------------------------------ the initial model and the start

    def _initial(self, city: int, rank: int, msg: Message) -> Message:
        fragment, stripe = msg.fields["fragment"], msg.fields["stripe"]
        with self.cond:
            if self.globals or city != self.initial_city or self.layout is None:
                raise RequestError(f"city {city} was not asked for the initial model")
            self._check_stripe(fragment, stripe)
            expect_arrays(msg, [((self.layout.stripe_size(fragment, stripe),), np.dtype(np.float32))])
            self.initial[(fragment, stripe)] = check_input(msg.arrays[0]).copy()
            if len(self.initial) == self.fragments * self.stripes:
                for f in range(self.fragments):
                    self.globals[f] = np.concatenate([self.initial[(f, k)] for k in range(self.stripes)])
                    self.versions[f] = 0
                flat = np.concatenate([self.globals[f] for f in range(self.fragments)])
                self.initial_sha = hashlib.sha256(flat.tobytes()).hexdigest()
                self.initial.clear()
                self.event("initial_model", city=city, sha256=self.initial_sha, values=int(flat.size))
                self._save()
                self.cond.notify_all()
        return Message(p.OK)

    def _wait_start(self, city: int, rank: int, msg: Message) -> Message:
        """Hold a joining city until every city that has not finished registered with this coordinator
        process (or its start timeout passed with min_cities): the first round of a run - and of a
        resumed run - then includes everyone, so a run without faults is reproducible."""
        with self.cond:
            while not self._gate_open():
                self.cond.wait(TICK_S * 4)
            if not self.started:
                self.started = True
                self.event("start", cities=sorted(self.registered_here))
                self._save()
            return Message(p.START, {"versions": self._versions(), "fleet_step": self._fleet_step(city)})

    def _gate_open(self) -> bool:
        if not self.globals:
            return False
        # Cities train with this process (it was restarted mid-run): join them. Only once the run has
        # started: a city that heartbeats before its start (a malicious one) must not open the gate.
        if self.started and self.heartbeating:
            return True
        unfinished = {
            c
            for c in range(self.cities)
            if self.members.cities.get(c) is None or self.members.cities[c].state != "finished"
        }
        waited = self.clock() - (self.first_here or self.clock())
        return unfinished <= self.registered_here or (
            waited >= self.cfg.wan.start_timeout_s and len(self.registered_here) >= self.min_cities
        )

    # ------------------------------------------------------------------ rounds

    def _exchange(self, city: int, rank: int, msg: Message) -> Message:
        f = msg.fields
        fragment, stripe = f["fragment"], f["stripe"]
        with self.cond:
            if not self.globals:
                raise RequestError("the run has no global model yet")
            if city not in self.members.cities:
                raise RequestError(f"city {city} is not registered: register again")
            self._check_stripe(fragment, stripe)
            arrays = self._decode_upload(msg, fragment, stripe)
            now = self.clock()
            self.members.seen(city, now)
            rnd = self.forming.get(fragment)
            if rnd is None or rnd.resolved:
                rnd = Round(self.next_round[fragment], fragment, now, now + self.cfg.wan.round_timeout_s)
                self.next_round[fragment] += 1
                self.forming[fragment] = rnd
            if rnd.status == CLOSED and city not in rnd.quorum:
                return self._round_reply(rnd, city, p.MISSED, "the round had formed without this city")
            if stripe in rnd.uploads.get(city, {}):
                raise RequestError(f"city {city} stripe {stripe}: uploaded twice to round {rnd.id}")
            nbytes = sum(a.nbytes for a in msg.arrays)
            upload = Upload(arrays, f["base_version"], f["steps"], f["attempt"], nbytes)
            rnd.uploads.setdefault(city, {})[stripe] = upload
            self._advance(rnd)
            deadline = self.clock() + self.reply_timeout_s
            while not rnd.resolved and self.clock() < deadline and not self.stopping:
                self.cond.wait(TICK_S)
                self._advance(rnd)
            reply = rnd.replies.get((city, stripe))
            if reply is not None:
                return reply
            status = p.SKIPPED if rnd.status == SKIPPED or not rnd.resolved else p.MISSED
            return self._round_reply(rnd, city, status, rnd.reason or "not part of the round's quorum")

    def _decode_upload(self, msg: Message, fragment: int, stripe: int) -> list[np.ndarray]:
        """The stripe's pseudo-gradient (and SCAFFOLD's delta c_i) as float32, checked before it is kept."""
        assert self.layout is not None
        sizes = [self.layout.stripe_size(fragment, stripe)]
        if self.n_extra:
            a, b = _stripe_of(self.n_extra, self.stripes, stripe)
            sizes.append(b - a)
        shapes = [s for n in sizes for s in self.codec.payload_shapes(n)]
        expect_arrays(msg, shapes)
        decoded, at = [], 0
        for n in sizes:
            parts = len(self.codec.payload_shapes(n))
            values = self.codec.decode(msg.arrays[at : at + parts], n)
            at += parts
            if not np.isfinite(values).all():
                raise RequestError(f"fragment {fragment} stripe {stripe}: the update has non-finite values")
            decoded.append(values)
        return decoded

    def _advance(self, rnd: Round) -> None:
        if rnd.resolved:
            return
        if rnd.status == FORMING and self._deadlocked():
            rnd.deadline = min(rnd.deadline, self.clock())  # stop waiting for cities blocked elsewhere
        ready = rnd.advance(
            self.clock(), self.members.live(self.clock()), self.min_cities, self.stripes, self.transfer_s
        )
        if ready:
            self._commit(rnd)
        if rnd.resolved:
            if rnd.status == SKIPPED:
                self.event("round_skipped", fragment=rnd.fragment, round=rnd.id, reason=rnd.reason)
            self.cond.notify_all()

    def _deadlocked(self) -> bool:
        """Every live city waits in a forming round, and they are not all in the same one: after a
        city missed a round, two fragments' rounds can each wait for the cities blocked in the other
        (a convoy of round_timeout_s per round). Never the case without faults: a city behind the
        others has not uploaded to a round the others skipped, so it is not waiting anywhere."""
        forming = [r for r in self.forming.values() if r.status == FORMING]
        if len(forming) < 2:
            return False
        live = set(self.members.live(self.clock()))
        return bool(live) and live <= {c for r in forming for c in r.uploads}

    def _commit(self, rnd: Round) -> None:
        assert self.layout is not None
        f, quorum = rnd.fragment, rnd.quorum
        weights = {c: self._weight(c, f, rnd.uploads[c][0].steps) for c in quorum}
        updates = {
            c: np.concatenate([rnd.uploads[c][k].arrays[0] for k in range(self.stripes)]) for c in quorum
        }
        w = self.cfg.wan
        try:
            agg = aggregate(
                updates,
                weights,
                updates[quorum[0]].shape,
                method=w.aggregate,
                clip_factor=w.clip_factor or None,
                trim=w.trim,
            )
        except EmptyRound as exc:
            rnd.status, rnd.reason = SKIPPED, str(exc)
            return
        self._audit_updates(rnd, updates, agg)
        mean = agg.value.astype(np.float32)
        before, version = self.globals[f].copy(), self.versions[f]
        g = self.globals[f]
        self.outer.step(f, g, mean)
        downlink = self._downlink(f, before, g)
        control = self._move_control(quorum, rnd, weights) if self.n_extra else None
        self.versions[f] = version + 1
        for c in quorum:
            self.committed_attempt.setdefault(c, {})[f] = rnd.uploads[c][0].attempt
            self.took_part.setdefault(c, {})[f] = version + 1
            self.members.cities[c].last_round[f] = rnd.id
        self._save()  # write-ahead: nobody hears of the round before it is on disk
        for c in quorum:
            for k in range(self.stripes):
                stale = rnd.uploads[c][k].base_version != version
                mode = p.FULL if stale or downlink is None else p.DELTA
                a, b = self.layout.stripe(f, k)
                arrays = [g[a:b].copy()] if mode == p.FULL else list(downlink[k])
                if control is not None:
                    arrays += control[k]
                rnd.replies[(c, k)] = self._round_reply(rnd, c, p.COMMITTED, "", mode, arrays, version + 1)
        rnd.status = COMMITTED
        self.audit.round(rnd.id, [self.city_name(c) for c in quorum], fragment=f, version=version + 1)
        self.event(
            "round",
            fragment=f,
            round=rnd.id,
            version=version + 1,
            participants=quorum,
            seconds=round(self.clock() - rnd.opened_at, 4),
            steps=[rnd.uploads[c][0].steps for c in quorum],
        )

    def _move_control(
        self, quorum: list[int], rnd: Round, weights: dict[int, float]
    ) -> list[list[np.ndarray]]:
        """SCAFFOLD (Karimireddy et al. 2020): c += |S|/N x the participants' mean delta c_i, weighted like
        their updates (so sum_i w_i c_i = c and the corrections cancel in the average). Returns c's codec
        payload per stripe: every participant gets c whole, also one that missed rounds."""
        assert self.control is not None
        deltas = {
            c: np.concatenate([rnd.uploads[c][k].arrays[1] for k in range(self.stripes)]) for c in quorum
        }
        mean = aggregate(deltas, weights, deltas[quorum[0]].shape).value.astype(np.float32)
        self.control += np.float32(len(quorum) / self.cities) * mean
        bounds = [_stripe_of(self.n_extra, self.stripes, k) for k in range(self.stripes)]
        return [self.codec.encode(self.control[a:b]) for a, b in bounds]

    def _audit_updates(self, rnd: Round, updates: dict[int, np.ndarray], agg: Any) -> None:
        """Each update of the round: hash, bytes, norm, and whether clipping scaled it."""
        for c, update in updates.items():
            clip = agg.clips.get(c)
            self.audit.update(
                self.city_name(c),
                rnd.id,
                hashlib.sha256(update.tobytes()).hexdigest(),
                sum(u.nbytes for u in rnd.uploads[c].values()),
                norm=clip.norm if clip else l2_norm(update),
                clipped=bool(clip and clip.clipped),
                scale=clip.scale if clip else 1.0,
                rejected=agg.rejected.get(c),
            )

    def _downlink(self, f: int, before: np.ndarray, g: np.ndarray) -> list[list[np.ndarray]] | None:
        """Per stripe, the codec payload of the global's change; the global becomes exactly what an
        up-to-date city reconstructs from it (the residual, with error feedback, is kept here)."""
        if self.codec.name == "none":
            return None  # float32 globals are sent as they are: exact, and no larger
        assert self.layout is not None
        out = []
        for k in range(self.stripes):
            a, b = self.layout.stripe(f, k)
            change = g[a:b] - before[a:b]
            key = f"{f}/{k}"
            payload = (
                self.feedback.encode(self.codec, change, key) if self.feedback else self.codec.encode(change)
            )
            g[a:b] = before[a:b] + self.codec.decode(payload, b - a)
            out.append(payload)
        return out

    def _weight(self, city: int, fragment: int, steps: int) -> float:
        """FedAvg weight from what the coordinator knows: the samples of the steps the city trained
        since it last took part, at most one round's steps per round it missed (plus this one)."""
        last = self.took_part.get(city, {}).get(fragment, 0)
        rounds = self.versions[fragment] - last + 1
        cap = max(self.cfg.wan.sync_every, 1) * rounds
        return float(self.samples_per_step * max(1, min(steps, cap)))

    def _round_reply(
        self,
        rnd: Round,
        city: int,
        status: str,
        reason: str,
        mode: str = p.FULL,
        arrays: list[np.ndarray] | None = None,
        version: int | None = None,
    ) -> Message:
        fields = {
            "status": status,
            "round": rnd.id,
            "version": self.versions.get(rnd.fragment, 0) if version is None else version,
            "participants": list(rnd.quorum) if status == p.COMMITTED else [],
            "mode": mode,
            "committed_attempt": self.committed_attempt.get(city, {}).get(rnd.fragment, -1),
            "stop": self.stopping_run and status == p.COMMITTED,
            "finish": self.early is not None and self.early.stop_step is not None and status == p.COMMITTED,
            "reason": reason,
            "fleet_step": self._fleet_step(city),
        }
        return Message(p.ROUND, fields, arrays or [])

    def _fleet_step(self, city: int) -> int:
        """Where the other live cities are: the (lower) median of their heartbeat steps (-1: none).
        What a city that fell behind catches up to (wan.catch_up); the median, so one city that ran
        ahead (its link was cut: no rounds to wait for) does not make the others look behind. A city
        back after every other one finished has nobody to catch up with: it trains its steps."""
        now = self.clock()
        steps = [r.step for c, r in self.members.cities.items() if c != city and self.members.is_live(c, now)]
        return statistics.median_low(steps) if steps else -1

    def _fetch(self, city: int, rank: int, msg: Message) -> Message:
        fragment, stripe = msg.fields["fragment"], msg.fields["stripe"]
        with self.cond:
            if not self.globals:
                raise RequestError("there is no global model yet")
            self._check_stripe(fragment, stripe)
            assert self.layout is not None
            a, b = self.layout.stripe(fragment, stripe)
            fields = {
                "version": self.versions[fragment],
                "committed_attempt": self.committed_attempt.get(city, {}).get(fragment, -1),
            }
            return Message(p.GLOBAL, fields, [self.globals[fragment][a:b].copy()])

    def _check_stripe(self, fragment: int, stripe: int) -> None:
        if not (0 <= fragment < self.fragments and 0 <= stripe < self.stripes):
            raise RequestError(
                f"fragment {fragment} stripe {stripe}: this run has {self.fragments} x {self.stripes}"
            )

    def _versions(self) -> list[int]:
        return [self.versions.get(f, 0) for f in range(self.fragments)]

    # ------------------------------------------------------------------ the background tick

    def tick(self) -> None:
        """Deadlines and liveness change with time alone: re-check them (the monitor thread)."""
        with self.cond:
            live = set(self.members.live(self.clock()))
            for city in sorted(self.was_live - live):
                record = self.members.cities.get(city)
                if record is not None and record.state == "training":
                    self.event("silent", city=city, after_s=self.cfg.wan.dead_after_s)
            for city in sorted(live - self.was_live):
                self.event("live", city=city)
            self.was_live = live
            if self._gate_open():
                self.cond.notify_all()
            for rnd in list(self.forming.values()):
                self._advance(rnd)

    def revoked(self, peer: tls.Peer) -> None:
        """The CRL now lists a city whose connections were live (the service closed them): it leaves
        the run now, so no round waits for it; it cannot come back with that certificate."""
        with self.cond:
            city = self.names.index(peer.name) if self.names and peer.name in self.names else None
            self.event("revoked", city=city, name=peer.name, serial=f"{peer.serial:x}")
            record = self.members.cities.get(city) if city is not None else None
            if city is None or record is None or record.state in ("left", "finished"):
                return
            self.members.leave(city, False)
            self.audit.leave(peer.name, "revoked", fingerprint=peer.fingerprint_sha256)
            self._save()
            self.cond.notify_all()

    def request_stop(self) -> None:
        """Stop the run at a round every city takes part in: its participants are told in the reply,
        checkpoint right after merging it and leave; running the same command again resumes exactly."""
        with self.cond:
            if not self.stopping_run:
                self.stopping_run = True
                self.event("stop_requested")

    def finished(self) -> bool:
        """Every city of the run has trained to the end."""
        cities = self.members.cities
        return len(cities) == self.cities and all(r.state == "finished" for r in cities.values())

    # ------------------------------------------------------------------ events and persistence

    def event(self, kind: str, **fields: Any) -> None:
        record = {"time": time.time(), "event": kind, **fields}
        with (self.dir / "events.jsonl").open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if kind in (
            "join",
            "leave",
            "silent",
            "round_skipped",
            "start",
            "refused",
            "bad_message",
            "stop_requested",
            "early_stop",
        ):
            print(f"[coordinator] {kind} {json.dumps(fields)}", flush=True)

    def _save(self) -> None:
        """state.json is the commit point; it names the arrays file written just before it."""
        self.state_generation += 1
        arrays = {f"global{f}": g for f, g in self.globals.items()}
        arrays.update({f"outer_{k}": v for k, v in self.outer.state_dict().items()})
        if self.control is not None:
            arrays["control"] = self.control
        if self.feedback:
            arrays.update({f"residual_{k}": v for k, v in self.feedback.state_dict().items()})
        name = f"state-{self.state_generation}.npz"
        atomic_write(self.dir / name, lambda fh: np.savez(fh, **arrays))
        state = {
            "arrays": name,
            "generation": self.state_generation,
            "layout": [self.layout.numel, self.n_extra] if self.layout else None,
            "versions": self.versions,
            "next_round": self.next_round,
            "initial_sha": self.initial_sha,
            "initial_city": self.initial_city,
            "started": self.started,
            "epoch": self.members.epoch,
            "members": {
                c: {"name": r.name, "epoch": r.epoch, "state": r.state}
                for c, r in self.members.cities.items()
            },
            "committed_attempt": self.committed_attempt,
            "took_part": self.took_part,
            "finals": self.finals,
            "early_stop": self.early.state_dict() if self.early else None,
        }
        atomic_write_text(self.dir / STATE_FILE, json.dumps(state, indent=1))
        for old in self.dir.glob("state-*.npz"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def _load(self) -> None:
        path = self.dir / STATE_FILE
        if not path.is_file():
            return
        state = json.loads(path.read_text())
        with np.load(self.dir / state["arrays"]) as npz:
            arrays = {k: npz[k] for k in npz.files}
        self.state_generation = state["generation"]
        if state["layout"]:
            self.layout = Layout(state["layout"][0], self.fragments, self.stripes)
            self.n_extra = state["layout"][1]
        self.globals = {int(k[6:]): v for k, v in arrays.items() if k.startswith("global")}
        self.versions = {int(k): v for k, v in state["versions"].items()}
        self.next_round = {int(k): v for k, v in state["next_round"].items()}
        self.outer.load_state_dict({k[6:]: v for k, v in arrays.items() if k.startswith("outer_")})
        self.control = arrays["control"].copy() if "control" in arrays else None
        if self.feedback:
            self.feedback.load_state_dict({k[9:]: v for k, v in arrays.items() if k.startswith("residual_")})
        self.initial_sha, self.initial_city, self.started = (
            state["initial_sha"],
            state["initial_city"],
            state["started"],
        )
        self.members.epoch = state["epoch"]
        now = self.clock() - self.cfg.wan.dead_after_s - 1  # nobody is live until it heartbeats again
        for c, r in state["members"].items():
            record = self.members.register(int(c), r["name"], now)
            record.epoch, record.state = r["epoch"], r["state"]
        self.members.epoch = state["epoch"]
        self.committed_attempt = {
            int(c): {int(f): a for f, a in d.items()} for c, d in state["committed_attempt"].items()
        }
        self.took_part = {int(c): {int(f): v for f, v in d.items()} for c, d in state["took_part"].items()}
        self.finals = {int(c): m for c, m in state["finals"].items()}
        if self.early is not None and state.get("early_stop"):
            self.early.load_state_dict(state["early_stop"])
        self.event("restored", generation=self.state_generation, versions=self._versions())

    def _carry_outer(self, source: Path) -> None:
        """train.init_from: start from the outer optimizer state the run at `source` ended with, when it had
        the same outer optimizer (the same algorithm and wan.outer_optimizer; streaming: the same
        fragments). docs/model_quality.md"""
        before = load_config(source / "config.yaml", ["train.init_from="]).wan
        state = source / "coordinator" / STATE_FILE
        now = self.cfg.wan
        same = (before.algorithm, before.outer_optimizer) == (now.algorithm, now.outer_optimizer) and (
            before.algorithm != "streaming" or before.fragments == now.fragments
        )
        if same and state.is_file():
            with np.load(source / "coordinator" / json.loads(state.read_text())["arrays"]) as npz:
                self.outer.load_state_dict({k[6:]: npz[k] for k in npz.files if k.startswith("outer_")})
        self.event("init_from", source=str(source), outer_state=bool(self.outer.state_dict()))


def _stripe_of(numel: int, parts: int, k: int) -> tuple[int, int]:
    return Layout(numel, 1, parts).stripe(0, k)
