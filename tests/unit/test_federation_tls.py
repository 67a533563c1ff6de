"""Real TLS handshakes over 127.0.0.1: who is let in, who is refused, and the reason each side logs."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import socket
import ssl
import statistics
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509

from crosscity.federation import certs, tls
from crosscity.federation.certs import CITY, COORDINATOR

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """Our CA with cities a, b and an expired `old`; a foreign CA of the same shape next to it."""
    root = tmp_path_factory.mktemp("pki")
    certs.init(root / "ours", ["a", "b"])
    certs.init(root / "foreign", ["a"])
    authority = certs._load_authority(root / "ours")
    now = dt.datetime.now(dt.UTC)
    old = certs.issue(
        authority, CITY, "old", not_before=now - dt.timedelta(days=10), not_after=now - dt.timedelta(days=1)
    )
    certs.write_identity(root / "ours", CITY, "old", *old)
    return root


def kit(pki: Path, name: str, where: str = "ours") -> certs.Kit:
    return certs.load_kit(pki / where, COORDINATOR if name == COORDINATOR else CITY, name)


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str = "localhost", role: str = CITY):
    """(server outcome, client outcome): a Peer, or the exception that side saw."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    outcome: dict[str, object] = {}

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        try:
            with server.wrap_socket(conn, server_side=True) as s:
                outcome["server"] = tls.expect(tls.peer_identity(s), role)
                s.sendall(b"ok")
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            outcome["server"] = exc
        finally:
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=TIMEOUT) as raw,
            client.wrap_socket(raw, server_hostname=host) as s,
        ):
            peer = tls.peer_identity(s)
            # TLS 1.3: the server judges our certificate after our side finished; its verdict
            # (an alert) arrives with the first read.
            assert s.recv(2) == b"ok"
            outcome["client"] = peer
    except Exception as exc:  # noqa: BLE001
        outcome["client"] = exc
    thread.join(TIMEOUT)
    listener.close()
    return outcome["server"], outcome["client"]


def reasons(server_outcome, client_outcome) -> tuple[str, str]:
    return tls.refusal(server_outcome).reason, tls.refusal(client_outcome).reason


def test_a_city_is_accepted_and_both_sides_learn_who_the_other_is(pki):
    server, client = handshake(tls.server_context(kit(pki, COORDINATOR)), tls.client_context(kit(pki, "a")))
    assert isinstance(server, tls.Peer) and (server.role, server.name) == (CITY, "a")
    cert_a = x509.load_pem_x509_certificate(kit(pki, "a").cert.read_bytes())
    assert (
        server.fingerprint_sha256
        == hashlib.sha256(cert_a.public_bytes(certs.serialization.Encoding.DER)).hexdigest()
    )
    assert server.not_after == cert_a.not_valid_after_utc and server.serial == cert_a.serial_number
    assert isinstance(client, tls.Peer) and tls.expect(client, COORDINATOR).name == COORDINATOR


def test_the_coordinator_is_reached_by_ip_too(pki):
    server, client = handshake(
        tls.server_context(kit(pki, COORDINATOR)), tls.client_context(kit(pki, "b")), host="127.0.0.1"
    )
    assert isinstance(server, tls.Peer) and server.name == "b" and isinstance(client, tls.Peer)


def test_only_tls_1_3(pki):
    ctx = tls.server_context(kit(pki, COORDINATOR))
    assert ctx.minimum_version == ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF
    assert tls.client_context(kit(pki, "a")).check_hostname


def test_no_client_certificate(pki):
    bare = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    bare.load_verify_locations(str(kit(pki, "a").ca))
    server, client = handshake(tls.server_context(kit(pki, COORDINATOR)), bare)
    assert reasons(server, client) == ("no-certificate", "no-certificate")
    assert tls.refusal(client).by_peer and not tls.refusal(server).by_peer


def test_a_certificate_from_another_ca(pki):
    ours = kit(pki, "a")
    impostor = replace(kit(pki, "a", "foreign"), ca=ours.ca, crl=ours.crl)  # trusts us, signed elsewhere
    server, client = handshake(tls.server_context(kit(pki, COORDINATOR)), tls.client_context(impostor))
    assert reasons(server, client) == ("unknown-ca", "unknown-ca")


def test_a_coordinator_from_another_ca_is_not_trusted(pki):
    ours = kit(pki, "a")
    fake = replace(kit(pki, COORDINATOR, "foreign"), ca=ours.ca, crl=ours.crl)
    server, client = handshake(tls.server_context(fake), tls.client_context(kit(pki, "a")))
    assert tls.refusal(client).reason == "unknown-ca" and not isinstance(server, tls.Peer)


def test_an_expired_certificate(pki):
    server, client = handshake(tls.server_context(kit(pki, COORDINATOR)), tls.client_context(kit(pki, "old")))
    assert reasons(server, client) == ("expired", "expired")
    assert "expired" in tls.refusal(server).detail


def test_a_revoked_certificate_and_a_crl_reloaded_while_serving(tmp_path):
    certs.init(tmp_path, ["a", "b"])
    server_ctx = tls.server_context(certs.load_kit(tmp_path, COORDINATOR))
    b = tls.client_context(certs.load_kit(tmp_path, CITY, "b"))
    peer_b, _ = handshake(server_ctx, b)
    assert isinstance(peer_b, tls.Peer) and server_ctx.revoked_serials_if_changed() is None
    certs.revoke(tmp_path, "b")  # the same server context sees it at the next connection
    server, client = handshake(server_ctx, b)
    assert reasons(server, client) == ("revoked", "revoked")
    assert server_ctx.revoked_serials_if_changed() == {peer_b.serial}  # live connections can be dropped
    assert server_ctx.revoked_serials_if_changed() is None  # until the file changes again
    a, _ = handshake(server_ctx, tls.client_context(certs.load_kit(tmp_path, CITY, "a")))
    assert isinstance(a, tls.Peer) and a.name == "a"


