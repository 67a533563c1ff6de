"""results.json -> RESULTS.md tables, goal checks and PNG plots (mean +- std over seeds)."""

from __future__ import annotations

import io
import json
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crosscity.core.atomic_io import atomic_write, atomic_write_text
from crosscity.core.forecast_scores import pool_metrics

SPLIT_NOTES = {
    "standard": "the shipped grouping of the 12 stations into 4 cities "
    "(data_prep/presets/beijing_cities.yaml)",
    "hard": "4 cities of the most different stations (3 each by mean PM2.5), the cleanest city with a tenth "
    "of its training hours (bench/quality/datasets.py)",
    "quick": "--quick: two one-station cities, the first 2000 hours",
}


def _stat(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (0 for one seed)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _pm(values: list[float], digits: int = 2) -> str:
    mean, std = _stat(values)
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _metric(sums: dict[str, float], key: str) -> float:
    return pool_metrics([sums])[key]


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """split -> row -> metrics over seeds: lists of per-seed values, in row order of the plan."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        row = out.setdefault(run["split"], {}).setdefault(run["row"], {"seeds": [], "runs": []})
        row["seeds"].append(run["seed"])
        row["runs"].append(run)
    for rows in out.values():
        for row in rows.values():
            rs = row["runs"]
            for s in ("val", "test"):
                for key in ("rmse", "mae", "persistence_rmse", "persistence_mae"):
                    row[f"{s}_{key}"] = [_metric(r["overall"][s], key) for r in rs]
                row[f"{s}_cities"] = {
                    c: {
                        k: [_metric(r["cities"][c][s], k) for r in rs]
                        for k in ("rmse", "mae", "persistence_rmse")
                    }
                    for c in rs[0]["cities"]
                }
                hours = len(rs[0]["by_hour"][s])
                row[f"{s}_by_hour"] = [
                    [_metric(r["by_hour"][s][h], "rmse") for r in rs] for h in range(hours)
                ]
                row[f"{s}_persistence_by_hour"] = [
                    _metric(rs[0]["by_hour"][s][h], "persistence_rmse") for h in range(hours)
                ]
            row["final_steps"] = [st for r in rs for st in r["final_steps"]]
            row["train_wall_s"] = [r["train_wall_s"] for r in rs]
            row["wan_mb"] = [r["wan_bytes"] / 1e6 for r in rs]
    return out


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def _main_table(split: str, rows: dict[str, dict[str, Any]]) -> str:
    any_row = next(iter(rows.values()))
    cities = list(any_row["test_cities"])
    pooled = rows.get("pooled")
    head = [
        "row",
        "seeds",
        "val RMSE",
        "test RMSE",
        "test MAE",
        "test vs pooled",
        "24 h test RMSE",
        "24 h skill",
    ]
    head += [f"{c} test" for c in cities] + ["final step", "WAN MB", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for name, r in rows.items():
        vs = f"{100 * (_mean(r['test_rmse']) / _mean(pooled['test_rmse']) - 1):+.2f}%" if pooled else "-"
        h24, p24 = r["test_by_hour"][-1], r["test_persistence_by_hour"][-1]
        cells = [
            name,
            str(len(r["seeds"])),
            _pm(r["val_rmse"]),
            _pm(r["test_rmse"]),
            _pm(r["test_mae"]),
            vs,
            _pm(h24),
            f"{100 * (1 - _mean(h24) / p24):.1f}%",
            *(_pm(r["test_cities"][c]["rmse"]) for c in cities),
            f"{_mean(r['final_steps']):.0f}",
            f"{_mean(r['wan_mb']):.1f}",
            f"{_mean(r['train_wall_s']):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    p = any_row
    persistence = [
        "persistence",
        "-",
        f"{_mean(p['val_persistence_rmse']):.2f}",
        f"{_mean(p['test_persistence_rmse']):.2f}",
        f"{_mean(p['test_persistence_mae']):.2f}",
        "-",
        f"{p['test_persistence_by_hour'][-1]:.2f}",
        "0%",
        *(f"{_mean(p['test_cities'][c]['persistence_rmse']):.2f}" for c in cities),
        "-",
        "-",
        "-",
    ]
    lines.append("| " + " | ".join(persistence) + " |")
    return "\n".join(lines)


def _city_table(rows: dict[str, dict[str, Any]], split: str) -> str:
    cities = list(next(iter(rows.values()))[f"{split}_cities"])
    head = ["row", *(f"{c} RMSE / MAE" for c in cities)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(cities)]
    for name, r in rows.items():
        cells = [
            f"{_pm(r[f'{split}_cities'][c]['rmse'])} / {_mean(r[f'{split}_cities'][c]['mae']):.2f}"
            for c in cities
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    sums = next(iter(rows.values()))["runs"][0]["cities"]  # the same windows in every row
    cells = [
        f"{_metric(sums[c][split], k):.2f}" for c in cities for k in ("persistence_rmse", "persistence_mae")
    ]
    cells = [f"{a} / {b}" for a, b in zip(cells[::2], cells[1::2], strict=True)]
    lines.append("| persistence | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_federated(rows: dict[str, dict[str, Any]]) -> str | None:
    """The federated row one would pick: the lowest mean validation RMSE (never chosen on test)."""
    fed = [n for n, r in rows.items() if r["runs"][0]["layout"] == "federated"]
    return min(fed, key=lambda n: _mean(rows[n]["val_rmse"]), default=None)


def goals(rows: dict[str, dict[str, Any]]) -> list[tuple[bool, str]]:
    """The issue's three goals for the best federated row (by validation), on the test split (held
    out) and on validation."""
    out = []
    best = best_federated(rows)
    for s in ("test", "val"):
        if best is None or "pooled" not in rows or "per-city" not in rows:
            continue
        b, pooled, alone = rows[best], rows["pooled"], rows["per-city"]
        gap = 100 * (_mean(b[f"{s}_rmse"]) / _mean(pooled[f"{s}_rmse"]) - 1)
        out.append((gap <= 1.0, f"{s}: best federated row ({best}) within 1% of pooled overall: {gap:+.2f}%"))
        worse = [
            c
            for c in b[f"{s}_cities"]
            if _mean(b[f"{s}_cities"][c]["rmse"]) >= _mean(alone[f"{s}_cities"][c]["rmse"])
        ]
        margins = ", ".join(
            f"{c} {_mean(b[f'{s}_cities'][c]['rmse']) - _mean(alone[f'{s}_cities'][c]['rmse']):+.2f}"
            for c in b[f"{s}_cities"]
        )
        out.append(
            (not worse, f"{s}: {best} better than per-city only in every city (RMSE difference: {margins})")
        )
        skill = 100 * (1 - _mean(b[f"{s}_by_hour"][-1]) / b[f"{s}_persistence_by_hour"][-1])
        out.append(
            (skill >= 20, f"{s}: {best} at least 20% below persistence at the 24 h horizon: {skill:.1f}%")
        )
    return out


class Figures:
    """PNGs next to RESULTS.md, written atomically."""

    def __init__(self, folder: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt, self.folder = plt, folder

    def save(self, fig: Any, name: str) -> str:
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        self.plt.close(fig)
        atomic_write(self.folder / name, lambda fh: fh.write(buf.getvalue()))
        return name

    def by_hour(self, split: str, rows: dict[str, dict[str, Any]]) -> str:
        fig, axes = self.plt.subplots(1, 2, figsize=(12, 4.5))
        for ax, s in zip(axes, ("val", "test"), strict=True):
            any_row = next(iter(rows.values()))
            hours = range(1, len(any_row[f"{s}_by_hour"]) + 1)
            for name, r in rows.items():
                ax.plot(hours, [_mean(v) for v in r[f"{s}_by_hour"]], label=name, lw=1.5)
            ax.plot(hours, any_row[f"{s}_persistence_by_hour"], "k--", label="persistence", lw=1.5)
            ax.set(
                title=f"{split}: {s} RMSE per forecast hour", xlabel="forecast hour", ylabel="RMSE (µg/m³)"
            )
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        return self.save(fig, f"{split}_rmse_by_hour.png")

    def curves(self, split: str, rows: dict[str, dict[str, Any]]) -> str:
        fig, ax = self.plt.subplots(figsize=(8, 4.5))
        for name, r in rows.items():
            curves = [run["curve"] for run in r["runs"]]
            steps = [c[0] for c in curves[0]]
            ax.plot(steps, [_mean([c[i][1] for c in curves]) for i in range(len(steps))], label=name, lw=1.5)
        ax.set(
            title=f"{split}: pooled validation RMSE while training (mean over seeds)",
            xlabel="step",
            ylabel="RMSE (µg/m³)",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        return self.save(fig, f"{split}_learning_curves.png")


def _demo_table(demo: list[dict[str, Any]]) -> str:
    lines = [
        "| recipe | steps | val RMSE (all windows) | test RMSE | final step |",
        "|---|---:|---:|---:|---:|",
    ]
    for d in demo:
        cells = [d["recipe"], d["steps"], f"{d['val_rmse']:.2f}", f"{d['test_rmse']:.2f}", d["final_step"]]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def write_results(
    folder: Path, payload: dict[str, Any], header: Callable[[dict[str, Any]], list[str]]
) -> None:
    """RESULTS.md, results.json and the PNGs under `folder` (after every run: partial results survive)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "results.json", json.dumps(payload, indent=1))
    figures = Figures(folder)
    parts = header(payload)
    for split, rows in aggregate(payload["runs"]).items():
        seeds = max(len(r["seeds"]) for r in rows.values())
        parts += [
            f"## Split `{split}`: {SPLIT_NOTES.get(split, split)}",
            "",
            f"Overall (all cities' windows pooled), mean ± std over the row's seeds (up to {seeds}); "
            "per-city columns: test RMSE. 24 h: RMSE at forecast hour 24 and its skill vs persistence "
            "(1 - RMSE / persistence RMSE).",
            "",
            _main_table(split, rows),
            "",
            "Goals (issue 15):",
            "",
            *(f"- [{'x' if ok else ' '}] {text}" for ok, text in goals(rows)),
            "",
            "Per city, validation (RMSE mean ± std / MAE mean):",
            "",
            _city_table(rows, "val"),
            "",
            "Per city, test:",
            "",
            _city_table(rows, "test"),
            "",
            f"![{split}: RMSE per forecast hour]({figures.by_hour(split, rows)})",
            "",
            f"![{split}: learning curves]({figures.curves(split, rows)})",
            "",
        ]
    if payload.get("demo"):
        parts += [
            "## The demo recipe (launch/local/demo.yaml), every validation window",
            "",
            _demo_table(payload["demo"]),
            "",
        ]
    notes = folder / "notes.md"  # hand-written reading of the numbers, kept next to the generated file
    parts += [notes.read_text().rstrip()] if notes.is_file() else []
    atomic_write_text(folder / "RESULTS.md", "\n".join(parts).rstrip() + "\n")


def finite(values: Any) -> bool:
    """Every number in a nested structure is finite (the --quick test's check)."""
    if isinstance(values, dict):
        return all(finite(v) for v in values.values())
    if isinstance(values, list):
        return all(finite(v) for v in values)
    return not isinstance(values, float) or math.isfinite(values)
