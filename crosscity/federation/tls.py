"""Mutual TLS 1.3 between cities and the coordinator, with our CA only, revocation checked.

`server_context(kit)` / `client_context(kit)` are ssl.SSLContexts for sockets (`wrap_socket`) and
asyncio (`wrap_bio`). Both sides must present a certificate of our CA (CERT_REQUIRED), TLS 1.2 and
older are refused, the CRL is checked for the peer's certificate and re-read when its file changes
(at the next connection), and session tickets are off, so every connection is verified in full
against the current CRL. Extended key usage keeps roles apart in the handshake (a city certificate
cannot serve, the coordinator's cannot dial); the client also checks the coordinator's host name.

After the handshake, `peer_identity` reads who the peer is (role and name from the certificate:
the only identity the coordinator may trust) and `expect` refuses a wrong role or name. A failed
handshake becomes a short reason with `refusal` / `log_refusal` (for the log and the audit trail).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import ssl
import threading
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from crosscity.federation.certs import COORDINATOR, Kit, identity_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    role: str
    name: str
    fingerprint_sha256: str  # hex, of the DER certificate: what the audit trail records
    not_after: dt.datetime
    serial: int


@dataclass(frozen=True)
class Refusal:
    """Why a connection was refused: `reason` is a short stable code, `detail` what OpenSSL said."""

    reason: str
    detail: str
    by_peer: bool = False  # True: the other side refused us (we learnt it from its TLS alert)

    def __str__(self) -> str:
        return f"{'refused by peer: ' if self.by_peer else ''}{self.reason} ({self.detail})"


class IdentityError(Exception):
    """The handshake succeeded but the certificate names someone we do not accept here."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


class TlsContext(ssl.SSLContext):
    """An SSLContext for one kit that rebuilds itself from the files when the CRL file changes.

    OpenSSL cannot drop a CRL from a loaded store, so a changed CRL means a fresh inner context;
    each wrap checks the file's (inode, size, mtime) first, which costs one stat per connection.
    An unreadable new CRL fails the connection (closed, not open: revocations are never skipped).
    Settings made on it after creation (ALPN, callbacks) do not reach a rebuilt context: put them
    in `_configure`.
    """

    def __new__(cls, kit: Kit, server_side: bool) -> TlsContext:
        return super().__new__(cls, ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self, kit: Kit, server_side: bool) -> None:
        self.kit, self._server_side = kit, server_side
        self._lock = threading.Lock()
        self._crl_seen = self._watched = _signature(kit.crl)
        _configure(self, kit, server_side)
        self._active: ssl.SSLContext = self

    def current(self) -> ssl.SSLContext:
        """The context that holds the CRL as it is on disk now."""
        with self._lock:
            seen = _signature(self.kit.crl)
            if seen != self._crl_seen:
                fresh = ssl.SSLContext(
                    ssl.PROTOCOL_TLS_SERVER if self._server_side else ssl.PROTOCOL_TLS_CLIENT
                )
                _configure(fresh, self.kit, self._server_side)
                self._active, self._crl_seen = fresh, seen
                log.info("TLS: re-read the revocation list %s", self.kit.crl)
            return self._active

    def revoked_serials_if_changed(self) -> set[int] | None:
        """The serials the CRL on disk lists, if the file changed since the last call (else None): one
        stat per call, so the coordinator can drop the live connections of a city revoked meanwhile.
        An unreadable CRL raises OSError/ValueError and counts as unchanged (the next call retries)."""
        seen = _signature(self.kit.crl)
        if seen == self._watched:
            return None
        crl = x509.load_pem_x509_crl(self.kit.crl.read_bytes())
        self._watched = seen
        return {entry.serial_number for entry in crl}

    def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> ssl.SSLSocket:  # type: ignore[override]
        active = self.current()
        if active is self:
            return super().wrap_socket(sock, *args, **kwargs)
        return active.wrap_socket(sock, *args, **kwargs)

    def wrap_bio(self, incoming: Any, outgoing: Any, *args: Any, **kwargs: Any) -> ssl.SSLObject:  # type: ignore[override]
        active = self.current()
        if active is self:
            return super().wrap_bio(incoming, outgoing, *args, **kwargs)
        return active.wrap_bio(incoming, outgoing, *args, **kwargs)


def _signature(path: os.PathLike[str]) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


def _configure(ctx: ssl.SSLContext, kit: Kit, server_side: bool) -> None:
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = not server_side
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF | ssl.VERIFY_X509_STRICT
    ctx.options |= ssl.OP_NO_TICKET
    if server_side:
        ctx.num_tickets = 0  # no TLS 1.3 resumption: a resumed session would skip the CRL check
    ctx.load_verify_locations(cafile=str(kit.ca))  # our CA only: no system trust store
    ctx.load_verify_locations(cafile=str(kit.crl))
    ctx.load_cert_chain(certfile=str(kit.cert), keyfile=str(kit.key))


