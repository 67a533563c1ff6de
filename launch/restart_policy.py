"""How soon a failed city is started again: by the local launcher and by the Slurm supervisor.

A city that failed after it had trained a while (a kill, a crashed node) comes back at once: every
second it is away costs the run goodput. Failures in a row soon after each start (bad data, a broken
node) back off 1, 2, 4 ... 30 s, so a crash loop does not spin; `train.max_city_restarts` bounds both.
"""

from __future__ import annotations

HEALTHY_S = 60.0  # a city that ran this long since its start failed "out of the blue"


def failure_streak(streak: int, ran_s: float) -> int:
    """Failures in a row, each within HEALTHY_S of its start, counting this one."""
    return 1 if ran_s >= HEALTHY_S else streak + 1


def restart_delay(streak: int) -> float:
    """Seconds before the restart after the `streak`-th failure in a row: 0, 1, 2, 4 ... 30."""
    return 0.0 if streak <= 1 else min(2.0 ** (streak - 2), 30.0)
