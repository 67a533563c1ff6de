"""Categorical encodings: angle maps with a calm state, degrees, one-hot lists with `other`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crosscity.data_prep.encodings import COMPASS16, parse_encoding

PATH = Path("s.yaml")
NONE = frozenset({"NA"})


def test_compass16_keeps_the_old_encoding() -> None:
    enc = parse_encoding(PATH, "e", "compass16", NONE)
    values, observed, bad = enc.encode(("N", "E", "NA", "SSW", "?"), NONE)
    assert enc.outputs("wd") == ["wd_sin", "wd_cos"] and bad == [4]
    assert observed.tolist() == [True, True, False, True, False]
    rad = np.deg2rad([0, 90, 0, COMPASS16["SSW"], 0])
    np.testing.assert_array_equal(values, np.stack([np.sin(rad), np.cos(rad)], axis=1))


def test_a_code_map_with_calm_as_its_own_observed_state() -> None:
    enc = parse_encoding(PATH, "e", {"map": {"NE": 45, "NW": 315}, "calm": ["cv"]}, NONE)
    values, observed, bad = enc.encode(("NE", "cv", "NA", "NW", "SE"), NONE)
    assert enc.outputs("wd") == ["wd_sin", "wd_cos", "wd_calm"] and bad == [4]
    assert observed.tolist() == [True, True, False, True, False]
    np.testing.assert_allclose(values[0], [np.sqrt(0.5), np.sqrt(0.5), 0], atol=1e-12)
    np.testing.assert_array_equal(values[1], [0, 0, 1])  # calm: no direction, calm flag set
    np.testing.assert_allclose(values[3], [-np.sqrt(0.5), np.sqrt(0.5), 0], atol=1e-12)
    assert "NE NW, calm: cv" in enc.describe()


def test_degrees_with_a_calm_code() -> None:
    enc = parse_encoding(PATH, "e", {"map": "degrees", "calm": ["C"]}, NONE)
    values, observed, bad = enc.encode(("90", "C", "nan", "x"), NONE)
    assert observed.tolist() == [True, True, False, False] and bad == [2, 3]
    np.testing.assert_allclose(values[:2], [[1, 0, 0], [0, 0, 1]], atol=1e-12)


@pytest.mark.parametrize(("other", "known"), [(["fog", "haze"], "fog"), ("*", "anything")])
def test_one_hot_with_an_other_state(other, known) -> None:
    enc = parse_encoding(PATH, "e", {"one_hot": ["rain", "snow"], "other": other}, NONE)
    values, observed, bad = enc.encode(("snow", known, "NA", "rain"), NONE)
    assert enc.outputs("sky") == ["sky_rain", "sky_snow", "sky_other"] and bad == []
    np.testing.assert_array_equal(values, [[0, 1, 0], [0, 0, 1], [0, 0, 0], [1, 0, 0]])
    assert observed.tolist() == [True, True, False, True]


def test_one_hot_without_other_refuses_unlisted_codes() -> None:
    enc = parse_encoding(PATH, "e", {"one_hot": ["rain", "snow"]}, NONE)
    assert enc.outputs("sky") == ["sky_rain", "sky_snow"]
    assert enc.encode(("hail",), NONE)[2] == [0]
