"""Merge incoming rows of one shard key with the rows already stored (change data capture).

A row identical to a stored one is a no-op (so appending the same file twice adds nothing); a row
that differs for an existing (station, time) is a conflict, resolved by the policy: `error` raises
ConflictError naming the input file:line, `replace` keeps the newest input row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from crosscity.data_prep.errors import ConflictError
from crosscity.data_prep.shards import ShardRows


@dataclass
class MergeCounts:
    added: int = 0
    replaced: int = 0
    unchanged: int = 0  # rows already stored with identical values
    input_duplicates: int = 0  # identical rows given twice in the input

    def __iadd__(self, other: MergeCounts) -> MergeCounts:
        for key in vars(self):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        return self


def _same(a_values: np.ndarray, a_mask: np.ndarray, b_values: np.ndarray, b_mask: np.ndarray) -> np.ndarray:
    return (a_mask == b_mask).all(axis=1) & (a_values == b_values).all(axis=1)


def _when(t: int) -> str:
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%d %H:%M")


def merge_rows(
    existing: ShardRows | None,
    time: np.ndarray,
    values: np.ndarray,
    mask: np.ndarray,
    src: np.ndarray,
    *,
    policy: str,
    where: Callable[[int], str],
    label: str,
) -> tuple[ShardRows | None, MergeCounts]:
    """Returns (merged rows or None when nothing changed, counts). `where(src)` renders file:line."""
    counts = MergeCounts()
    order = np.argsort(time, kind="stable")
    time, values, mask, src = time[order], values[order], mask[order], src[order]
    # duplicates inside the input: keep the last occurrence of each time
    last = np.r_[time[1:] != time[:-1], True]
    group_last = np.flatnonzero(last)[np.cumsum(np.r_[0, last[:-1]])]
    same = _same(values, mask, values[group_last], mask[group_last])
    differ = np.flatnonzero(~same)
    if differ.size and policy == "error":
        i, j = differ[0], group_last[differ[0]]
        raise ConflictError(
            f"{where(src[i])} and {where(src[j])}: two different rows for {label} at {_when(time[i])} "
            "(on_conflict=error; use --on-conflict replace to keep the later one)"
        )
    counts.input_duplicates = int((~last & same).sum())
    counts.replaced += int((~last & ~same).sum())
    time, values, mask, src = time[last], values[last], mask[last], src[last]
    if existing is None or len(existing) == 0:
        counts.added = int(time.size)
        return (ShardRows(time, values, mask) if time.size else None), counts
    pos = np.clip(np.searchsorted(existing.time, time), 0, len(existing) - 1)
    known = existing.time[pos] == time
    same = known & _same(values, mask, existing.values[pos], existing.mask[pos])
    conflict = np.flatnonzero(known & ~same)
    if conflict.size and policy == "error":
        i = conflict[0]
        raise ConflictError(
            f"{where(src[i])}: row for {label} at {_when(time[i])} differs from the stored row "
            "(on_conflict=error; use --on-conflict replace to overwrite it)"
        )
    counts.unchanged = int(same.sum())
    counts.replaced += int(conflict.size)
    new = ~known
    counts.added = int(new.sum())
    if not conflict.size and not new.any():
        return None, counts
    ex_values, ex_mask = existing.values.copy(), existing.mask.copy()
    ex_values[pos[conflict]], ex_mask[pos[conflict]] = values[conflict], mask[conflict]
    all_time = np.concatenate([existing.time, time[new]])
    order = np.argsort(all_time, kind="stable")
    return (
        ShardRows(
            all_time[order],
            np.concatenate([ex_values, values[new]])[order],
            np.concatenate([ex_mask, mask[new]])[order],
        ),
        counts,
    )
