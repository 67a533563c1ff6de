"""The `crosscity` command: one entry point, one subcommand per job a researcher does.

Subcommands owned by other modules receive the rest of the command line unchanged, so each
module keeps its own argparse and its own --help.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from crosscity.config import ConfigError
from crosscity.core.exit_codes import EXIT_BAD_INPUT
from crosscity.launch.preflight import HostError

# name -> (module with `main(argv) -> int`, one-line description)
DELEGATED = {
    "prep": ("crosscity.data_prep.cli", "raw CSV -> per-city HDF5 shards (also: prep append, prep verify)"),
    "submit": (
        "crosscity.launch.slurm.submit",
        "submit the cities as Slurm job arrays (sbatch scripts, or --via submitit)",
    ),
    "sweep": (
        "crosscity.launch.slurm.sweep",
        "hyperparameter sweep as one throttled Slurm array (or --local)",
    ),
    "status": ("crosscity.launch.slurm.status", "state, step and last log line of each city of a run"),
    "report": ("crosscity.launch.report.command", "Markdown summary and plots of a run or a sweep"),
    "eval": ("crosscity.launch.eval_command", "score a finished run's final model on a split (val, test)"),
    "bench": ("crosscity.launch.bench", "benchmarks: `bench wan` (emulated WAN, root), `bench data`"),
    "coordinator": (
        "crosscity.launch.coordinator",
        "host the rendezvous store for the cities of a Slurm run",
    ),
    "certs": ("crosscity.launch.certs_command", "CA and per-city certificates: init, add, revoke, export"),
    "audit": ("crosscity.launch.audit_command", "verify a run's hash-chained audit.jsonl and summarise it"),
}

EPILOG = """examples:
  crosscity demo                                    # the whole idea on a laptop, ~3 min
  crosscity prep --preset beijing --out data/beijing
  crosscity run configs/beijing_mlp.yaml wan.algorithm=diloco wan.sync_every=20
  crosscity report runs/latest
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="crosscity",
        description="Train one model on data that stays in several cities: LAN all-reduce inside a city, "
        "compressed model averaging across the WAN.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run cities x ranks as local processes (gloo on CPU)",
        description="Start topology.cities x topology.ranks_per_city processes on this machine.",
        epilog="example:\n  crosscity run configs/beijing_mlp.yaml topology.cities=2 wan.codec=int8",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("config", help="YAML config (see README: config keys)")
    run.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. wan.sync_every=20")
    train = sub.add_parser(
        "train",
        help="per-rank entry point that launchers start (reads RUN_DIR/config.yaml)",
        description="Run one rank. The topology comes from CROSSCITY_* (local launcher), Slurm, torchrun "
        "or MPI variables; rendezvous from MASTER_ADDR/MASTER_PORT or RUN_DIR/coordinator.json.",
        epilog="example:\n  CROSSCITY_CITY=0 CROSSCITY_NUM_CITIES=1 \\\n"
        "  CROSSCITY_LOCAL_RANK=0 CROSSCITY_RANKS_PER_CITY=1 \\\n"
        "  MASTER_ADDR=127.0.0.1 MASTER_PORT=29500 crosscity train runs/x",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("run_dir")
    demo = sub.add_parser(
        "demo",
        help="prepare the shipped Beijing data and train 4 cities x 2 ranks on CPU",
        description="End-to-end demo on real air-quality data: prep, hierarchical training, table, run dir.",
        epilog="example:\n  crosscity demo --out runs/demo train.steps=600 wan.algorithm=diloco",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out", default="runs/demo", help="run directory (data is prepared under OUT/data)")
    demo.add_argument("overrides", nargs="*", help="dotted key=value overrides of the demo config")
    for name, (_, text) in DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        module = importlib.import_module(DELEGATED[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from crosscity.launch.local.run import run_command

            return run_command(args.config, args.overrides)
        if args.command == "train":
            from crosscity.train.trainer import run_rank

            return run_rank(Path(args.run_dir))
        if args.command == "demo":
            from crosscity.launch.local.demo import run_demo

            return run_demo(Path(args.out), args.overrides)
    except ConfigError as exc:
        print(f"crosscity {args.command}: config error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except HostError as exc:
        print(f"crosscity {args.command}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    _parser().print_help()
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
