"""The windowed reader and the rank sampler on real (cut) Beijing data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from crosscity.data_prep.prepare import prepare
from crosscity.data_prep.shards import read_shard
from crosscity.train.data.windows import CityWindows, RankSampler, split_ranges
from tests.helpers.data import PRESET_SCHEMA, small_cities, small_inputs

PAST, HORIZON = 24, 12


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("win")
    prepare(PRESET_SCHEMA, small_cities(tmp), tmp / "data", small_inputs(tmp, rows=2000), progress=False)
    return tmp / "data"


def windows(root, split="train", **kw):
    return CityWindows(root / "north", split, past=PAST, horizon=HORIZON, **kw)


def test_item_shapes_and_normalisation(root):
    ds = windows(root)
    x, y, y_mask = ds[0]
    assert x.shape == (PAST, ds.n_inputs) and y.shape == y_mask.shape == (HORIZON,)
    assert x.dtype == y.dtype == y_mask.dtype == torch.float32
    assert ds.n_inputs == len(ds.feature_names) == 13 * 2 + 4
    assert ds.feature_names[ds.target_index] == "PM2.5"
    # y de-normalises to the stored PM2.5 values of the station
    station, start = ds.index[0]
    rows = read_shard(root / "north" / "Changping_2013.v1.h5")
    raw = rows.values[start + PAST : start + PAST + HORIZON, 0]
    obs = rows.mask[start + PAST : start + PAST + HORIZON, 0]
    np.testing.assert_array_equal(y_mask.numpy(), obs.astype(np.float32))
    np.testing.assert_allclose((y * ds.target_std + ds.target_mean).numpy()[obs], raw[obs], rtol=1e-5)


def test_persistence_input_is_last_observed_target(root):
    ds = windows(root, fill_hours=3)
    rows = read_shard(root / "north" / "Changping_2013.v1.h5")
    checked = 0
    for i in range(len(ds)):
        station, start = ds.index[i]
        if ds.stations[station] != 0:
            continue
        last = start + PAST - 1
        x, _, _ = ds[i]
        seen = np.flatnonzero(rows.mask[: last + 1, 0])
        gap = last - seen[-1] if seen.size else 10**9
        want = (rows.values[seen[-1], 0] - ds.target_mean) / ds.target_std if gap <= 3 else 0.0
        assert float(x[-1, ds.target_index]) == pytest.approx(want, abs=1e-5)
        checked += gap > 0
    assert checked > 0  # some windows did end in a filled gap


def test_splits_are_disjoint_in_time_with_a_gap(root):
    span = PAST + HORIZON
    spans = {}
    for split in ("train", "val", "test"):
        ds = windows(root, split)
        assert len(ds) > 0
        spans[split] = (ds.index[:, 1].min(), ds.index[:, 1].max() + span)
    assert spans["val"][0] - spans["train"][1] >= span
    assert spans["test"][0] - spans["val"][1] >= span
    assert split_ranges(2000, span, (0.8, 0.1, 0.1)) == {
        "train": (0, 1600),
        "val": (1636, 1800),
        "test": (1836, 2000),
    }


def test_windows_never_cross_stations_and_respect_max_missing(root):
    ds = windows(root, max_missing=0.0)
    loose = windows(root, max_missing=1.0)
    assert len(ds) + ds.dropped_windows == len(loose) + loose.dropped_windows
    assert len(ds) < len(loose)
    assert (ds.index[:, 1] + PAST + HORIZON <= 1600).all()  # inside one station's train range
    for i in range(0, len(ds), 97):
        assert float(ds[i][2].sum()) == HORIZON  # max_missing=0: every target hour observed


def test_global_stats_differ_from_city_stats(root):
    city, glob = windows(root), windows(root, stats="global")
    assert city.target_mean != glob.target_mean
    assert len(city) == len(glob)


def test_dataloader_with_two_fork_workers_matches_in_process(root):
    ds = windows(root)
    ds[0]  # the parent loads the city before forking: workers must still work (no shared HDF5 handle)
    sampler = RankSampler(len(ds), rank=0, world=1, seed=3)
    serial = torch.utils.data.DataLoader(ds, batch_size=32, sampler=sampler)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=32, sampler=sampler, num_workers=2, multiprocessing_context="fork"
    )
    for a, b in itertools.islice(zip(serial, loader, strict=False), 12):
        for ta, tb in zip(a, b, strict=True):
            torch.testing.assert_close(ta, tb)


def test_rank_sampler_partitions_and_shuffles_per_epoch():
    samplers = [RankSampler(103, rank, 4, seed=7) for rank in range(4)]
    parts = [list(s) for s in samplers]
    assert all(len(p) == 25 == len(s) for p, s in zip(parts, samplers, strict=True))
    flat = [i for p in parts for i in p]
    assert len(set(flat)) == 100 and set(flat) <= set(range(103))
    assert parts[0] == list(RankSampler(103, 0, 4, seed=7))  # deterministic
    samplers[0].set_epoch(1)
    assert list(samplers[0]) != parts[0]
    assert list(RankSampler(103, 0, 4, seed=7, shuffle=False)) == list(range(0, 100, 4))


def test_rank_sampler_resumes_exactly_mid_epoch():
    s = RankSampler(50, 1, 2, seed=1)
    s.set_epoch(2)
    full = list(s)
    it = iter(s)
    head = [next(it) for _ in range(9)]
    state = s.state_dict()
    resumed = RankSampler(50, 1, 2, seed=1)
    resumed.load_state_dict(state)
    assert head + list(resumed) == full
    assert list(resumed) == full  # the following pass of the same epoch starts from the beginning
    with pytest.raises(ValueError, match="does not match"):
        RankSampler(50, 0, 2, seed=1).load_state_dict(state)


def test_fill_hours_per_column_and_one_value_for_all_on_request(tmp_path):
    schema = tmp_path / "schema.yaml"
    text = PRESET_SCHEMA.read_text().replace("encoding: compass16}", "encoding: compass16, fill_hours: 0}")
    schema.write_text(text)
    inputs = small_inputs(tmp_path, rows=2000, start=5000)  # wind direction is missing at 5107, 5110-5111
    prepare(schema, small_cities(tmp_path), tmp_path / "data", inputs, progress=False)
    city = tmp_path / "data" / "north"
    ds = CityWindows(city, "train", past=PAST, horizon=HORIZON)
    assert ds.fill_hours.tolist() == [3] * 11 + [0, 0]  # wind direction is never carried forward
    assert (
        CityWindows(city, "train", past=PAST, horizon=HORIZON, fill_hours=5).fill_hours.tolist() == [5] * 13
    )
    grid = ds._load()[0]["inputs"]  # Changping's hours from its first row
    rows = read_shard(city / "Changping_2013.v1.h5")
    for name, filled in (("wd_sin", False), ("PM2.5", True)):
        j = ds.features.index(name)
        gaps = np.flatnonzero(~rows.mask[1:, j] & rows.mask[:-1, j]) + 1  # missing right after observed
        assert gaps.size, name
        np.testing.assert_array_equal(grid[gaps, j], grid[gaps - 1, j] if filled else 0.0)