def test_a_broken_crl_refuses_new_connections(tmp_path):
    certs.init(tmp_path, ["a"])
    server_ctx = tls.server_context(certs.load_kit(tmp_path, COORDINATOR))
    (tmp_path / certs.CRL).write_text("not a CRL\n")
    with pytest.raises(ssl.SSLError):
        server_ctx.current()


def test_a_city_certificate_cannot_act_as_the_coordinator(pki):
    server, client = handshake(tls.server_context(kit(pki, "a")), tls.client_context(kit(pki, "b")))
    assert reasons(server, client) == ("wrong-role", "wrong-role")


def test_the_coordinator_certificate_cannot_dial_as_a_city(pki):
    server, client = handshake(
        tls.server_context(kit(pki, COORDINATOR)), tls.client_context(kit(pki, COORDINATOR))
    )
    assert reasons(server, client) == ("wrong-role", "wrong-role")


def test_the_client_checks_the_coordinator_host_name(pki):
    server, client = handshake(
        tls.server_context(kit(pki, COORDINATOR)), tls.client_context(kit(pki, "a")), host="evil.example.org"
    )
    assert tls.refusal(client).reason == "wrong-host" and not isinstance(server, tls.Peer)


def test_a_city_can_only_be_the_name_on_its_certificate(pki):
    server, _ = handshake(tls.server_context(kit(pki, COORDINATOR)), tls.client_context(kit(pki, "a")))
    with pytest.raises(tls.IdentityError) as caught:
        tls.expect(server, CITY, "b")
    assert tls.refusal(caught.value).reason == "wrong-name" and "'a'" in str(caught.value)
    with pytest.raises(tls.IdentityError, match="expected a coordinator"):
        tls.expect(server, COORDINATOR)


def test_tls_1_2_is_refused(pki):
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    a = kit(pki, "a")
    old.load_verify_locations(str(a.ca))
    old.load_cert_chain(str(a.cert), str(a.key))
    server, client = handshake(tls.server_context(kit(pki, COORDINATOR)), old)
    assert reasons(server, client) == ("tls-version", "tls-version")


def test_plaintext_is_refused(pki):
    server_ctx = tls.server_context(kit(pki, COORDINATOR))
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        socket.create_connection(listener.getsockname()) as c,
    ):
        c.sendall(b"GET / HTTP/1.0\r\n\r\n")
        conn, _ = listener.accept()
        conn.settimeout(TIMEOUT)
        with pytest.raises(ssl.SSLError) as caught:
            server_ctx.wrap_socket(conn, server_side=True)
        conn.close()
    assert tls.refusal(caught.value).reason == "not-tls"


def test_log_refusal_is_one_line_with_the_peer_address(pki, caplog):
    server, _ = handshake(tls.server_context(kit(pki, COORDINATOR)), tls.client_context(kit(pki, "old")))
    with caplog.at_level(logging.WARNING, logger="crosscity.federation.tls"):
        why = tls.log_refusal(server, "127.0.0.1:5555")
    assert why.reason == "expired"
    assert caplog.messages == ["TLS peer 127.0.0.1:5555 refused: expired (certificate has expired)"]
    assert tls.refusal(TimeoutError("timed out")).reason == "closed"


def test_asyncio_streams_use_the_reloaded_context(tmp_path):
    """asyncio wraps with wrap_bio: the CRL reload must hold there as well."""
    certs.init(tmp_path, ["a"])
    server_ctx = tls.server_context(certs.load_kit(tmp_path, COORDINATOR))
    client_ctx = tls.client_context(certs.load_kit(tmp_path, CITY, "a"))

    async def one_connection() -> tuple[object, object]:
        seen: list[object] = []

        async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append(tls.peer_identity(writer.get_extra_info("ssl_object")))
            writer.write(b"ok")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(on_client, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
            )
            got = await asyncio.wait_for(reader.read(2), TIMEOUT)
            writer.close()
        except (ssl.SSLError, ConnectionError) as exc:
            got = exc
        server.close()
        await server.wait_closed()
        return (seen[0] if seen else None), got

    peer, got = asyncio.run(one_connection())
    assert got == b"ok" and isinstance(peer, tls.Peer) and peer.name == "a"
    certs.revoke(tmp_path, "a")
    peer, got = asyncio.run(one_connection())
    assert peer is None and got != b"ok"  # asyncio reports the alert as EOF or as the SSLError


def test_handshake_time(pki):
    """A full mutual handshake (P-256, TLS 1.3, CRL check) on loopback costs milliseconds."""
    server_ctx, client_ctx = tls.server_context(kit(pki, COORDINATOR)), tls.client_context(kit(pki, "a"))
    times = []
    for _ in range(5):
        start = time.perf_counter()
        server, client = handshake(server_ctx, client_ctx)
        times.append(time.perf_counter() - start)
        assert isinstance(server, tls.Peer) and isinstance(client, tls.Peer)
    assert statistics.median(times) < 0.5, times
