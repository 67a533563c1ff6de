"""Body of `crosscity prep`: prepare, append and verify datasets (launch/cli.py dispatches here)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crosscity.data_prep.datasets import beijing_files
from crosscity.data_prep.errors import DataPrepError, DatasetError
from crosscity.data_prep.prepare import append, prepare, print_report
from crosscity.data_prep.schema import POLICIES_BAD_INPUT, POLICIES_CONFLICT
from crosscity.data_prep.verify import verify_dataset

PRESETS_DIR = Path(__file__).parent / "presets"
PRESETS = {
    "beijing": (PRESETS_DIR / "beijing_schema.yaml", PRESETS_DIR / "beijing_cities.yaml", beijing_files)
}

EXAMPLES = """examples:
  crosscity prep --preset beijing --out data/beijing
  crosscity prep --schema my_schema.yaml --cities my_cities.yaml --out data/mine exports/*.csv.gz
  crosscity prep append --data data/beijing new_rows.csv
  crosscity prep verify data/beijing          # sha256 + structure of every shard
  crosscity prep verify data/beijing --quick  # sizes and versions only (what training checks)
see docs/data_format.md for the schema and cities file formats."""


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() prints one line and returns 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise DataPrepError(f"{self.prog}: {message}")


def _policies(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--on-bad-input", choices=POLICIES_BAD_INPUT, help="override the schema's bad-input policy"
    )
    p.add_argument("--on-conflict", choices=POLICIES_CONFLICT, help="override the schema's conflict policy")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _parsers() -> dict[str, argparse.ArgumentParser]:
    fmt = argparse.RawDescriptionHelpFormatter
    prep = _Parser(
        prog="crosscity prep",
        description="Prepare raw station CSVs into per-city HDF5 shards (also `prep append`, `prep verify`).",
        epilog=EXAMPLES,
        formatter_class=fmt,
    )
    prep.add_argument(
        "--preset", choices=sorted(PRESETS), help="shipped schema + cities (+ data when no INPUT)"
    )
    prep.add_argument("--schema", type=Path, help="schema YAML (docs/data_format.md)")
    prep.add_argument("--cities", type=Path, help="cities YAML: stations of each city")
    prep.add_argument("--out", type=Path, required=True, help="new dataset folder")
    prep.add_argument("inputs", nargs="*", type=Path, metavar="INPUT", help="CSV or CSV.gz files")
    _policies(prep)
    add = _Parser(
        prog="crosscity prep append",
        description="Add rows to a prepared dataset.",
        epilog=EXAMPLES,
        formatter_class=fmt,
    )
    add.add_argument("--data", type=Path, required=True, help="prepared dataset folder")
    add.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="CSV or CSV.gz files")
    _policies(add)
    check = _Parser(
        prog="crosscity prep verify",
        description="Verify a dataset (exit 1 on any problem).",
        epilog=EXAMPLES,
        formatter_class=fmt,
    )
    check.add_argument("data", type=Path, help="dataset root or one city folder")
    depth = check.add_mutually_exclusive_group()
    depth.add_argument(
        "--full", action="store_true", help="hash every shard and check its contents (default)"
    )
    depth.add_argument("--quick", action="store_true", help="only sizes and versions (what training checks)")
    return {"prep": prep, "append": add, "verify": check}


def _run(argv: list[str]) -> int:
    parsers = _parsers()
    command = argv[0] if argv and argv[0] in ("append", "verify") else "prep"
    args = parsers[command].parse_args(argv[1:] if command != "prep" else argv)
    if command == "verify":
        cities = verify_dataset(args.data, full=not args.quick)
        kind = "quick" if args.quick else "full"
        print(f"verify ({kind}): OK, {len(cities)} cities: {', '.join(c.name for c in cities)}")
        return 0
    policies = {
        "on_bad_input": args.on_bad_input,
        "on_conflict": args.on_conflict,
        "progress": not args.quiet,
    }
    if command == "append":
        report = append(args.data, args.inputs, **policies)
    else:
        schema, cities, inputs = args.schema, args.cities, args.inputs
        if args.preset:
            preset_schema, preset_cities, files = PRESETS[args.preset]
            schema, cities = schema or preset_schema, cities or preset_cities
            inputs = inputs or files()
        if schema is None or cities is None:
            raise DataPrepError("crosscity prep: give --schema and --cities, or --preset")
        if not inputs:
            raise DataPrepError("crosscity prep: no INPUT files given")
        report = prepare(schema, cities, args.out, inputs, **policies)
    print_report(report)
    return 0


def main(argv: list[str]) -> int:
    """Run `crosscity prep ...`; returns 0 ok, 1 verification failed, 2 bad usage or bad input."""
    try:
        return _run(list(argv))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except DatasetError as exc:
        print(f"verify: FAILED: {exc}", file=sys.stderr)
        return 1
    except DataPrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
