"""A city rank's side of the coordinator: a link that survives the coordinator going away.

`Link` is one rank's connection: every call has a deadline; any failure closes the connection and the
next call reconnects, after an exponential backoff, re-reading where the coordinator is (a restarted
coordinator may come back elsewhere). While it backs off, calls fail at once: a city cut off from the
WAN keeps training instead of waiting for connect timeouts at every round. `CityAgent` is what local
rank 0 does for its city: register, wait for the start, heartbeat in a background thread (and
register again when a restarted coordinator no longer knows the city), report the end, leave.
"""

from __future__ import annotations

import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from crosscity.federation import protocol as p
from crosscity.federation import tls
from crosscity.federation.transport import Connection, ConnectionLost, TlsEndpoint, connect
from crosscity.federation.wire import Message, WireError

Locate = Callable[[], tuple[str, int]]  # where the coordinator is now (raises OSError if unknown)


MAX_PENDING_PASSES = 64  # validation passes a city keeps for the coordinator while it is away


class Unreachable(ConnectionError):
    """The coordinator could not be reached (or is being backed off from); nothing was decided."""


class Refused(RuntimeError):
    """The coordinator answered with an error: the request was wrong or not allowed."""


@dataclass
class Backoff:
    first_s: float = 0.5
    max_s: float = 10.0
    delay_s: float = 0.0
    not_before: float = 0.0

    def failed(self) -> None:
        self.delay_s = min(self.max_s, self.delay_s * 2 or self.first_s)
        self.not_before = time.monotonic() + self.delay_s

    def succeeded(self) -> None:
        self.delay_s, self.not_before = 0.0, 0.0


class Link:
    def __init__(
        self,
        locate: Locate,
        city: int,
        rank: int,
        run: str,
        max_payload: int,
        tls: TlsEndpoint | None = None,
        connect_timeout_s: float = 5.0,
    ) -> None:
        self.locate, self.city, self.rank, self.run = locate, city, rank, run
        self.max_payload, self.tls, self.connect_timeout_s = max_payload, tls, connect_timeout_s
        self.conn: Connection | None = None
        self.backoff = Backoff()
        self.bytes_sent = self.bytes_recv = 0  # over every connection this link opened
        self._lock = threading.Lock()  # one request in flight per link

    def call(self, msg: Message, timeout_s: float, wait: bool = True) -> Message:
        """Send `msg`, return the reply; Unreachable on any transport failure, Refused on `error`.
        wait=False: Unreachable at once while another call is in flight on this link."""
        if not self._lock.acquire(blocking=wait):
            raise Unreachable(f"{msg.kind}: another call is in flight on this link")
        try:
            conn = self._connected()
            before = (conn.bytes_sent, conn.bytes_recv)
            try:
                reply = conn.request(msg, timeout_s)
            except (ConnectionLost, TimeoutError, WireError) as exc:
                conn.close()
                self.conn = None
                self.backoff.failed()
                raise Unreachable(f"{msg.kind}: {exc}") from None
            finally:
                self.bytes_sent += conn.bytes_sent - before[0]
                self.bytes_recv += conn.bytes_recv - before[1]
        finally:
            self._lock.release()
        if reply.kind == p.ERROR:
            raise Refused(reply.fields["reason"])
        return reply

    def _connected(self) -> Connection:
        if self.conn is not None and not self.conn.dropped():
            return self.conn
        self.close()  # a connection the coordinator dropped would fail this call: open a new one
        if time.monotonic() < self.backoff.not_before:
            raise Unreachable(f"backing off for {self.backoff.delay_s:.1f} s after the last failure")
        try:
            host, port = self.locate()
            conn = connect(host, port, self.connect_timeout_s, self.max_payload, self.tls)
            hello = Message(p.HELLO, {"city": self.city, "rank": self.rank, "run": self.run})
            reply = conn.request(hello, self.connect_timeout_s)
        except (OSError, ConnectionLost, TimeoutError, WireError, ValueError) as exc:
            self.backoff.failed()
            if isinstance(
                exc.__cause__, ssl.SSLError | tls.IdentityError
            ):  # no retry fixes a refused identity
                raise Refused(f"TLS: {tls.refusal(exc.__cause__)}") from None
            raise Unreachable(f"coordinator: {exc}") from None
        self.bytes_sent += conn.bytes_sent
        self.bytes_recv += conn.bytes_recv
        if reply.kind == p.ERROR:
            conn.close()
            self.backoff.failed()
            raise Refused(reply.fields["reason"])
        self.backoff.succeeded()
        self.conn = conn
        return conn

    def abort(self) -> None:
        """From another thread: break the call in flight (it fails at once with Unreachable)."""
        conn = self.conn
        if conn is not None:
            conn.close()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class CityStatus:
    """What the heartbeat reports and a re-registration needs, kept current by the trainer."""

    step: int = 0
    state: str = "training"
    versions: list[int] | None = None
    validation: list[tuple[int, dict[str, float]]] = field(default_factory=list)  # passes not delivered yet


