"""What an outsider (or a city with a stolen or wrong identity) tries against a run's coordinator.

Run inside the attacker's network namespace: `ip netns exec NS python -m tests.helpers.attacker
ATTACK HOST PORT [ARG]`; it prints one JSON line: what came back. Every attack expects to be turned
away; the test then finds the refusal in the coordinator's audit trail.
"""

from __future__ import annotations

import json
import pickle
import socket
import ssl
import sys
from pathlib import Path

from crosscity.federation import certs, tls
from crosscity.federation import protocol as p
from crosscity.federation.transport import TlsEndpoint, connect
from crosscity.federation.wire import Message, encode

MARKER = Path("/tmp/crosscity-attack-pwned")


class Exploit:
    """Unpickling this runs code: what the old pickle-based exchange would have executed."""

    def __reduce__(self) -> tuple:
        return (Path.touch, (MARKER,))


def _hello(city: int, run: str = "0" * 16) -> Message:
    return Message(p.HELLO, {"city": city, "rank": 0, "run": run})


def _answer(sock: socket.socket) -> str:
    try:
        data = sock.recv(4096)
    except OSError as exc:
        return f"closed: {type(exc).__name__}"
    return "closed" if not data else f"answered {len(data)} bytes"


def no_certificate(host: str, port: int) -> dict:
    """Plain TCP, a well-formed hello: the coordinator only speaks TLS."""
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(encode(_hello(0)))
        return {"result": _answer(sock)}


def tls_as(host: str, port: int, kit_dir: str, role: str, name: str, city: int, run: str) -> dict:
    """TLS with the given kit, then a hello claiming `city` of run `run` (a city knows its run)."""
    kit = certs.load_kit(Path(kit_dir), role, name)
    endpoint = TlsEndpoint(tls.client_context(kit), tls.coordinator_peer)
    try:
        conn = connect(host, port, 5.0, 1 << 20, endpoint)
        reply = conn.request(_hello(city, run), 5.0)
        return {"result": reply.kind, "fields": reply.fields}
    except Exception as exc:  # the refusal is the expected outcome: report it
        cause = exc.__cause__ or exc
        return {"result": "refused", "reason": str(tls.refusal(cause))}


def replay(host: str, port: int, capture_file: str) -> dict:
    """The captured bytes of a real city's connection, sent again: TLS keys are per connection, so the
    coordinator's answer is its half of a new handshake, then an alert and the close."""
    data = Path(capture_file).read_bytes()
    got = b""
    with socket.create_connection((host, port), timeout=5) as sock:
        try:
            sock.sendall(data)
            while chunk := sock.recv(65536):
                got += chunk
        except OSError as exc:
            return {"result": f"closed: {type(exc).__name__}", "sent": len(data), "received": len(got)}
    return {"result": "closed", "sent": len(data), "received": len(got)}


def pickle_payload(host: str, port: int, kit_dir: str, name: str) -> dict:
    """A valid city identity sends a pickle where a frame belongs: never unpickled, never run."""
    kit = certs.load_kit(Path(kit_dir), certs.CITY, name)
    ctx = tls.client_context(kit)
    with (
        socket.create_connection((host, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=host) as sock,
    ):
        sock.sendall(pickle.dumps(Exploit()))
        return {"result": _answer(sock), "pwned": MARKER.exists()}


def scan(ports_json: str) -> dict:
    """Try every (address, port) a city's processes listen on: nothing inside a city may answer."""
    answered = []
    for address, port in json.loads(ports_json):
        try:
            with socket.create_connection((address, port), timeout=2):
                answered.append([address, port])
        except OSError:
            pass
    return {"answered": answered}


ATTACKS = {"no_certificate": no_certificate, "tls_as": tls_as, "replay": replay, "pickle": pickle_payload}

if __name__ == "__main__":
    name, *rest = sys.argv[1:]
    if name == "scan":
        print(json.dumps(scan(rest[0])))
    else:
        host, port, *extra = rest
        args = [int(a) if a.lstrip("-").isdigit() else a for a in extra]
        try:
            print(json.dumps(ATTACKS[name](host, int(port), *args)))
        except ssl.SSLError as exc:
            print(json.dumps({"result": "refused", "reason": str(tls.refusal(exc))}))
