"""The certificate directory: identities, key modes, revocation, kits, and the `crosscity certs` CLI."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509

from crosscity.federation import certs
from crosscity.launch.cli import main as cli


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def crl(directory: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((directory / certs.CRL).read_bytes())


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    certs.init(tmp_path / "pki", ["a", "b", "c"], ["coord.example.org", "10.0.0.5"], days=30)
    return tmp_path / "pki"


def test_init_makes_one_identity_per_city_and_the_coordinator(pki):
    names = sorted(p.name for p in pki.iterdir())
    assert names == sorted(
        ["ca.pem", "ca.key", "crl.pem", "coordinator.pem", "coordinator.key"]
        + [f"city-{c}.{ext}" for c in "abc" for ext in ("pem", "key")]
    )
    ca = cert(pki / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    assert (
        cert(pki / "city-a.pem").extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    )
    assert not cert(pki / "city-a.pem").extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    for stem, identity in [
        ("city-a", ("city", "a")),
        ("city-c", ("city", "c")),
        ("coordinator", ("coordinator",) * 2),
    ]:
        leaf = cert(pki / f"{stem}.pem")
        leaf.verify_directly_issued_by(ca)
        assert certs.identity_of(leaf) == identity
        assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == identity[1]
        assert (leaf.not_valid_after_utc - leaf.not_valid_before_utc).days <= 31
    san = cert(pki / "coordinator.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    city_san = cert(pki / "city-a.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert city_san.get_values_for_type(x509.UniformResourceIdentifier) == ["crosscity://city/a"]
    assert city_san.get_values_for_type(x509.DNSName) == []  # a city cannot pass as the coordinator's host
    assert list(crl(pki)) == [] and crl(pki).is_signature_valid(ca.public_key())


def test_keys_are_private_and_certificates_readable(pki):
    assert mode(pki) == 0o700
    for path in pki.iterdir():
        assert mode(path) == (0o600 if path.suffix == ".key" else 0o644), path.name
    assert not list(pki.glob(".*.tmp"))  # atomic writes left no temp file behind


def test_two_inits_have_unrelated_cas(tmp_path):
    one, two = certs.ephemeral(tmp_path / "one", ["a"]), certs.ephemeral(tmp_path / "two", ["a"])
    with pytest.raises(ValueError):
        cert(one / "city-a.pem").verify_directly_issued_by(cert(two / "ca.pem"))


def test_ephemeral_replaces_the_ca_and_keeps_other_files(tmp_path):
    first = certs.ephemeral(tmp_path, ["a", "b"])
    old_ca = (first / "ca.pem").read_bytes()
    (tmp_path / "notes.txt").write_text("mine")
    again = certs.ephemeral(tmp_path, ["a"])
    assert (again / "ca.pem").read_bytes() != old_ca
    assert not (again / "city-b.pem").exists()  # nothing of the previous run's identities survives
    assert (tmp_path / "notes.txt").read_text() == "mine"
    san = (
        cert(again / "coordinator.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    )
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]


def test_revoke_signs_a_new_crl_and_add_reissues(pki):
    old_serial = cert(pki / "city-b.pem").serial_number
    assert certs.revoke(pki, "b") == old_serial
    revoked = crl(pki)
    assert [e.serial_number for e in revoked] == [old_serial]
    assert revoked.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert revoked.is_signature_valid(cert(pki / "ca.pem").public_key())
    assert revoked.next_update_utc == cert(pki / "ca.pem").not_valid_after_utc  # never stale before the CA
    with pytest.raises(certs.CertsError, match="already revoked"):
        certs.revoke(pki, "b")
    fresh = certs.add(pki, "b")
    assert fresh.serial_number != old_serial
    assert certs.revoked_serials(pki) == {old_serial}  # the old certificate stays revoked
    certs.revoke(pki, "a")
    assert certs.revoked_serials(pki) == {old_serial, cert(pki / "city-a.pem").serial_number}
    assert crl(pki).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3


def test_add_a_new_city_and_refuse_an_existing_one(pki):
    certs.add(pki, "d", days=10)
    assert certs.identity_of(cert(pki / "city-d.pem")) == ("city", "d")
    assert mode(pki / "city-d.key") == 0o600
    with pytest.raises(certs.CertsError, match="already has a valid certificate"):
        certs.add(pki, "a")


def test_export_holds_the_ca_the_crl_and_one_identity_only(pki, tmp_path):
    written = certs.export(pki, "b", tmp_path / "kit-b")
    assert sorted(p.name for p in written) == ["ca.pem", "city-b.key", "city-b.pem", "crl.pem"]
    assert sorted(p.name for p in (tmp_path / "kit-b").iterdir()) == sorted(p.name for p in written)
    assert mode(tmp_path / "kit-b" / "city-b.key") == 0o600 and mode(tmp_path / "kit-b") == 0o700
    for p in written:
        assert p.read_bytes() == (pki / p.name).read_bytes()
    kit = certs.load_kit(tmp_path / "kit-b", "city", "b")
    assert kit.cert == tmp_path / "kit-b" / "city-b.pem" and kit.crl.name == "crl.pem"
    with pytest.raises(certs.CertsError, match="no city-a.pem, city-a.key"):
        certs.load_kit(tmp_path / "kit-b", "city", "a")
    coordinator = certs.export(pki, "coordinator", tmp_path / "kit-c")
    assert sorted(p.name for p in coordinator) == ["ca.pem", "coordinator.key", "coordinator.pem", "crl.pem"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d, t: certs.export(d, "zz", t / "out"), "city 'zz': not in"),
        (lambda d, t: certs.export(d, "a", d), "is not an empty directory"),
        (lambda d, t: certs.revoke(d, "zz"), r"not in .* \(cities there: a, b, c\)"),
        (lambda d, t: certs.revoke(t / "nothing", "a"), "no ca.pem"),
        (lambda d, t: certs.add(d, "bad/name"), "city name 'bad/name'"),
        (lambda d, t: certs.add(d, "coordinator"), "not 'coordinator'"),
        (lambda d, t: certs.init(d, ["x"]), "already holds a CA"),
        (lambda d, t: certs.init(t / "n", ["x", "x"]), "named twice"),
        (lambda d, t: certs.init(t / "n", []), "at least one city"),
        (lambda d, t: certs.init(t / "n", ["x"], ["bad host!"]), "not an IP address or a DNS name"),
        (lambda d, t: certs.init(t / "n", ["x"], days=0), "must be >= 1"),
        (lambda d, t: certs.init(d / "ca.pem", ["x"]), "not a directory"),
    ],
)
def test_bad_input_is_refused_with_a_reason(pki, tmp_path, call, message):
    with pytest.raises(certs.CertsError, match=message):
        call(pki, tmp_path)
    assert not (tmp_path / "n").exists()


def test_a_revoked_city_gets_no_kit(pki, tmp_path):
    certs.revoke(pki, "c")
    with pytest.raises(certs.CertsError, match="revoked"):
        certs.export(pki, "c", tmp_path / "kit")
    assert not (tmp_path / "kit").exists()


def test_cli_init_revoke_export(tmp_path, capsys):
    pki = tmp_path / "pki"
    assert cli(["certs", "init", str(pki), "--cities", "x,y", "--coordinator", "h.example,127.0.0.1"]) == 0
    assert "2 cities (x, y)" in capsys.readouterr().out
    assert cli(["certs", "revoke", str(pki), "y"]) == 0
    assert "copy" in capsys.readouterr().out and len(certs.revoked_serials(pki)) == 1
    assert cli(["certs", "add", str(pki), "z"]) == 0
    assert cli(["certs", "export", str(pki), "x", str(tmp_path / "kit")]) == 0
    assert (tmp_path / "kit" / "city-x.key").is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["revoke", "{pki}", "nobody"],
        ["add", "{pki}", "x"],
        ["init", "{pki}", "--cities", "q"],
        ["export", "{tmp}/missing", "x", "{tmp}/out"],
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv):
    pki = tmp_path / "pki"
    certs.init(pki, ["x"])
    capsys.readouterr()
    argv = [a.format(pki=pki, tmp=tmp_path) for a in argv]
    assert cli(["certs", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"crosscity certs {argv[0]}: ") and err.count("\n") == 1, err


def test_cli_corrupt_or_missing_files_are_one_line_exit_2(tmp_path, capsys):
    pki = tmp_path / "pki"
    certs.init(pki, ["x", "y"])
    (pki / "city-y.key").unlink()
    assert cli(["certs", "export", str(pki), "y", str(tmp_path / "out")]) == 2
    assert "no city-y.key" in capsys.readouterr().err
    (pki / certs.CRL).write_text("garbage\n")
    assert cli(["certs", "revoke", str(pki), "x"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"crosscity certs revoke: {pki / certs.CRL}: not a valid PEM") and err.count("\n") == 1
    )


def test_a_coordinator_on_a_new_host_gets_a_certificate_naming_it_too(pki):
    """A coordinator restarted on another node: its certificate is re-issued by the same CA with the
    new host added; the cities' certificates and the CA stay, so the cities keep trusting it."""
    before = cert(pki / "coordinator.pem")
    assert not certs.cover_hosts(pki, ["COORD.example.org", "10.0.0.5"])  # already named: kept
    assert cert(pki / "coordinator.pem").serial_number == before.serial_number
    assert certs.cover_hosts(pki, ["node2"])
    after = cert(pki / "coordinator.pem")
    after.verify_directly_issued_by(cert(pki / "ca.pem"))
    san = after.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["coord.example.org", "node2"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert certs.identity_of(after) == ("coordinator", "coordinator")
