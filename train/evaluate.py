"""Validation in ug/m3: the model next to the persistence baseline on the very same windows."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 512,
    max_windows: int = 0,
    part: int = 0,
    parts: int = 1,
) -> dict[str, float]:
    """Sums, not means, so cities can be pooled exactly later (`pool_metrics`), and so the ranks of a
    city can each evaluate every `parts`-th window (`part` is the first) and add their sums up."""
    was_training = model.training
    model.eval()
    n = len(dataset) if max_windows <= 0 else min(len(dataset), max_windows)
    # Evenly spaced windows when capped, so a quick run still covers the whole validation span.
    indexes = (
        list(range(n))
        if n == len(dataset)
        else [round(i * (len(dataset) - 1) / max(n - 1, 1)) for i in range(n)]
    )[part::parts]
    mean, std, target_index = dataset.target_mean, dataset.target_std, dataset.target_index
    sums = {"se": 0.0, "ae": 0.0, "p_se": 0.0, "p_ae": 0.0, "count": 0.0}
    for start in range(0, len(indexes), batch_size):
        items = [dataset[i] for i in indexes[start : start + batch_size]]
        device = next(model.parameters(), torch.empty(0)).device
        x, y, mask = (torch.stack(parts).to(device) for parts in zip(*items, strict=True))
        pred = model(x) * std + mean
        truth = y * std + mean
        persistence = (x[:, -1, target_index] * std + mean).unsqueeze(1).expand_as(truth)
        for prefix, guess in (("", pred), ("p_", persistence)):
            err = (guess - truth) * mask
            sums[prefix + "se"] += float((err**2).sum())
            sums[prefix + "ae"] += float(err.abs().sum())
        sums["count"] += float(mask.sum())
    model.train(was_training)
    return {**sums, "n_windows": float(len(indexes))}
