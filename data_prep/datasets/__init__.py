"""Data sets shipped inside the package, so a fresh install can prepare real data offline."""

from __future__ import annotations

from pathlib import Path

BEIJING_DIR = Path(__file__).parent / "beijing_multisite"


def beijing_files() -> list[Path]:
    """The 12 Beijing station CSVs (gzip), sorted by name (CC BY 4.0, see README.md beside them)."""
    files = sorted(BEIJING_DIR.glob("*.csv.gz"))
    if len(files) != 12:
        raise FileNotFoundError(f"{BEIJING_DIR}: expected 12 *.csv.gz station files, found {len(files)}")
    return files
