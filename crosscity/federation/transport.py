"""Framed request/response connections over TCP (optionally TLS), every call with a deadline.

Plain blocking sockets and one thread per connection: the coordinator serves a handful of cities x
ranks, each rank holds one connection for its stripe of the model and local rank 0 one more for
heartbeats, so nothing here needs an event loop. A call that misses its deadline, a peer that goes
away and a frame that breaks the protocol all end the connection (a half-read stream cannot be
trusted); the caller reconnects for its next call. Byte counters are what really went into the
socket (frame headers included, before TLS), so the WAN accounting is exact.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from crosscity.federation.wire import Message, WireError, decode, encode

IDLE_TIMEOUT_S = 3600.0  # a server-side connection with no request for this long is closed
HANDSHAKE_TIMEOUT_S = 10.0


class ConnectionLost(ConnectionError):
    """The peer closed, reset or timed out; the connection is closed and must be reopened."""


@dataclass
class Peer:
    """Who is at the other end: the address, and with TLS the certificate's identity."""

    address: str
    identity: object | None = None  # what TlsEndpoint.identify returned for the peer's certificate


@dataclass(frozen=True)
class TlsEndpoint:
    """One side's TLS: its context and how to read the peer's identity off a handshaken socket."""

    context: ssl.SSLContext
    identify: Callable[[ssl.SSLSocket], object]


class Connection:
    def __init__(self, sock: socket.socket, peer: Peer, max_payload: int) -> None:
        self.sock, self.peer, self.max_payload = sock, peer, max_payload
        self.bytes_sent = self.bytes_recv = 0
        self.closed = False

    def send(self, msg: Message, deadline: float) -> int:
        data = memoryview(encode(msg))
        size = len(data)
        try:
            while data:
                self.sock.settimeout(_remaining(deadline))
                n = self.sock.send(data)
                data = data[n:]
                self.bytes_sent += n
        except (OSError, ValueError) as exc:
            self.close()
            raise ConnectionLost(f"send to {self.peer.address}: {exc}") from exc
        return size

    def recv(self, deadline: float) -> Message:
        try:
            msg, size = decode(lambda n: self._read_exact(n, deadline), self.max_payload)
        except WireError:
            self.close()
            raise
        except (OSError, ValueError, EOFError) as exc:
            self.close()
            raise ConnectionLost(f"receive from {self.peer.address}: {exc}") from exc
        self.bytes_recv += size
        return msg

    def request(self, msg: Message, timeout_s: float) -> Message:
        deadline = time.monotonic() + timeout_s
        self.send(msg, deadline)
        return self.recv(deadline)

    def _read_exact(self, n: int, deadline: float) -> bytes:
        chunks, left = [], n
        while left:
            self.sock.settimeout(_remaining(deadline))
            chunk = self.sock.recv(min(left, 1 << 20))
            if not chunk:
                raise EOFError("connection closed by the peer")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def dropped(self) -> bool:
        """Whether the peer went away while this connection was idle (a restarted coordinator, the
        server's idle timeout): between a reply and the next request there is nothing to read, so a
        readable socket means end of stream, a reset, or bytes nobody asked for."""
        if self.closed:
            return True
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def close(self) -> None:
        """shutdown before close: on Linux a close() alone does not wake a thread blocked in recv."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self.sock.close()


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def connect(
    host: str,
    port: int,
    timeout_s: float,
    max_payload: int,
    tls: TlsEndpoint | None = None,
    server_name: str | None = None,
) -> Connection:
    """Open a connection (and its TLS handshake) within `timeout_s`."""
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.context.wrap_socket(sock, server_hostname=server_name or host)
    except (OSError, ValueError) as exc:
        raise ConnectionLost(f"connect to {host}:{port}: {exc}") from exc
    identity = None
    if tls is not None:
        try:
            identity = tls.identify(sock)  # the TLS layer's check of who answered
        except Exception as exc:
            with contextlib.suppress(OSError):
                sock.close()
            raise ConnectionLost(f"connect to {host}:{port}: {exc}") from exc
    return Connection(sock, Peer(f"{host}:{port}", identity), max_payload)


Handler = Callable[[Connection], None]
Refused = Callable[[str, BaseException], None]  # (peer address, what failed): a refused handshake


class Server:
    """Accepts connections on (host, port) and runs `handler(conn)` in one thread per connection."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: Handler,
        max_payload: int,
        tls: TlsEndpoint | None = None,
        on_refused: Refused | None = None,
    ) -> None:
        self.handler, self.max_payload, self.tls = handler, max_payload, tls
        self.on_refused = on_refused or (lambda peer, exc: None)
        self.listener = socket.create_server((host, port), reuse_port=False)
        self.port = self.listener.getsockname()[1]
        self.connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._thread = threading.Thread(target=self._accept_loop, name="coordinator-accept", daemon=True)

    def start(self) -> Server:
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                sock, addr = self.listener.accept()
            except OSError:
                return  # the listener was closed: stopping
            threading.Thread(target=self._serve, args=(sock, f"{addr[0]}:{addr[1]}"), daemon=True).start()

    def _serve(self, sock: socket.socket, address: str) -> None:
        identity = None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                sock.settimeout(HANDSHAKE_TIMEOUT_S)
                sock = self.tls.context.wrap_socket(sock, server_side=True)
                identity = self.tls.identify(sock)
        except Exception as exc:  # the handshake or the identity read: refused, never served
            self.on_refused(address, exc)
            with contextlib.suppress(OSError):
                sock.close()
            return
        conn = Connection(sock, Peer(address, identity), self.max_payload)
        with self._lock:
            if self._stopping:
                conn.close()
                return
            self.connections.add(conn)
        try:
            self.handler(conn)
        except Exception as exc:  # a bug in one handler must not take the server down
            print(f"[coordinator] connection {address}: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            conn.close()
            with self._lock:
                self.connections.discard(conn)

    def close_where(self, doomed: Callable[[Peer], bool]) -> list[Peer]:
        """Closes the live connections whose peer is doomed (their handlers see the connection lost)."""
        with self._lock:
            hit = [conn for conn in self.connections if doomed(conn.peer)]
        for conn in hit:
            conn.close()
        return [conn.peer for conn in hit]

    def stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._lock:
            for conn in list(self.connections):
                conn.close()
