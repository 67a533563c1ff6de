"""Who is who across the WAN: a private CA, one certificate + key per city and one for the coordinator.

An identity is a role and a name, carried in the certificate as a SAN URI (`crosscity://city/NAME`,
`crosscity://coordinator`) next to a matching CN; the TLS layer (federation/tls.py) reads it back
after the handshake, so a city can only ever act as the name its certificate carries. Keys are
ECDSA P-256 (small, fast handshakes). Extended key usage keeps roles apart inside the handshake:
a city certificate is good for TLS clients only, the coordinator's for TLS servers only.

A certificate directory (the operator's, made by `init`) holds:

    ca.pem ca.key crl.pem  coordinator.pem coordinator.key  city-NAME.pem city-NAME.key ...

A kit (what `export` gives one site) is the same layout with one identity's pair only:
ca.pem, crl.pem, and city-NAME.pem + city-NAME.key (or coordinator.*), so `load_kit` reads both.
Keys are written 0600, every file atomically. The CA key never leaves the operator's directory.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crosscity.core.atomic_io import atomic_write

CITY, COORDINATOR = "city", "coordinator"
ROLES = (CITY, COORDINATOR)
URI_PREFIX = "crosscity://"
LOCAL_HOSTS = ("localhost", "127.0.0.1")
CA_CERT, CA_KEY, CRL = "ca.pem", "ca.key", "crl.pem"
T = TypeVar("T")
# Clock skew between sites: a certificate made a minute ago must already be valid everywhere.
BACKDATE = dt.timedelta(hours=1)
CITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
HOST_NAME = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


class CertsError(ValueError):
    """Bad input to a certificate operation: the CLI prints it as one line and exits 2."""


@dataclass(frozen=True)
class Authority:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Kit:
    """The four files one TLS endpoint needs: our CA, the revocation list, its own certificate and key."""

    role: str
    name: str
    ca: Path
    crl: Path
    cert: Path
    key: Path


def identity_uri(role: str, name: str = "") -> str:
    """The SAN URI that is the identity: the TLS layer trusts this, never a name sent in a message."""
    return f"{URI_PREFIX}{COORDINATOR}" if role == COORDINATOR else f"{URI_PREFIX}{CITY}/{name}"


def identity_of(cert: x509.Certificate) -> tuple[str, str]:
    """(role, name) from the certificate's one crosscity SAN URI; ValueError if it has none or several."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValueError("certificate has no subjectAltName, so no crosscity identity") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(URI_PREFIX)]
    if len(uris) != 1:
        raise ValueError(f"certificate carries {len(uris)} crosscity identity URIs, expected exactly 1")
    path = uris[0][len(URI_PREFIX) :]
    if path == COORDINATOR:
        return COORDINATOR, COORDINATOR
    role, _, name = path.partition("/")
    if role != CITY or not CITY_NAME.fullmatch(name):
        raise ValueError(
            f"certificate identity {uris[0]!r} is not crosscity://city/NAME or crosscity://coordinator"
        )
    return CITY, name


def file_stem(role: str, name: str) -> str:
    """File name (without suffix) of an identity's pair: the same in a directory and in a kit."""
    return COORDINATOR if role == COORDINATOR else f"city-{name}"


def check_city_name(name: str) -> str:
    """The name, if it is safe both as a file name and in the identity URI; CertsError if not."""
    if name == COORDINATOR or not CITY_NAME.fullmatch(name):
        raise CertsError(
            f"city name {name!r}: allowed letters, digits, '_' and '-' (1-64, starting with a letter or "
            f"digit), not {COORDINATOR!r}"
        )
    return name


# ---------------------------------------------------------------------------------------- building blocks


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def new_key() -> ec.EllipticCurvePrivateKey:
    """ECDSA P-256: every TLS 1.3 stack has it, and handshakes stay in the milliseconds."""
    return ec.generate_private_key(ec.SECP256R1())


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    not_before: dt.datetime,
    not_after: dt.datetime,
    ca: bool,
) -> x509.CertificateBuilder:
    """What every certificate of ours has: a CA signs certificates and CRLs, a leaf only handshakes."""
    usage = x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def new_authority(days: int) -> Authority:
    """A fresh self-signed CA; the random suffix keeps two runs' CAs apart even in logs."""
    key = new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "crosscity"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"crosscity CA {secrets.token_hex(4)}"),
        ]
    )
    now = _now()
    builder = _builder(name, name, key.public_key(), now - BACKDATE, now + dt.timedelta(days=days), ca=True)
    return Authority(builder.sign(key, hashes.SHA256()), key)


