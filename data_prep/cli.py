"""Body of `crosscity prep`: prepare, append and verify datasets (launch/cli.py dispatches here)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crosscity.data_prep.datasets import beijing_files
from crosscity.data_prep.errors import DataPrepError, DatasetError
from crosscity.data_prep.plausibility import table
from crosscity.data_prep.prepare import PrepReport, append, prepare
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
  crosscity prep verify data/beijing          # the dataset version, sha256 + HDF5 structure of every shard
  crosscity prep verify data/beijing --quick  # the dataset version and sha256 (what training checks)
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
    p.add_argument(
        "--strict", action="store_true", help="a sentinel-like value (plausibility flag) is an error, exit 2"
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines and no plausibility table")


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
        "--full", action="store_true", help="also open every shard and check its contents (default)"
    )
    depth.add_argument(
        "--quick",
        action="store_true",
        help="the dataset version and every shard's sha256 (what training checks)",
    )
    return {"prep": prep, "append": add, "verify": check}


def _print_report(report: PrepReport, quiet: bool) -> None:
    if report.plausibility and not quiet:
        print(f"prep: plausibility of the rows read\n{table(report.plausibility)}", file=sys.stderr)
    for line in report.flags:
        print(f"prep: warning: {line} (--strict makes this an error)", file=sys.stderr)
    print(f"prep: {report.summary()}", file=sys.stderr)


def _run(argv: list[str]) -> int:
    parsers = _parsers()
    command = argv[0] if argv and argv[0] in ("append", "verify") else "prep"
    args = parsers[command].parse_args(argv[1:] if command != "prep" else argv)
    if command == "verify":
        level = "quick" if args.quick else "full"
        print(verify_dataset(args.data, level).line(level))
        return 0
    policies = {
        "on_bad_input": args.on_bad_input,
        "on_conflict": args.on_conflict,
        "strict": args.strict,
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
    _print_report(report, args.quiet)
    return 0


def main(argv: list[str]) -> int:
    """Run `crosscity prep ...`; returns 0 ok, 1 verification failed, 2 bad usage or bad input."""
    try:
        return _run(list(argv))
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    except DatasetError as exc:
        if list(argv)[:1] == ["verify"]:
            print(f"verify: FAILED: {exc}", file=sys.stderr)
            return 1
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except DataPrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
