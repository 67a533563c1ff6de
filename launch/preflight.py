"""Host checks before any rank starts: does this host offer what the (already valid) config asks for?

The config's rules say what a config may be; only the launcher knows the host. `crosscity run` and
`crosscity demo` ask the host they run on (launch/local/host.py: torch's CUDA, an importable Horovod);
`crosscity submit` and `sweep` run on a login node that cannot see the compute nodes' GPUs, so they ask
only what it can tell without torch (Horovod installed) and leave GPUs to the config's Slurm rules.
Either way a miss is one line and exit code 2, before anything is scheduled.
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

from crosscity.config import Config


class HostError(RuntimeError):
    """This host cannot run the config; the message says what is missing and what to do instead."""


class Host(Protocol):
    def has_cuda(self) -> bool | None:
        """Whether torch can use a CUDA device here; None when this host cannot tell."""

    def horovod_problem(self) -> str | None:
        """Why Horovod cannot be used here, or None when it can."""


class LoginNode:
    """A Slurm login node: compute-node GPUs are not visible, and torch is not imported to ask."""

    def has_cuda(self) -> bool | None:
        return None

    def horovod_problem(self) -> str | None:
        return None if importlib.util.find_spec("horovod") else "No module named 'horovod'"


def check_host(cfg: Config, host: Host) -> None:
    """Raise HostError when `host` lacks the CUDA device or the Horovod the config needs."""
    cuda = [f"train.device={cfg.train.device!r}"] if cfg.train.device == "cuda" else []
    cuda += [f"lan.backend={cfg.lan.backend!r}"] if cfg.lan.backend == "nccl" else []
    if cuda and host.has_cuda() is False:
        raise HostError(
            f"{cuda[0]}: this host has no CUDA device torch can use "
            "(torch.cuda.is_available() is False); use train.device=cpu or auto and lan.backend=gloo"
        )
    if cfg.lan.backend == "horovod":
        problem = host.horovod_problem()
        if problem:
            raise HostError(
                f"lan.backend='horovod': horovod is not importable ({problem}); build it into the venv with "
                "`bash .ci/build-horovod.sh` (Horovod 0.28.1 with torch >= 2.1, see docs/horovod.md)"
            )
