"""When the cities meet: one step clock for warm-up, rounds, fragments and the stop vote.

Step s (1-based, counted after the inner optimizer step) is a warm-up round when s <= W. After the
warm-up, fragment f of F starts a round when (s - W) % H == phase(f), phase(f) = ((f + 1) H // F) % H:
with F = 1 that is every H-th step after the warm-up (s = W + H, W + 2H, ...); with F > 1 the
fragments start at staggered steps of the same H-step cycle (Streaming DiLoCo).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoundClock:
    every: int  # H: inner steps between two rounds of the same fragment
    warmup: int = 0  # W: steps that each end with a full synchronous round
    fragments: int = 1  # F: parameter fragments on staggered clocks (streaming)

    def phase(self, fragment: int) -> int:
        return ((fragment + 1) * self.every // self.fragments) % self.every

    def in_warmup(self, step: int) -> bool:
        return step <= self.warmup

    def fragments_due(self, step: int) -> list[int]:
        """Fragments whose post-warm-up round starts at this step."""
        if self.in_warmup(step):
            return []
        at = (step - self.warmup) % self.every
        return [f for f in range(self.fragments) if self.phase(f) == at]

    def is_round(self, step: int) -> bool:
        """Something crosses the WAN at this step: a warm-up round or a fragment's round."""
        return self.in_warmup(step) or bool(self.fragments_due(step))


@dataclass(frozen=True)
class PytorchAveragerClock(RoundClock):
    """PyTorch's post-local SGD averager's own clock, kept as PyTorch has it: a 0-based call counter
    averages when counter >= W and counter % H == 0, i.e. after inner steps 1, H+1, 2H+1, ... past W,
    with no synchronous warm-up of its own."""

    def in_warmup(self, step: int) -> bool:
        return False

    def fragments_due(self, step: int) -> list[int]:
        counter = step - 1
        return [0] if counter >= self.warmup and counter % self.every == 0 else []