def _hosts_san(hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            if not HOST_NAME.fullmatch(host):
                raise CertsError(f"coordinator host {host!r}: not an IP address or a DNS name") from None
            names.append(x509.DNSName(host.lower()))
    return names


def issue(
    authority: Authority,
    role: str,
    name: str,
    *,
    not_after: dt.datetime,
    hosts: Sequence[str] = (),
    not_before: dt.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate for (role, name); the coordinator's also names the `hosts` cities dial."""
    if role not in ROLES:
        raise CertsError(f"role {role!r}: allowed {', '.join(ROLES)}")
    key = new_key()
    public = key.public_key()
    san: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity_uri(role, name))]
    san += _hosts_san(hosts) if role == COORDINATOR else []
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == COORDINATOR else ExtendedKeyUsageOID.CLIENT_AUTH
    ca_ski = authority.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "crosscity"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    until = min(not_after, authority.cert.not_valid_after_utc)
    cert = (
        _builder(subject, authority.cert.subject, public, not_before or _now() - BACKDATE, until, ca=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    return cert, key


def sign_crl(
    authority: Authority, revoked: dict[int, dt.datetime], number: int
) -> x509.CertificateRevocationList:
    """The CRL, valid as long as the CA: OpenSSL refuses every peer once a CRL's nextUpdate has passed."""
    ca_ski = authority.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(authority.cert.subject)
        .last_update(_now())
        .next_update(authority.cert.not_valid_after_utc)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    for serial, when in sorted(revoked.items()):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        )
    return builder.sign(authority.key, hashes.SHA256())


# ---------------------------------------------------------------------------------------- files


def _pem(obj: x509.Certificate | x509.CertificateRevocationList) -> bytes:
    return obj.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, private: bool = False) -> None:
    atomic_write(path, lambda fh: fh.write(data), 0o600 if private else 0o644)


def write_identity(
    directory: Path, role: str, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    """Key first, certificate last: a crash in between leaves no certificate without its key."""
    stem = file_stem(role, name)
    _write(Path(directory) / f"{stem}.key", _key_pem(key), private=True)
    _write(Path(directory) / f"{stem}.pem", _pem(cert))


def _read(path: Path, load: Callable[[bytes], T]) -> T:
    """A PEM file parsed, or CertsError naming the file (a corrupt or foreign file in DIR is bad input)."""
    try:
        return load(path.read_bytes())
    except ValueError as exc:
        raise CertsError(f"{path}: not a valid PEM file of this kind ({str(exc).split('.')[0]})") from None


def _load_authority(directory: Path) -> Authority:
    directory = Path(directory)
    if not (directory / CA_CERT).is_file() or not (directory / CA_KEY).is_file():
        raise CertsError(f"{directory}: no {CA_CERT} + {CA_KEY} here (make them with `crosscity certs init`)")
    cert = _read(directory / CA_CERT, x509.load_pem_x509_certificate)
    key = _read(directory / CA_KEY, lambda data: serialization.load_pem_private_key(data, password=None))
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertsError(f"{directory / CA_KEY}: not an EC private key")
    return Authority(cert, key)


def _load_crl(directory: Path) -> x509.CertificateRevocationList:
    path = Path(directory) / CRL
    if not path.is_file():
        raise CertsError(f"{path}: missing (every certificate directory has one; `init` writes it)")
    return _read(path, x509.load_pem_x509_crl)


def revoked_serials(directory: Path) -> set[int]:
    """Serial numbers on the directory's CRL."""
    return {entry.serial_number for entry in _load_crl(directory)}


def city_certificates(directory: Path) -> dict[str, x509.Certificate]:
    """name -> current certificate of every city in the directory (revoked ones included)."""
    found = {}
    for path in sorted(Path(directory).glob("city-*.pem")):
        found[path.stem.removeprefix("city-")] = _read(path, x509.load_pem_x509_certificate)
    return found


def _cutoff(days: int) -> dt.datetime:
    if days < 1:
        raise CertsError(f"--days {days}: must be >= 1")
    return _now() + dt.timedelta(days=days)


# ---------------------------------------------------------------------------------------- operations


def init(
    directory: Path, cities: Sequence[str], coordinator_hosts: Sequence[str] = LOCAL_HOSTS, days: int = 365
) -> None:
    """A new CA, an empty CRL, the coordinator's and every city's certificate + key in `directory`."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise CertsError(f"{directory}: exists and is not a directory")
    if (directory / CA_CERT).exists():
        raise CertsError(
            f"{directory}: already holds a CA ({CA_CERT}); add cities with `crosscity certs add`"
        )
    names = [check_city_name(c) for c in cities]
    if not names:
        raise CertsError("--cities: name at least one city")
    if len(set(names)) != len(names):
        raise CertsError(f"--cities {','.join(names)}: a city is named twice")
    if not coordinator_hosts:
        raise CertsError("--coordinator: name at least one host the cities dial")
    until = _cutoff(days)
    authority = new_authority(days)
    # Everything is made in memory first and ca.pem written last: a crash before it leaves a
    # directory that `init` simply redoes.
    made = [
        (
            COORDINATOR,
            COORDINATOR,
            *issue(authority, COORDINATOR, COORDINATOR, not_after=until, hosts=coordinator_hosts),
        )
    ]
    made += [(CITY, name, *issue(authority, CITY, name, not_after=until)) for name in names]
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for role, name, cert, key in made:
        write_identity(directory, role, name, cert, key)
    _write(directory / CRL, _pem(sign_crl(authority, {}, 1)))
    _write(directory / CA_KEY, _key_pem(authority.key), private=True)
    _write(directory / CA_CERT, _pem(authority.cert))


def add(directory: Path, city: str, days: int = 365) -> x509.Certificate:
    """A certificate for a new city, or a fresh one for a revoked city (its old serial stays revoked)."""
    authority = _load_authority(directory)
    check_city_name(city)
    current = city_certificates(directory).get(city)
    if current is not None and current.serial_number not in revoked_serials(directory):
        raise CertsError(f"city {city!r} already has a valid certificate in {directory} (revoke it first)")
    cert, key = issue(authority, CITY, city, not_after=_cutoff(days))
    write_identity(directory, CITY, city, cert, key)
    return cert


def cover_hosts(directory: Path, hosts: Sequence[str], days: int = 365) -> bool:
    """Re-issue the coordinator's certificate when it does not name every host in `hosts` (a
    coordinator restarted on another node); the names it had stay. True if it was re-issued."""
    path = Path(directory) / f"{file_stem(COORDINATOR, COORDINATOR)}.pem"
    cert = _read(path, x509.load_pem_x509_certificate)
    had = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    named = {str(n.value).lower() for n in had if isinstance(n, (x509.DNSName, x509.IPAddress))}
    missing = [h for h in hosts if str(ipaddress.ip_address(h) if _is_ip(h) else h.lower()) not in named]
    if not missing:
        return False
    keep = [n for n in had if isinstance(n, (x509.DNSName, x509.IPAddress))]
    authority = _load_authority(directory)
    cert, key = issue(
        authority,
        COORDINATOR,
        COORDINATOR,
        not_after=_cutoff(days),
        hosts=[*(str(n.value) for n in keep), *missing],
    )
    write_identity(directory, COORDINATOR, COORDINATOR, cert, key)
    return True


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def revoke(directory: Path, city: str) -> int:
    """Add the city's certificate to the CRL (re-signed, CRL number + 1, written atomically); its serial."""
    authority = _load_authority(directory)
    cert = _known_city(directory, city)
    crl = _load_crl(directory)
    revoked = {entry.serial_number: entry.revocation_date_utc for entry in crl}
    if cert.serial_number in revoked:
        raise CertsError(f"city {city!r} is already revoked (serial {cert.serial_number:x})")
    revoked[cert.serial_number] = _now()
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number + 1
    _write(Path(directory) / CRL, _pem(sign_crl(authority, revoked, number)))
    return cert.serial_number


