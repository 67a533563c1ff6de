"""`crosscity audit RUN_DIR`: verify the hash chain of RUN_DIR/audit.jsonl and summarise it.

Exit 0 with OK and a summary; exit 1 naming the first broken line; exit 2 when there is no log.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from crosscity.federation import audit


def _counts(counter: dict[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in sorted(counter.items())) or "none"


def render(path: Path, check: audit.Verification) -> str:
    """The report: verdict line, then the summary of the records that verified."""
    s = audit.summarize(check.records)
    head = f"head seq {check.head_seq} sha256 {check.head_hash}"
    if check.ok:
        lines = [f"OK {path}: {len(check.records)} records, chain intact; {head}"]
    else:
        lines = [
            f"BROKEN {path} line {check.line}: {check.problem}",
            f"the {len(check.records)} records before it verify ({head}); summary of those:",
        ]
    lines.append(f"events: {_counts(s.events)}")
    lines.append(
        f"connections: {s.accepted} accepted, {sum(s.refused.values())} refused ({_counts(s.refused)})"
    )
    if s.rounds:
        lines.append(
            f"rounds: {len(s.rounds)} (round {min(s.rounds)}..{max(s.rounds)}), "
            f"{min(s.participants)}-{max(s.participants)} participants"
        )
    else:
        lines.append("rounds: none")
    if s.cities:
        lines.append(
            f"{'city':<16}{'rounds':>8}{'updates':>9}{'clipped':>9}{'rejected':>10}{'joins':>7}{'leaves':>8}"
        )
        for name, c in sorted(s.cities.items()):
            lines.append(
                f"{name:<16}{c.rounds:>8}{c.updates:>9}{c.clipped:>9}{c.rejected:>10}{c.joins:>7}{c.leaves:>8}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="crosscity audit",
        description="Verify a run's hash-chained audit trail (RUN_DIR/audit.jsonl) and summarise it.",
        epilog="example:\n  crosscity audit runs/latest",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", type=Path)
    args = p.parse_args(argv)
    path = args.run_dir / audit.FILENAME
    if not path.is_file():
        print(f"crosscity audit: {path}: no audit log there (the coordinator writes it)", file=sys.stderr)
        return 2
    check = audit.verify(path)
    print(render(path, check))
    return 0 if check.ok else 1


if __name__ == "__main__":
    sys.exit(main())