def server_context(kit: Kit) -> TlsContext:
    """For the coordinator: accepts only clients with a valid, unrevoked certificate of our CA."""
    return TlsContext(kit, server_side=True)


def client_context(kit: Kit) -> TlsContext:
    """For a city: dials with its certificate; `server_hostname` must be a host in the coordinator's cert."""
    return TlsContext(kit, server_side=False)


def peer_identity(tls: ssl.SSLSocket | ssl.SSLObject) -> Peer:
    """Who is on the other end of a finished handshake, from its certificate (not from anything it says)."""
    der = tls.getpeercert(binary_form=True)
    if not der:
        raise IdentityError(Refusal("no-certificate", "the peer presented no certificate"))
    cert = x509.load_der_x509_certificate(der)
    try:
        role, name = identity_of(cert)
    except ValueError as exc:
        raise IdentityError(Refusal("no-identity", str(exc))) from None
    return Peer(role, name, hashlib.sha256(der).hexdigest(), cert.not_valid_after_utc, cert.serial_number)


def expect(peer: Peer, role: str, name: str | None = None) -> Peer:
    """The peer if it has `role` (and `name`, when given); IdentityError (wrong-role/wrong-name) if not."""
    if peer.role != role:
        raise IdentityError(Refusal("wrong-role", f"expected a {role}, the certificate is a {peer.role}'s"))
    if name is not None and peer.name != name:
        raise IdentityError(
            Refusal("wrong-name", f"expected {role} {name!r}, the certificate is {peer.role} {peer.name!r}")
        )
    return peer


def coordinator_peer(tls: ssl.SSLSocket | ssl.SSLObject) -> Peer:
    """For a city after dialling: the server must be the coordinator (host name already checked)."""
    return expect(peer_identity(tls), COORDINATOR)


# X509_V_ERR_* codes (OpenSSL x509_vfy.h) -> reason. The chain cannot be built from our CA: foreign.
VERIFY_REASONS = {
    2: "unknown-ca",  # unable to get issuer certificate
    7: "unknown-ca",  # certificate signature failure
    18: "unknown-ca",  # self-signed certificate
    19: "unknown-ca",  # self-signed certificate in chain
    20: "unknown-ca",  # unable to get local issuer certificate
    21: "unknown-ca",  # unable to verify the first certificate
    9: "not-yet-valid",
    10: "expired",
    23: "revoked",
    3: "crl-missing",  # unable to get certificate CRL
    11: "crl-not-yet-valid",
    12: "crl-expired",
    8: "crl-bad-signature",
    26: "wrong-role",  # unsupported certificate purpose: a city cert serving, the coordinator's dialling
    62: "wrong-host",  # hostname mismatch
    64: "wrong-host",  # IP address mismatch
}
# OpenSSL reason strings -> reason; ALERT reasons are the peer's verdict, sent to us in a TLS alert.
SSL_REASONS = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no-certificate",
    "UNSUPPORTED_PROTOCOL": "tls-version",
    "NO_PROTOCOLS_AVAILABLE": "tls-version",
    "WRONG_VERSION_NUMBER": "not-tls",
    "HTTP_REQUEST": "not-tls",
    "UNEXPECTED_EOF_WHILE_READING": "closed",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no-certificate",
    "TLSV1_ALERT_PROTOCOL_VERSION": "tls-version",
    "TLSV1_ALERT_UNKNOWN_CA": "unknown-ca",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "revoked",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "wrong-role",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad-certificate",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "handshake-failure",
}


def refusal(exc: BaseException) -> Refusal:
    """The short reason a handshake (or the identity check after it) failed, for the log and the audit."""
    if isinstance(exc, IdentityError):
        return exc.refusal
    if isinstance(exc, ssl.SSLCertVerificationError):
        code = getattr(exc, "verify_code", None)
        detail = str(getattr(exc, "verify_message", "") or exc)
        return Refusal(VERIFY_REASONS.get(code, f"verify-{code}"), detail)
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError):
        name = str(getattr(exc, "reason", "") or "")
        return Refusal(SSL_REASONS.get(name, "tls-error"), name or str(exc), by_peer="ALERT" in name)
    kind = "closed" if isinstance(exc, OSError) else "error"  # timeouts, resets, EOF mid-handshake
    return Refusal(kind, f"{type(exc).__name__}: {exc}".rstrip(": "))


def log_refusal(exc: BaseException, peer_address: str, logger: logging.Logger = log) -> Refusal:
    """One warning line `TLS peer ADDR refused: REASON (DETAIL)`; returns the Refusal for the audit trail."""
    why = refusal(exc)
    logger.warning("TLS peer %s refused: %s", peer_address, why)
    return why
