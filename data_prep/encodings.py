"""Categorical columns -> stored features: an angle (sin, cos, optional calm flag) or a one-hot list.

A "calm" code (wind `cv`: calm/variable) or an "other" code is a state of its own, observed like any
other value: calm is sin = cos = 0 with `NAME_calm` = 1, never "missing" (which the reader would
forward-fill with the previous direction). Missing tokens leave every output of the cell unobserved.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crosscity.data_prep.errors import SchemaError

COMPASS_POINTS = (
    "N",
    "NNE",
    "NE",
    "ENE",
    "E",
    "ESE",
    "SE",
    "SSE",
    "S",
    "SSW",
    "SW",
    "WSW",
    "W",
    "WNW",
    "NW",
    "NNW",
)
COMPASS16 = {p: i * 22.5 for i, p in enumerate(COMPASS_POINTS)}
NAMED_MAPS = ("compass16", "degrees")
ALLOWED = (
    "compass16, degrees, {map: compass16|degrees|{CODE: DEGREES, ...}, calm?: [CODE, ...]} "
    "or {one_hot: [CODE, ...], other?: [CODE, ...] or '*'}"
)


@dataclass(frozen=True)
class Encoding:
    """One categorical column's codes. `angles` None = the cells are numbers in degrees."""

    one_hot: tuple[str, ...] = ()
    other: frozenset[str] = frozenset()
    any_other: bool = False  # one-hot: every unlisted code is `other`
    angles: Mapping[str, float] | None = None
    calm: frozenset[str] = frozenset()

    @property
    def is_angle(self) -> bool:
        return not self.one_hot

    def outputs(self, name: str) -> list[str]:
        if self.is_angle:
            return [f"{name}_sin", f"{name}_cos", *([f"{name}_calm"] if self.calm else [])]
        has_other = self.other or self.any_other
        return [*(f"{name}_{c}" for c in self.one_hot), *([f"{name}_other"] if has_other else [])]

    def describe(self) -> str:
        if not self.is_angle:
            other = " or any other code" if self.any_other else "".join(f" {c}" for c in sorted(self.other))
            return f"one of {' '.join(self.one_hot)}{other}"
        codes = "an angle in degrees" if self.angles is None else " ".join(self.angles)
        calm = f", calm: {' '.join(sorted(self.calm))}" if self.calm else ""
        return f"{codes}{calm}"

    def encode(
        self, cells: tuple[str, ...], tokens: frozenset[str]
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """(values [n, outputs] float64, observed [n], indexes of cells that are no allowed code)."""
        return self._angles(cells, tokens) if self.is_angle else self._one_hot(cells, tokens)

    def _angles(
        self, cells: tuple[str, ...], tokens: frozenset[str]
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        n = len(cells)
        angle = np.zeros(n)
        observed = np.zeros(n, dtype=bool)
        calm = np.zeros(n, dtype=bool)
        bad = []
        for i, cell in enumerate(cells):
            if cell in tokens:
                continue
            code = cell.strip()
            if code in self.calm:
                calm[i] = observed[i] = True
                continue
            a = self.angles.get(code) if self.angles is not None else _degrees(code)
            if a is None:
                bad.append(i)
                continue
            angle[i], observed[i] = a, True
        rad = np.deg2rad(angle)
        columns = [np.where(calm, 0.0, np.sin(rad)), np.where(calm, 0.0, np.cos(rad))]
        if self.calm:
            columns.append(calm.astype(np.float64))
        return np.stack(columns, axis=1), observed, bad

    def _one_hot(
        self, cells: tuple[str, ...], tokens: frozenset[str]
    ) -> tuple[np.ndarray, np.ndarray, list[int]]:
        width = len(self.outputs(""))
        values = np.zeros((len(cells), width))
        observed = np.zeros(len(cells), dtype=bool)
        position = {c: k for k, c in enumerate(self.one_hot)}
        bad = []
        for i, cell in enumerate(cells):
            if cell in tokens:
                continue
            code = cell.strip()
            k = position.get(code)
            if k is None and (code in self.other or self.any_other):
                k = width - 1
            if k is None:
                bad.append(i)
                continue
            values[i, k], observed[i] = 1.0, True
        return values, observed, bad


def _degrees(cell: str) -> float | None:
    try:
        value = float(cell)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _codes(path: Path, key: str, value: Any) -> list[str]:
    """A list of codes; YAML turns unquoted NO/ON/Y... into booleans and 1.5 into floats: ask for quotes."""
    if not isinstance(value, list) or not value:
        raise SchemaError.at(path, key, value, "a non-empty list of codes")
    for code in value:
        if isinstance(code, bool) or not isinstance(code, (str, int)):
            raise SchemaError.at(path, key, code, "a code as a string (quote it, e.g. 'NO')")
    codes = [str(c) for c in value]
    if len(set(codes)) != len(codes):
        raise SchemaError.at(path, key, value, "each code once")
    return codes


def _angle_map(path: Path, key: str, value: Any) -> Mapping[str, float] | None:
    if value == "compass16":
        return COMPASS16
    if value == "degrees":
        return None
    if not isinstance(value, dict) or not value:
        raise SchemaError.at(path, key, value, "compass16, degrees or a mapping {CODE: DEGREES, ...}")
    angles = {}
    for code, degrees in value.items():
        _codes(path, key, [code])
        if isinstance(degrees, bool) or not isinstance(degrees, (int, float)) or not math.isfinite(degrees):
            raise SchemaError.at(path, f"{key}.{code}", degrees, "an angle in degrees (a number)")
        angles[str(code)] = float(degrees)
    return angles


def parse_encoding(path: Path, key: str, value: Any, missing_tokens: frozenset[str]) -> Encoding:
    """The `encoding` of one categorical entry; SchemaError names the key and what is allowed."""
    if isinstance(value, str) and value in NAMED_MAPS:
        return Encoding(angles=_angle_map(path, key, value))
    if not isinstance(value, dict):
        raise SchemaError.at(path, key, value, ALLOWED)
    if set(value) <= {"map", "calm"} and "map" in value:
        angles = _angle_map(path, f"{key}.map", value["map"])
        calm = frozenset(_codes(path, f"{key}.calm", value["calm"])) if "calm" in value else frozenset()
        clash = sorted(calm & (set(angles or ()) | missing_tokens))
        if clash:
            raise SchemaError.at(
                path, f"{key}.calm", clash[0], "calm codes that are no angle code or missing token"
            )
        return Encoding(angles=angles, calm=calm)
    if set(value) <= {"one_hot", "other"} and "one_hot" in value:
        one_hot = tuple(_codes(path, f"{key}.one_hot", value["one_hot"]))
        other = value.get("other", [])
        any_other = other == "*"
        others = frozenset() if any_other or other == [] else frozenset(_codes(path, f"{key}.other", other))
        clash = sorted((others | set(one_hot)) & missing_tokens) or sorted(others & set(one_hot))
        if clash:
            raise SchemaError.at(path, key, clash[0], "each code in one list, none a missing token")
        return Encoding(one_hot=one_hot, other=others, any_other=any_other)
    raise SchemaError.at(path, key, value, ALLOWED)