def _known_city(directory: Path, city: str) -> x509.Certificate:
    check_city_name(city)
    known = city_certificates(directory)
    if city not in known:
        listed = ", ".join(known) or "none"
        raise CertsError(f"city {city!r}: not in {directory} (cities there: {listed})")
    return known[city]


def export(directory: Path, name: str, out: Path) -> list[Path]:
    """One site's kit in `out`: ca.pem, crl.pem and its own certificate + key, nothing else."""
    directory, out = Path(directory), Path(out)
    _load_authority(directory)
    role = COORDINATOR if name == COORDINATOR else CITY
    if role == CITY and _known_city(directory, name).serial_number in revoked_serials(directory):
        raise CertsError(
            f"city {name!r} is revoked: `crosscity certs add {directory} {name}` issues a new one"
        )
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CertsError(f"{out}: exists and is not an empty directory (a kit is never written over files)")
    kit = load_kit(directory, role, name)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    for source in (kit.ca, kit.crl, kit.cert, kit.key):
        _write(out / source.name, source.read_bytes(), private=source == kit.key)
    return [out / source.name for source in (kit.ca, kit.crl, kit.cert, kit.key)]


def ephemeral(directory: Path, cities: Sequence[str], days: int = 7) -> Path:
    """A fresh CA and identities for one local run (launcher, demo): secure by default, nothing to set up.

    Only files of the certificate layout are replaced; the coordinator answers on localhost/127.0.0.1.
    """
    directory = Path(directory)
    if directory.is_dir():
        for path in directory.iterdir():
            if path.name in (CA_CERT, CA_KEY, CRL) or path.name.startswith((f"{COORDINATOR}.", "city-")):
                path.unlink()
    init(directory, cities, LOCAL_HOSTS, days)
    return directory


def load_kit(directory: Path, role: str, name: str = COORDINATOR) -> Kit:
    """The files of identity (role, name) in an operator directory or an exported kit."""
    directory = Path(directory)
    stem = file_stem(role, name)
    kit = Kit(
        role, name, directory / CA_CERT, directory / CRL, directory / f"{stem}.pem", directory / f"{stem}.key"
    )
    missing = [p.name for p in (kit.ca, kit.crl, kit.cert, kit.key) if not p.is_file()]
    if missing:
        raise CertsError(f"{directory}: no {', '.join(missing)} for {identity_uri(role, name)}")
    return kit
