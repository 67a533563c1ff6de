"""The rows of the quality benchmark: how the same recipe and sample budget is laid out over cities.

- pooled: every station in one city, topology.cities x ranks_per_city ranks (the same total batch):
  what a federated system tries to reach;
- per-city: each city alone with its own ranks (same per-rank batch and steps): what a city gets
  without cooperating;
- federated rows: the cities together, one row per method; a row is nothing but config overrides,
  so a variant (another outer_lr, ...) joins with `--row NAME KEY=VALUE ...`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# FedProx's mu: 0.01 was the best of 0, 0.01, 0.1, 1 in a 900-step probe on the hard split
# (docs/model_quality.md); the hard split also runs 10x that.
PROX_MU = (0.01, 0.1)
# FedAdam: diloco+int8+ef with the adaptive outer step instead of Nesterov; its outer_lr is a step per
# coordinate and round, tau the default 1e-3. 0.03 was the best of 0.01, 0.03, 0.1 (which diverged) in
# a 600-step probe on the hard split; FedYogi was within 0.1 ug/m3 of FedAdam there, so it has no row
# (docs/model_quality.md).
ADAPTIVE_LR = 0.03
DILOCO_INT8 = ("wan.algorithm=diloco", "wan.codec=int8", "wan.error_feedback=true")


@dataclass(frozen=True)
class Row:
    name: str
    layout: Literal["pooled", "per_city", "federated"]
    overrides: tuple[str, ...] = ()


POOLED = Row("pooled", "pooled", ("wan.algorithm=flat", "security.insecure=true"))
PER_CITY = Row("per-city", "per_city", ("wan.algorithm=flat", "security.insecure=true"))
# The WAN bench's recommendations (bench/wan/RESULTS.md): diloco with int8 (the demo's codec) and
# streaming with int4 + error feedback on 2 fragments (its best method); merge=fixed (at start + tau)
# instead of its when_ready keeps streaming deterministic.
FEDERATED = {
    "average": ("wan.algorithm=average",),
    "diloco+int8+ef": DILOCO_INT8,
    "streaming+int4+ef": (
        "wan.algorithm=streaming",
        "wan.codec=int4",
        "wan.error_feedback=true",
        "wan.fragments=2",
        "wan.merge=fixed",
    ),
    **{f"fedprox-{mu}": ("wan.algorithm=average", f"wan.prox_mu={mu}") for mu in PROX_MU},
    # SCAFFOLD's control variates on the demo's diloco+int8+ef: c and delta c_i travel int8 too
    "scaffold": (*DILOCO_INT8, "wan.scaffold=true"),
    "fedadam": (*DILOCO_INT8, "wan.outer_optimizer=adam", f"wan.outer_lr={ADAPTIVE_LR}"),
}
STRATEGIES = ("scaffold", "fedadam")  # issue 15's non-IID strategies, on both splits
ROWS = {
    "standard": [
        POOLED,
        PER_CITY,
        *(Row(n, "federated", FEDERATED[n]) for n in ("average", "diloco+int8+ef", "streaming+int4+ef")),
        Row("fedprox-0.01", "federated", FEDERATED["fedprox-0.01"]),
        *(Row(n, "federated", FEDERATED[n]) for n in STRATEGIES),
    ],
    "hard": [
        POOLED,
        PER_CITY,
        *(
            Row(n, "federated", FEDERATED[n])
            for n in ("average", "diloco+int8+ef", "fedprox-0.01", "fedprox-0.1", *STRATEGIES)
        ),
    ],
    "quick": [POOLED, PER_CITY, *(Row(n, "federated", FEDERATED[n]) for n in ("average", "fedprox-0.01"))],
}


def extra_row(spec: list[str]) -> Row:
    """`--row NAME KEY=VALUE ...`: one more federated row."""
    name, *overrides = spec
    bad = [o for o in overrides if "=" not in o]
    if not overrides or bad:
        raise ValueError(
            f"--row {' '.join(spec)}: expected NAME KEY=VALUE ..., e.g. --row fedadam-0.03 "
            "wan.algorithm=diloco wan.outer_optimizer=adam wan.outer_lr=0.03"
        )
    return Row(name, "federated", tuple(overrides))
