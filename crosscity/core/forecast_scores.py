"""RMSE and MAE (with the persistence baseline) from summed errors: pooled exactly over cities.

Torch-free, so ranks, the launcher's summary and reports all pool the same way.
"""

from __future__ import annotations

import math


def pool_metrics(sums: list[dict[str, float]]) -> dict[str, float]:
    """RMSE/MAE from one or several cities' sums."""
    total = {k: sum(s[k] for s in sums) for k in sums[0]}
    count = max(total["count"], 1.0)
    return {
        "rmse": math.sqrt(total["se"] / count),
        "mae": total["ae"] / count,
        "persistence_rmse": math.sqrt(total["p_se"] / count),
        "persistence_mae": total["p_ae"] / count,
        "n_windows": total["n_windows"],
    }
