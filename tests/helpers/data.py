"""Shared helpers for the data tests: small real inputs cut from the shipped Beijing CSVs."""

from __future__ import annotations

import gzip
from pathlib import Path

from crosscity.data_prep.datasets import BEIJING_DIR
from crosscity.data_prep.prepare import prepare

PRESET_SCHEMA = Path(__file__).parents[2] / "data_prep" / "presets" / "beijing_schema.yaml"
SMALL_CITIES = """cities:
  north:
    stations: [Changping, Dingling]
  centre:
    stations: [Dongsi]
"""


def station_lines(station: str) -> list[str]:
    """All lines (header first) of one shipped station CSV."""
    (path,) = BEIJING_DIR.glob(f"PRSA_Data_{station}_*.csv.gz")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return fh.read().splitlines()


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def small_inputs(folder: Path, rows: int = 2000, start: int = 0) -> list[Path]:
    """Rows [start, start+rows) of Changping, Dingling and Dongsi, one CSV each (real data)."""
    out = []
    for station in ("Changping", "Dingling", "Dongsi"):
        lines = station_lines(station)
        out.append(
            write_csv(folder / f"{station}_{start}.csv", [lines[0], *lines[1 + start : 1 + start + rows]])
        )
    return out


def small_cities(folder: Path) -> Path:
    path = folder / "cities.yaml"
    path.write_text(SMALL_CITIES, encoding="utf-8")
    return path


def prepare_small(folder: Path, name: str, rows: int) -> Path:
    """folder/name: the first `rows` hours of Changping, Dingling (north) and Dongsi (centre), prepared."""
    prepare(
        PRESET_SCHEMA, small_cities(folder), folder / name, small_inputs(folder, rows=rows), progress=False
    )
    return folder / name


def flip_byte(path: Path) -> None:
    """Corrupt a file in place without changing its size (only a checksum can see it)."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
