"""This machine, as the local launcher's preflight sees it (launch/preflight.py): torch is imported here
anyway (the launcher hosts the store), so ask it; Horovod is importable only if its torch ops load."""

from __future__ import annotations

import torch


class ThisHost:
    def has_cuda(self) -> bool | None:
        return torch.cuda.is_available()

    def horovod_problem(self) -> str | None:
        try:
            import horovod.torch  # noqa: F401
        except ImportError as exc:
            return str(exc)
        return None
