"""The audit trail: an append-only, hash-chained JSONL log of who connected and what they sent.

Each line is one record, canonical JSON (sorted keys, no spaces):

    {"event": ..., "fields": {...}, "hash": H, "prev": H_prev, "seq": N, "time": "...Z"}

`hash` = sha256 over the canonical JSON of the record without `hash`; `prev` is the previous
record's hash ("0" x 64 for the first); `seq` is the line number. So `verify` finds the first line
that was changed, deleted, inserted or moved. It cannot see lines cut off at the end: pin the head
(the last seq and hash, which `verify` returns and `crosscity audit` prints) somewhere else when
that matters.

One `AuditLog` per file: appends from threads are serialised by a lock, written with one write
to an O_APPEND descriptor, flushed and fsync'd before `append` returns; a second writer (another
process, or a second AuditLog on the same file) is refused by an exclusive flock. A record torn by a
crash (no final newline) is cut off at reopening and the cut is itself recorded (`recovered`).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILENAME = "audit.jsonl"
GENESIS = "0" * 64
KEYS = frozenset({"seq", "time", "event", "fields", "prev", "hash"})
CONNECTION, JOIN, LEAVE, ROUND, UPDATE, RECOVERED = (
    "connection",
    "join",
    "leave",
    "round",
    "update",
    "recovered",
)


class AuditError(ValueError):
    """The log cannot be appended to (corrupt last record, another writer)."""


def canonical(obj: Any) -> bytes:
    """One byte string per record (sorted keys, no spaces, no NaN), so its hash can be recomputed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def record_hash(record: dict[str, Any]) -> str:
    """sha256 of the record without its own `hash`; covers `prev`, which chains it to the one before."""
    return hashlib.sha256(canonical({k: v for k, v in record.items() if k != "hash"})).hexdigest()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Appends records to RUN_DIR/audit.jsonl (or any path), continuing the chain already there."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise AuditError(f"{self.path}: another writer holds this audit log") from None
        if created:
            _fsync_dir(self.path.parent)
        try:
            self._seq, self._prev, torn = self._recover()
        except AuditError:
            os.close(self._fd)  # and with it the flock: a fixed file can be reopened
            raise
        if torn:
            self.append(RECOVERED, torn_bytes=len(torn), torn_sha256=hashlib.sha256(torn).hexdigest())

    def _recover(self) -> tuple[int, str, bytes]:
        """(seq, hash) of the last whole record, and the torn bytes after it (now cut off)."""
        size = os.fstat(self._fd).st_size
        tail, start = b"", size
        while start > 0 and tail.count(b"\n") < 2:
            start = max(0, start - 65536)
            tail = os.pread(self._fd, size - start, start)
        end = tail.rfind(b"\n") + 1  # bytes of `tail` that end whole lines
        torn = tail[end:]
        if torn:
            os.ftruncate(self._fd, start + end)
            os.fsync(self._fd)
        lines = tail[:end].splitlines()
        if not lines:  # a new file (or one whose only record was torn)
            return 0, GENESIS, torn
        try:
            last = json.loads(lines[-1])
            return int(last["seq"]), str(last["hash"]), torn
        except (ValueError, KeyError, TypeError):
            raise AuditError(
                f"{self.path}: the last record is not an audit record; run `crosscity audit`"
            ) from None

    def append(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one record durably (fsync) and return it; `fields` must be JSON (finite numbers)."""
        with self._lock:
            record = {
                "seq": self._seq + 1,
                "time": _now(),
                "event": event,
                "fields": fields,
                "prev": self._prev,
            }
            record["hash"] = record_hash(record)
            line = canonical(record) + b"\n"
            written = 0
            while written < len(line):
                written += os.write(self._fd, line[written:])
            os.fsync(self._fd)
            self._seq, self._prev = record["seq"], record["hash"]
            return record

    # The coordinator's events: one helper each, so every record of a kind has the same fields.

    def connection(
        self,
        peer: str,
        accepted: bool,
        *,
        fingerprint: str | None = None,
        role: str | None = None,
        name: str | None = None,
        reason: str | None = None,
        detail: str | None = None,
    ) -> dict[str, Any]:
        """A TLS connection attempt: peer address, certificate fingerprint (when known), verdict and why."""
        return self.append(
            CONNECTION,
            peer=peer,
            accepted=accepted,
            fingerprint=fingerprint,
            role=role,
            name=name,
            reason=reason,
            detail=detail,
        )

    def join(self, city: str, fingerprint: str, **extra: Any) -> dict[str, Any]:
        """A city registered; `city` is the name on its certificate."""
        return self.append(JOIN, city=city, fingerprint=fingerprint, **extra)

    def leave(self, city: str, reason: str, **extra: Any) -> dict[str, Any]:
        """A city left or was dropped (preempted, heartbeat lost, revoked)."""
        return self.append(LEAVE, city=city, reason=reason, **extra)

    def round(self, round: int, participants: Iterable[str], **extra: Any) -> dict[str, Any]:
        """A round was aggregated; participants sorted, so the record does not depend on arrival order."""
        return self.append(ROUND, round=round, participants=sorted(participants), **extra)

    def update(
        self,
        city: str,
        round: int,
        sha256: str,
        nbytes: int,
        *,
        norm: float | None = None,
        clipped: bool = False,
        scale: float = 1.0,
        rejected: str | None = None,
    ) -> dict[str, Any]:
        """One received update: payload hash and size, its norm and clipping, or why it was rejected."""
        return self.append(
            UPDATE,
            city=city,
            round=round,
            sha256=sha256,
            bytes=nbytes,
            norm=norm,
            clipped=clipped,
            scale=scale,
            rejected=rejected,
        )

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)  # releases the flock
                self._fd = -1

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Verification:
    ok: bool
    records: list[dict[str, Any]]  # the intact prefix (all records when ok)
    head_seq: int  # last intact record: pin (head_seq, head_hash) elsewhere to detect a cut tail
    head_hash: str
    line: int | None = None  # first broken line (1-based)
    problem: str | None = None


def _line_problem(raw: bytes, number: int, prev: str) -> tuple[dict[str, Any] | None, str | None]:
    if not raw.endswith(b"\n"):
        return None, "incomplete (no final newline): a write was cut off"
    try:
        record = json.loads(raw)
    except ValueError:
        return None, "not JSON: the line was changed"
    if not isinstance(record, dict) or set(record) != KEYS:
        return None, "not an audit record (keys differ): the line was changed"
    if raw[:-1] != canonical(record):
        return None, "not in canonical form: the line was changed"
    if record["hash"] != record_hash(record):
        return None, "content does not match its hash: the line was changed"
    if record["prev"] != prev:
        before = f"line {number - 1}'s hash" if number > 1 else "the start of the chain"
        return None, f"prev does not match {before}: a line was deleted, inserted or moved here"
    if record["seq"] != number:
        return None, f"seq {record['seq']}, expected {number}: a line was deleted, inserted or moved"
    return record, None


def verify(path: Path) -> Verification:
    """Check the whole chain; stops at the first broken line and says which and why."""
    records: list[dict[str, Any]] = []
    prev = GENESIS
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            record, problem = _line_problem(raw, number, prev)
            if record is None:
                return Verification(False, records, len(records), prev, number, problem)
            records.append(record)
            prev = record["hash"]
    return Verification(True, records, len(records), prev)


@dataclass
class CityActivity:
    rounds: int = 0
    updates: int = 0
    clipped: int = 0
    rejected: int = 0
    joins: int = 0
    leaves: int = 0


@dataclass
class Summary:
    events: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # reason -> connections
    rounds: list[int] = field(default_factory=list)
    participants: list[int] = field(default_factory=list)  # per round
    cities: dict[str, CityActivity] = field(default_factory=dict)


def summarize(records: Iterable[dict[str, Any]]) -> Summary:
    """Counts per event, refused connections by reason, rounds and each city's participation."""
    s = Summary()
    for record in records:
        event, f = record["event"], record["fields"]
        s.events[event] += 1
        if event == CONNECTION:
            if f.get("accepted"):
                s.accepted += 1
            else:
                s.refused[str(f.get("reason"))] += 1
        elif event == ROUND:
            s.rounds.append(int(f["round"]))
            s.participants.append(len(f["participants"]))
            for city in f["participants"]:
                s.cities.setdefault(city, CityActivity()).rounds += 1
        elif event in (UPDATE, JOIN, LEAVE):
            city = s.cities.setdefault(str(f["city"]), CityActivity())
            if event == UPDATE:
                city.updates += 1
                city.clipped += bool(f.get("clipped"))
                city.rejected += f.get("rejected") is not None
            elif event == JOIN:
                city.joins += 1
            else:
                city.leaves += 1
    return s
