"""How the flat parameter vector is cut: F fragments (streaming; 1 otherwise), each into R stripes.

Stripe k of every fragment travels on local rank k's connection, so a city moves its update over R
parallel streams; the same cut on both sides tells the receiver the exact shape of every array.
"""

from __future__ import annotations

from dataclasses import dataclass


def stripe_bounds(numel: int, parts: int, index: int) -> tuple[int, int]:
    """[start, end) of part `index` when `numel` values are split into `parts` near-equal parts."""
    base, extra = divmod(numel, parts)
    start = index * base + min(index, extra)
    return start, start + base + (1 if index < extra else 0)


@dataclass(frozen=True)
class Layout:
    numel: int  # flat parameter count
    fragments: int
    stripes: int  # ranks per city

    def fragment(self, f: int) -> tuple[int, int]:
        return stripe_bounds(self.numel, self.fragments, f)

    def fragment_size(self, f: int) -> int:
        a, b = self.fragment(f)
        return b - a

    def stripe(self, f: int, k: int) -> tuple[int, int]:
        """[start, end) of stripe k inside fragment f (fragment-relative)."""
        return stripe_bounds(self.fragment_size(f), self.stripes, k)

    def stripe_size(self, f: int, k: int) -> int:
        a, b = self.stripe(f, k)
        return b - a
