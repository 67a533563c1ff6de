"""The plausibility report: percentiles and share missing per feature, sentinel-like values flagged,
real tails and binary columns left alone, memory bounded."""

from __future__ import annotations

import numpy as np

from crosscity.data_prep.plausibility import SAMPLE_CAP, Plausibility, flag_lines, table

RNG = np.random.default_rng(0)


def tally(columns: dict[str, np.ndarray], chunk: int = 4096) -> dict:
    p = Plausibility()
    values = np.stack(list(columns.values()), axis=1)
    mask = np.isfinite(values)
    for start in range(0, len(values), chunk):
        sl = slice(start, start + chunk)
        p.add(list(columns), np.nan_to_num(values[sl]), mask[sl], np.arange(len(values))[sl])
    return p.report(lambda src: f"in.csv:{src + 2}")


def test_summary_and_share_missing() -> None:
    x = RNG.normal(20, 5, 100_000)
    x[::10] = np.nan
    r = tally({"temp": x})["temp"]
    assert abs(r["missing_share"] - 0.1) < 1e-9 and r["observed"] == 90_000 and r["rows"] == 100_000
    assert abs(r["p50"] - 20) < 0.2 and r["p1"] < r["p50"] < r["p99"] and r["min"] == np.nanmin(x)
    assert r["flags"] == []
    assert "temp" in table({"temp": r})


def test_sentinels_are_flagged_with_count_and_first_line() -> None:
    temp = RNG.normal(10, 8, 50_000)
    temp[1000::997] = -9999  # a typical missing code
    pres = RNG.normal(1010, 8, 50_000)
    pres[[7, 70, 700]] = 999990
    pm = np.abs(RNG.normal(60, 40, 50_000))
    pm[5::400] = 4321.0  # not a code, but one value repeated far outside the rest
    report = tally({"temp": temp, "pres": pres, "pm": pm})
    flags = {name: r["flags"] for name, r in report.items()}
    assert [(f["value"], f["count"], f["first"]) for f in flags["temp"]] == [(-9999, 50, "in.csv:1002")]
    assert [(f["value"], f["count"]) for f in flags["pres"]] == [(999990, 3)]
    assert [(f["value"], f["count"]) for f in flags["pm"]] == [(4321.0, 125)]
    assert "a typical missing-value code" in flags["temp"][0]["reason"]
    lines = flag_lines(report)
    assert lines[0].startswith("temp: value -9999 appears 50 times (first at in.csv:1002)")


def test_heavy_tails_binary_and_one_hot_columns_are_not_flagged() -> None:
    rain = np.where(RNG.random(80_000) < 0.95, 0.0, np.round(RNG.exponential(3, 80_000), 1))
    rain[[10, 20, 30]] = 72.5  # a real storm at three nearby stations: part of a continuous tail
    calm = (RNG.random(80_000) < 0.1).astype(float)
    pm = np.round(np.abs(RNG.normal(55, 80, 80_000)))
    pm[[5, 6]] = 999  # an analyser's cap, not a missing code
    assert all(r["flags"] == [] for r in tally({"rain": rain, "calm": calm, "pm": pm}).values())


def test_the_sample_stays_bounded() -> None:
    p = Plausibility()
    for k in range(40):
        x = RNG.normal(0, 1, (10_000, 1))
        p.add(["x"], x, np.ones_like(x, dtype=bool), np.arange(10_000) + 10_000 * k)
    t = p.tallies["x"]
    assert t.observed == 400_000 and t.sampled <= SAMPLE_CAP and len(t.ends) <= 32
