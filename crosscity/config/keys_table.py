"""The README's table of config keys, generated from the sections and their bounds.

python -m crosscity.config.keys_table     # paste the output into README.md (a test compares)
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import Literal

from crosscity.config.rules import BOUNDS, SLURM_BOUNDS
from crosscity.config.sections import Config, field_types


def _allowed(key: str, tp: object) -> str:
    if typing.get_origin(tp) is Literal:
        return " \\| ".join(map(str, typing.get_args(tp)))
    name = getattr(tp, "__name__", str(tp))
    section, field = key.split(".")
    bound = SLURM_BOUNDS.get(field) if section == "slurm" else BOUNDS.get(key)
    return f"{name} {bound}" if bound else name


def keys_table() -> str:
    """Markdown table of every key, its default and what is allowed (the README's config section)."""
    rows = ["| key | default | allowed / meaning |", "|---|---|---|"]
    for section, cls in field_types(Config).items():
        comments = dict(re.findall(r"^\s+(\w+): .*?#\s*(.*)$", inspect.getsource(cls), re.M))
        for name, tp in field_types(cls).items():
            key = f"{section}.{name}"
            note = f"; {comments[name]}" if name in comments else ""
            rows.append(f"| `{key}` | `{getattr(cls(), name)}` | {_allowed(key, tp)}{note} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(keys_table(), end="")
