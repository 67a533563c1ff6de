"""The hash-chained audit trail: appends (also from threads), every kind of tampering found, the CLI."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from crosscity.federation import audit
from crosscity.launch.cli import main as cli


def sample_run(path: Path) -> None:
    """What a coordinator writes in a short run: 2 cities in, 1 refused, 2 rounds, a clip, a reject."""
    with audit.AuditLog(path) as log:
        log.connection("10.0.0.7:40112", True, fingerprint="ab" * 32, role="city", name="a")
        log.join("a", "ab" * 32)
        log.connection("10.0.0.8:40200", True, fingerprint="cd" * 32, role="city", name="b")
        log.join("b", "cd" * 32)
        log.connection("203.0.113.9:5000", False, reason="unknown-ca", detail="self-signed certificate")
        log.connection("10.0.0.9:41000", False, reason="revoked", detail="certificate revoked")
        for r in (1, 2):
            log.update("a", r, "11" * 32, 4096, norm=1.5, clipped=False, scale=1.0)
            log.update("b", r, "22" * 32, 4096, norm=90.0, clipped=r == 2, scale=0.05 if r == 2 else 1.0)
            log.round(r, ["b", "a"])
        log.update("b", 3, "33" * 32, 4096, rejected="12 non-finite values (NaN/inf) of 1024")
        log.leave("b", "heartbeat lost")


@pytest.fixture
def trail(tmp_path: Path) -> Path:
    sample_run(tmp_path / audit.FILENAME)
    return tmp_path / audit.FILENAME


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_records_form_a_chain(trail):
    raw = lines(trail)
    records = [json.loads(line) for line in raw]
    assert [r["seq"] for r in records] == list(range(1, 15))
    assert records[0]["prev"] == audit.GENESIS
    for before, after in zip(records, records[1:], strict=False):
        assert after["prev"] == before["hash"]
    for line, r in zip(raw, records, strict=True):
        assert r["hash"] == audit.record_hash(r) and line == audit.canonical(r) + b"\n"
    assert records[6]["fields"] == {
        "city": "a",
        "round": 1,
        "sha256": "11" * 32,
        "bytes": 4096,
        "norm": 1.5,
        "clipped": False,
        "scale": 1.0,
        "rejected": None,
    }
    assert records[8]["fields"]["participants"] == ["a", "b"]
    check = audit.verify(trail)
    assert check.ok and len(check.records) == 14 and check.head_hash == records[-1]["hash"]


def test_reopening_continues_the_chain_and_a_second_writer_is_refused(trail):
    with audit.AuditLog(trail) as log:
        with pytest.raises(audit.AuditError, match="another writer"):
            audit.AuditLog(trail)
        record = log.round(3, ["a"])
    assert record["seq"] == 15 and audit.verify(trail).ok


def test_concurrent_appends_from_threads(tmp_path):
    path = tmp_path / audit.FILENAME
    with audit.AuditLog(path) as log:

        def work(t: int) -> None:
            for i in range(25):
                log.update(f"c{t}", i, f"{t:02x}" * 32, 100 + i)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    check = audit.verify(path)
    assert check.ok and len(check.records) == 200
    assert sorted((r["fields"]["city"], r["fields"]["round"]) for r in check.records) == sorted(
        (f"c{t}", i) for t in range(8) for i in range(25)
    )


def forge(record: dict, **changes) -> bytes:
    """A record edited by someone who knows the format and recomputes its hash."""
    r = {**record, **changes}
    r["hash"] = audit.record_hash(r)
    return audit.canonical(r) + b"\n"


TAMPERING = {
    "value changed": (lambda raw: raw[:6] + [raw[6].replace(b'"bytes":4096', b'"bytes":4095')] + raw[7:], 7),
    "value changed, hash recomputed": (
        lambda raw: raw[:6] + [forge(json.loads(raw[6]), fields={"city": "a"})] + raw[7:],
        8,
    ),
    "line deleted": (lambda raw: raw[:4] + raw[5:], 5),
    "first line deleted": (lambda raw: raw[1:], 1),
    "line duplicated": (lambda raw: raw[:4] + [raw[3]] + raw[4:], 5),
    "lines swapped": (lambda raw: raw[:4] + [raw[5], raw[4]] + raw[6:], 5),
    "forged line inserted": (
        lambda raw: raw[:4] + [forge(json.loads(raw[3]), seq=5, prev=json.loads(raw[3])["hash"])] + raw[4:],
        6,
    ),
    "whitespace added": (lambda raw: raw[:2] + [raw[2].replace(b",", b", ", 1)] + raw[3:], 3),
    "garbage line": (lambda raw: raw[:9] + [b"hello\n"] + raw[9:], 10),
    "torn last line": (lambda raw: raw[:-1] + [raw[-1][:20]], 14),
}


@pytest.mark.parametrize("kind", sorted(TAMPERING))
def test_tampering_is_found_at_the_first_broken_line(trail, kind):
    edit, expected = TAMPERING[kind]
    trail.write_bytes(b"".join(edit(lines(trail))))
    check = audit.verify(trail)
    assert not check.ok and check.line == expected, (kind, check.line, check.problem)
    assert len(check.records) == expected - 1


def test_a_torn_tail_is_cut_and_recorded_at_reopening(trail):
    intact = trail.read_bytes()
    trail.write_bytes(intact + b'{"event":"upd')  # a crash in the middle of a write
    with audit.AuditLog(trail) as log:
        log.round(3, ["a"])
    check = audit.verify(trail)
    assert check.ok and trail.read_bytes().startswith(intact)
    recovered = check.records[14]
    assert recovered["event"] == audit.RECOVERED and recovered["fields"]["torn_bytes"] == 13
    assert check.records[15]["fields"]["round"] == 3


def test_a_corrupt_last_record_is_not_appended_to(trail):
    trail.write_bytes(trail.read_bytes() + b"not json\n")
    with pytest.raises(audit.AuditError, match="last record is not an audit record"):
        audit.AuditLog(trail)
    trail.write_bytes(trail.read_bytes()[: -len(b"not json\n")])  # the operator repairs it
    with audit.AuditLog(trail) as log:  # nothing of the refused open is left holding the file
        assert log.round(3, ["a"])["seq"] == 15


def test_a_non_finite_number_is_refused_before_anything_is_written(trail):
    with audit.AuditLog(trail) as log, pytest.raises(ValueError):
        log.update("a", 9, "00" * 32, 1, norm=float("nan"))
    assert audit.verify(trail).ok and len(lines(trail)) == 14


def test_summary(trail):
    s = audit.summarize(audit.verify(trail).records)
    assert s.events == {"connection": 4, "join": 2, "update": 5, "round": 2, "leave": 1}
    assert s.accepted == 2 and s.refused == {"unknown-ca": 1, "revoked": 1}
    assert s.rounds == [1, 2] and s.participants == [2, 2]
    assert s.cities["a"] == audit.CityActivity(rounds=2, updates=2, joins=1)
    assert s.cities["b"] == audit.CityActivity(rounds=2, updates=3, clipped=1, rejected=1, joins=1, leaves=1)


def test_cli_ok_summary(trail, capsys):
    assert cli(["audit", str(trail.parent)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"OK {trail}: 14 records, chain intact; head seq 14 sha256 ")
    assert "connections: 2 accepted, 2 refused (revoked 1, unknown-ca 1)" in out
    assert "rounds: 2 (round 1..2), 2-2 participants" in out
    assert any(line.split() == ["b", "2", "3", "1", "1", "1", "1"] for line in out.splitlines())


def test_cli_broken_names_the_line_and_exits_1(trail, capsys):
    raw = lines(trail)
    trail.write_bytes(b"".join(raw[:3] + raw[4:]))
    assert cli(["audit", str(trail.parent)]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"BROKEN {trail} line 4: prev does not match line 3's hash")
    assert "the 3 records before it verify" in out


def test_cli_missing_log_is_one_line_exit_2(tmp_path, capsys):
    assert cli(["audit", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no audit log there" in err
