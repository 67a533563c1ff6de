"""The WAN benchmark's numbers from before the transport change, side by side with a new run.

Why: issue 12 moved the inter-city exchange off a gloo ring (every city a rank of one world) onto
the coordinator (a star at the hub: each city sends its stripe once and gets the result once), and
the bench must not get slower. The last table measured on gloo is kept verbatim in
results_before_transport.md; this reads its method and sweep tables back so the report can put
each number next to the new one. On a shared host the training time moves with the CPU the
cities get, so the comparison also shows the time stalled on the WAN (training time x (1 - compute
utilisation)), which is the transport's share and is far less sensitive to other load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # results_report imports this module
    from crosscity.bench.wan.results_report import BenchRun

BEFORE = Path(__file__).with_name("results_before_transport.md")


@dataclass(frozen=True)
class Before:
    """One method's row of the old main table (at the main rate)."""

    train_s: float
    time_to_target: float | None
    final_rmse: float
    util: float  # compute utilisation, 0..1
    wan_mb: float  # accounted
    wire_mb: float

    @property
    def stalled_s(self) -> float:
        return self.train_s * (1 - self.util)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _number(cell: str) -> float | None:
    try:
        return float(cell.strip().replace(",", "").rstrip("%x"))
    except ValueError:
        return None


def read_before(
    path: Path = BEFORE,
) -> tuple[dict[str, Before], dict[tuple[str, float], tuple[float, float]]]:
    """(main table by method, sweep by (method, rate) -> (training s, share stalled on the WAN))."""
    main: dict[str, Before] = {}
    sweep: dict[tuple[str, float], tuple[float, float]] = {}
    rates: list[float] = []
    for line in path.read_text().splitlines():
        if not line.startswith("| ") or line.startswith("|---"):
            continue
        cells = _cells(line)
        if cells[0] == "method":
            rates = [_number(c.split()[0]) or 0.0 for c in cells[1:]] if "Mbit/s" in line else []
            continue
        if rates:  # a sweep row: "train s / stalled % / rmse vs flat"
            for rate, cell in zip(rates, cells[1:], strict=True):
                parts = [_number(x) for x in cell.split("/")]
                if len(parts) == 3 and parts[0] is not None and parts[1] is not None:
                    sweep[(cells[0], rate)] = (parts[0], parts[1] / 100)
        elif len(cells) == 13:
            main[cells[0]] = Before(
                train_s=_number(cells[11]) or 0.0,
                time_to_target=_number(cells[1]),
                final_rmse=_number(cells[3]) or 0.0,
                util=(_number(cells[8]) or 0.0) / 100,
                wan_mb=_number(cells[5]) or 0.0,
                wire_mb=_number(cells[7]) or 0.0,
            )
    return main, sweep


def side_by_side(main_runs: list[BenchRun], sweep_runs: list[BenchRun], rates: list[float]) -> str:
    before, before_sweep = read_before()
    flat = next((r.outcome for r in main_runs if r.method == "flat"), None)
    rows = [
        "Each cell: before (gloo between cities) -> now (the coordinator on the hub). Stalled = training "
        "time x (1 - compute utilisation): the time the cities waited on the WAN.",
        "",
        "| method | training time (s) | stalled on the WAN (s) | time to target (s) | compute util "
        "| final val RMSE | WAN bytes sent (MB, accounted) | wire bytes (MB: cities [+ hub]) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in main_runs:
        b, o = before.get(r.method), r.outcome
        if b is None:
            continue
        t = o.time_to(flat.final_rmse) if flat else None
        hub = f" + {o.hub_bytes / 1e6:,.2f}" if o.hub_bytes else ""
        rows.append(
            f"| {r.method} | {b.train_s:.1f} -> {o.train_s:.1f} "
            f"| {b.stalled_s:.1f} -> {o.train_s * (1 - o.compute_util):.1f} "
            f"| {_opt(b.time_to_target)} -> {_opt(t)} "
            f"| {100 * b.util:.0f}% -> {100 * o.compute_util:.0f}% "
            f"| {b.final_rmse:.3f} -> {o.final_rmse:.3f} | {b.wan_mb:,.2f} -> {o.wan_bytes / 1e6:,.2f} "
            f"| {b.wire_mb:,.2f} -> {(o.wire_bytes or 0) / 1e6:,.2f}{hub} |"
        )
    rows += [
        "",
        "Rate sweep, each cell: training time (s) before -> now / stalled on the WAN (s) before -> now.",
        "",
        "| method | " + " | ".join(f"{rate:g} Mbit/s" for rate in rates) + " |",
        "|---|" + "---:|" * len(rates),
    ]
    for m in dict.fromkeys(r.method for r in sweep_runs):
        cells = []
        for rate in rates:
            now = next((r.outcome for r in sweep_runs if r.method == m and r.rate_mbit == rate), None)
            old = before_sweep.get((m, rate))
            if now is None or old is None:
                cells.append("-")
                continue
            stalled = now.train_s * (1 - now.compute_util)
            cells.append(f"{old[0]:.1f} -> {now.train_s:.1f} / {old[0] * old[1]:.1f} -> {stalled:.1f}")
        rows.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _opt(x: float | None) -> str:
    return "not reached" if x is None else f"{x:.1f}"


def before_text() -> str:
    """The old RESULTS.md, its headings one level down, to append under its own heading."""
    lines = BEFORE.read_text().splitlines()
    return "\n".join(("#" + line if line.startswith("#") else line) for line in lines[1:]).strip()