class CityAgent:
    """Local rank 0's membership duties for its city (data-plane calls go through each rank's Link)."""

    def __init__(
        self,
        link_factory: Callable[[], Link],
        name: str,
        n_params: int,
        n_extra: int,
        heartbeat_s: float,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.control = link_factory()  # registration, start, final, leave
        self.beat = link_factory()  # heartbeats on their own connection: never queued behind data
        self.name, self.n_params, self.n_extra, self.heartbeat_s = name, n_params, n_extra, heartbeat_s
        self.status = CityStatus()
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.registered = threading.Event()
        self.down_since: float | None = None  # monotonic time of the first failed heartbeat of an outage
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._passes_lock = threading.Lock()  # status.validation: the trainer adds, the heartbeat sends

    def register(self, versions: list[int], step: int, initial_sha: str, timeout_s: float) -> Message:
        """Register (retrying while the coordinator is unreachable, up to timeout_s)."""
        self.status.versions, self.status.step = versions, step
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                reply = self.control.call(self._registration(initial_sha), 30.0)
                self.registered.set()
                return reply
            except Unreachable as exc:
                if time.monotonic() > deadline:
                    raise
                self.log(f"[city {self.control.city}] coordinator not reachable yet ({exc}); retrying")
                time.sleep(max(0.2, self.control.backoff.not_before - time.monotonic()))

    def _registration(self, initial_sha: str) -> Message:
        fields = {
            "name": self.name,
            "n_params": self.n_params,
            "n_extra": self.n_extra,
            "initial_sha": initial_sha,
            "versions": list(self.status.versions or []),
            "step": self.status.step,
        }
        return Message(p.REGISTER, fields)

    def wait_start(self, timeout_s: float) -> Message:
        return self.control.call(Message(p.WAIT_START), timeout_s)

    def start_heartbeats(self) -> None:
        self._thread = threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True)
        self._thread.start()

    @property
    def _beat_timeout_s(self) -> float:
        """A heartbeat (or a validation pass riding with it) that takes longer has failed."""
        return max(2 * self.heartbeat_s, 1.0)

    def unreachable_s(self) -> float:
        """How long the heartbeats have been failing (0 while they get through)."""
        since = self.down_since
        return 0.0 if since is None else time.monotonic() - since

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            msg = Message(p.HEARTBEAT, {"step": self.status.step, "state": self.status.state})
            try:
                self.beat.call(msg, self._beat_timeout_s)
                if self.down_since is not None:
                    gone = time.monotonic() - self.down_since
                    self.log(f"[city {self.beat.city}] coordinator back after {gone:.1f} s")
                self.down_since = None
                self._deliver_validation()
            except Unreachable:
                if self.down_since is None:
                    self.down_since = time.monotonic()
                    self.log(f"[city {self.beat.city}] coordinator unreachable; training on locally")
            except Refused:  # a restarted coordinator without this city, or one that let it go: rejoin
                try:
                    self.control.call(self._registration(""), 30.0)
                    self.log(f"[city {self.beat.city}] registered again with the coordinator")
                except (Unreachable, Refused) as exc:
                    self.log(f"[city {self.beat.city}] re-registration failed: {exc}")

    def report_validation(self, step: int, sums: dict[str, float]) -> None:
        """Hand a validation pass to the heartbeat thread (the trainer never waits on the WAN for it);
        the passes wait in order, the last MAX_PENDING_PASSES of them, while the coordinator is away."""
        with self._passes_lock:
            self.status.validation = [*self.status.validation, (step, dict(sums))][-MAX_PENDING_PASSES:]

    def _deliver_validation(self) -> None:
        while self.status.validation:
            step, sums = self.status.validation[0]
            try:
                msg = Message(p.VALIDATION, {"step": step, "sums": sums})
                self.beat.call(msg, self._beat_timeout_s)
            except Refused as exc:
                self.log(f"[city {self.beat.city}] validation pass at step {step} refused: {exc}")
            with self._passes_lock:  # delivered or refused (Unreachable propagates: kept for the next beat)
                self.status.validation = [v for v in self.status.validation if v[0] != step]

    def final(self, metrics: dict, timeout_s: float) -> None:
        self.control.call(Message(p.FINAL, {"metrics": metrics}), timeout_s)

    def leave(self, reason: str, timeout_s: float = 5.0) -> None:
        """Say goodbye (best effort: a coordinator that is down learns it from the missing heartbeats)."""
        self.stop()
        try:
            self.control.call(Message(p.LEAVE, {"reason": reason}), timeout_s)
        except (Unreachable, Refused) as exc:
            self.log(f"[city {self.control.city}] could not tell the coordinator it leaves: {exc}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def close(self) -> None:
        self.stop()
        self.control.close()
        self.beat.close()
