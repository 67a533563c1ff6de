"""The per-city result table `crosscity run` and `crosscity demo` end with, from summary.json."""

from __future__ import annotations

from typing import Any


def format_summary(summary: dict[str, Any]) -> str:
    """Validation RMSE next to persistence per city, WAN bytes, wall times and the data trained on."""
    rows = [f"{'city':<10}{'samples':>10}{'val RMSE':>11}{'persistence':>13}{'val MAE':>10}   (ug/m3)"]
    for c in summary["cities"]:
        rows.append(
            f"{c['name']:<10}{c['samples']:>10}{c['val_rmse']:>11.2f}"
            f"{c['val_persistence_rmse']:>13.2f}{c['val_mae']:>10.2f}"
        )
    o = summary["overall"]
    rows.append(
        f"{'overall':<10}{sum(c['samples'] for c in summary['cities']):>10}{o['val_rmse']:>11.2f}"
        f"{o['val_persistence_rmse']:>13.2f}{o['val_mae']:>10.2f}"
    )
    train = f", training {summary['train_wall_s']:.0f} s" if "train_wall_s" in summary else ""
    rows.append(
        f"WAN bytes sent: {summary['wan_bytes_sent'] / 1e6:.2f} MB in {summary['wan_rounds']} rounds "
        f"({summary['algorithm']}, codec {summary['codec']});  wall time {summary['wall_s']:.0f} s{train}"
    )
    if summary.get("wan_reduction"):
        rows.append(
            f"flat data parallel would have sent {summary['flat_dp_wan_bytes'] / 1e6:.0f} MB over the WAN: "
            f"{summary['wan_reduction']:.0f}x more"
        )
    if str(summary.get("security", "")).startswith("INSECURE"):
        rows.append("[security] INSECURE run: cities and coordinator talked in plaintext (security.insecure)")
    data = summary.get("dataset")
    if data:
        cities = ", ".join(f"{c} v{v}" for c, v in data["cities"].items())
        rows.append(f"data: {data['data_dir']} dataset version {data['dataset_version']} ({cities})")
    return "\n".join(rows)
