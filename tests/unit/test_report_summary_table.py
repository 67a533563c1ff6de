"""The per-city table `crosscity run` and `crosscity demo` end with (one module for both)."""

from __future__ import annotations

from crosscity.launch.report.summary_table import format_summary

CITY = {"samples": 100, "val_rmse": 30.0, "val_persistence_rmse": 40.0, "val_mae": 20.0}
SUMMARY = {
    "cities": [{"name": "north", **CITY}, {"name": "east", **CITY, "val_rmse": 50.0}],
    "overall": {"val_rmse": 40.0, "val_persistence_rmse": 40.0, "val_mae": 20.0},
    "wan_bytes_sent": 2_000_000,
    "wan_rounds": 5,
    "algorithm": "diloco",
    "codec": "int8",
    "wall_s": 34.2,
    "flat_dp_wan_bytes": 60_000_000,
    "wan_reduction": 30.0,
}


def test_rows_per_city_then_overall_then_wan_and_wall_time() -> None:
    lines = format_summary(SUMMARY).splitlines()
    assert lines[0].split()[:5] == ["city", "samples", "val", "RMSE", "persistence"]
    assert lines[1].split() == ["north", "100", "30.00", "40.00", "20.00"]
    assert lines[2].split()[2] == "50.00" and lines[3].split()[:2] == ["overall", "200"]
    assert lines[4] == "WAN bytes sent: 2.00 MB in 5 rounds (diloco, codec int8);  wall time 34 s"
    assert lines[5] == "flat data parallel would have sent 60 MB over the WAN: 30x more"


def test_training_time_and_the_data_trained_on_when_recorded() -> None:
    summary = {
        **SUMMARY,
        "train_wall_s": 7.8,
        "dataset": {
            "data_dir": "/d",
            "dataset_version": 3,
            "cities": {"north": 2, "east": 3},
            "verify": "full",
        },
    }
    lines = format_summary(summary).splitlines()
    assert lines[4].endswith("wall time 34 s, training 8 s")
    assert lines[-1] == "data: /d dataset version 3 (north v2, east v3)"
