"""Every bad-input class: rejected with file:line and the reason, or skipped and counted by policy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crosscity.data_prep.cli import main
from crosscity.data_prep.csv_source import BadInput, CsvSource
from crosscity.data_prep.errors import ConflictError, InputError, SchemaError
from crosscity.data_prep.prepare import prepare
from crosscity.data_prep.schema import bind, load_cities, load_schema
from tests.helpers.data import PRESET_SCHEMA, small_cities, station_lines, write_csv

ROWS = 40


def lines() -> list[str]:
    return station_lines("Changping")[: ROWS + 1]


def field(line: str, index: int, value: str) -> str:
    parts = line.split(",")
    parts[index] = value
    return ",".join(parts)


def solo_city(folder: Path) -> Path:
    path = folder / "solo.yaml"
    path.write_text("cities:\n  north: {stations: [Changping]}\n", encoding="utf-8")
    return path


def run(tmp_path, content: list[str] | bytes, policy: str = "error"):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "in.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_csv(path, content)
    out = tmp_path / "out"
    report = prepare(PRESET_SCHEMA, solo_city(tmp_path), out, [path], progress=False, on_bad_input=policy)
    return path, report


def mutated(kind: str) -> list[str] | bytes:
    rows = lines()
    if kind == "wrong_column_count":
        rows[3] = rows[3].rsplit(",", 1)[0]
    elif kind == "non_numeric":
        rows[5] = field(rows[5], 5, "abc")
    elif kind == "bad_category":
        rows[5] = field(rows[5], 15, '"XYZ"')
    elif kind == "bad_time":
        rows[5] = field(rows[5], 2, "13")
    elif kind == "unknown_station":
        rows[5] = field(rows[5], 17, '"Atlantis"')
    elif kind == "unsorted_time":
        rows[3], rows[4] = rows[4], rows[3]
    elif kind == "duplicate_time":
        rows[4] = rows[3]
    elif kind == "bad_encoding":
        data = "\n".join(rows).encode()
        at = data.index(rows[4].encode()) + 3
        return data[:at] + b"\xff" + data[at + 1 :]
    return rows


CASES = {
    "wrong_column_count": (4, "expected 18 fields, got 17"),
    "non_numeric": (6, "column 'PM2.5': value 'abc' is not a number (missing tokens: ['NA'])"),
    "bad_category": (6, "column 'wd': value 'XYZ' is not allowed; allowed: N NNE NE"),
    "bad_time": (6, "column 'month': '13' is not a valid month (an integer 1..12)"),
    "unknown_station": (6, "station 'Atlantis' is in no city of the cities file"),
    "unsorted_time": (5, "station 'Changping' time 2013-03-01 02:00 is before an earlier row's time"),
    "duplicate_time": (5, "station 'Changping' time 2013-03-01 02:00 repeats an earlier row's time"),
    "bad_encoding": (5, "not valid utf-8: byte 0xff at column 4"),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_row_is_rejected_with_file_line_and_reason(tmp_path, kind):
    line, message = CASES[kind]
    with pytest.raises(InputError) as err:
        run(tmp_path, mutated(kind))
    assert str(err.value).startswith(f"{tmp_path / 'in.csv'}:{line}: {message}")
    assert str(err.value).endswith(f"[{kind}]")
    assert not (tmp_path / "out").exists()  # never a partial dataset


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_row_is_skipped_and_counted_by_policy(tmp_path, kind):
    _, report = run(tmp_path, mutated(kind), policy="skip")
    assert report.skipped[kind] == 1
    assert sum(report.skipped.values()) == 1
    assert report.rows_read == report.rows_added == report.cities["north"]["rows"] == ROWS - 1


def test_empty_files(tmp_path):
    with pytest.raises(InputError, match=r"in.csv:1: file is empty \(no header line\) \[empty_file\]"):
        run(tmp_path, b"")
    with pytest.raises(InputError, match=r"in.csv:2: file has a header but no data rows \[empty_file\]"):
        run(tmp_path, lines()[:1])


def test_unknown_and_missing_columns(tmp_path):
    rows = [f"{r},x" for r in lines()]
    rows[0] = rows[0][:-1] + '"extra"'
    with pytest.raises(
        InputError, match=r"in.csv:1: unknown column 'extra'; the schema .* knows .*ignore_columns"
    ):
        run(tmp_path, rows)
    _, report = run(tmp_path / "skip", rows, policy="skip")
    assert report.skipped["unknown_column"] == 1 and report.rows_added == ROWS
    rows = [r.rsplit(",", 1)[0] for r in lines()]  # drop the station column
    with pytest.raises(InputError, match=r"in.csv:1: required column 'station' missing from the header"):
        run(tmp_path / "missing", rows)


def test_conflicting_rows_in_two_inputs_name_both_lines(tmp_path):
    a = write_csv(tmp_path / "a.csv", lines())
    b_rows = lines()
    b_rows[7] = field(b_rows[7], 5, "999")
    b = write_csv(tmp_path / "b.csv", b_rows)
    with pytest.raises(ConflictError, match=rf"{a}:8 and {b}:8: two different rows for station 'Changping'"):
        prepare(PRESET_SCHEMA, solo_city(tmp_path), tmp_path / "out", [a, b], progress=False)
    report = prepare(
        PRESET_SCHEMA, solo_city(tmp_path), tmp_path / "out", [a, b], progress=False, on_conflict="replace"
    )
    assert (report.rows_added, report.rows_replaced, report.input_duplicates) == (ROWS, 1, ROWS - 1)


def test_schema_errors_name_file_key_and_allowed(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text(PRESET_SCHEMA.read_text().replace("encoding: compass16", "encoding: polar"))
    with pytest.raises(
        SchemaError,
        match=r"s.yaml: key 'categorical.wd.encoding': value 'polar' not allowed; "
        r"expected compass16, degrees, \{map: ",
    ):
        load_schema(bad)
    bad.write_text(PRESET_SCHEMA.read_text() + "colour: red\n")
    with pytest.raises(SchemaError, match="s.yaml: unknown key 'colour'; allowed keys: schema_version"):
        load_schema(bad)


def test_cli_prints_one_line_and_exits_2_on_bad_input(tmp_path, capsys):
    path = write_csv(tmp_path / "in.csv", mutated("non_numeric"))
    code = main(
        [
            "--schema",
            str(PRESET_SCHEMA),
            "--cities",
            str(solo_city(tmp_path)),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
            str(path),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    reason = "column 'PM2.5': value 'abc' is not a number (missing tokens: ['NA']) [non_numeric]"
    assert err[0] == f"error: {path}:6: {reason}"


def test_a_city_without_rows_fails_prep(tmp_path):
    path = write_csv(tmp_path / "in.csv", lines())
    with pytest.raises(
        InputError, match=r"cities.yaml: city 'centre' got no rows from the inputs \(stations Dongsi\)"
    ):
        prepare(PRESET_SCHEMA, small_cities(tmp_path), tmp_path / "out", [path], progress=False)
    assert not (tmp_path / "out").exists()


def test_chunk_boundaries_change_nothing_and_order_is_checked_across_chunks(tmp_path):
    schema = load_schema(PRESET_SCHEMA)
    cities = bind(schema, load_cities(solo_city(tmp_path)))
    good = write_csv(tmp_path / "good.csv", lines())

    def parse(path, chunk_rows):
        chunks = list(CsvSource(path, schema, cities, BadInput("error"), chunk_rows=chunk_rows).chunks())
        return chunks, np.concatenate([c.time for c in chunks]), np.concatenate([c.values for c in chunks])

    small, t_small, v_small = parse(good, 8)
    _, t_big, v_big = parse(good, 10_000)
    assert len(small) == 5
    np.testing.assert_array_equal(t_small, t_big)
    np.testing.assert_array_equal(v_small, v_big)
    rows = lines()
    rows[9] = rows[8]  # line 10 (first row of the second chunk) repeats line 9
    with pytest.raises(InputError, match=r"bad.csv:10: station 'Changping' time 2013-03-01 07:00 repeats"):
        parse(write_csv(tmp_path / "bad.csv", rows), 8)
