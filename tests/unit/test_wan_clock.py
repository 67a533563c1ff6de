"""One round clock for every algorithm: warm-up, rounds, staggered fragments, PyTorch's own counter."""

from __future__ import annotations

from crosscity.train.wan.clock import PytorchAveragerClock, RoundClock


def rounds(clock: RoundClock, steps: int = 20) -> list[int]:
    return [s for s in range(1, steps + 1) if clock.is_round(s)]


def test_warmup_then_every_h_steps() -> None:
    assert rounds(RoundClock(every=5, warmup=3)) == [1, 2, 3, 8, 13, 18]
    assert rounds(RoundClock(every=1)) == list(range(1, 21))


def test_fragments_start_at_staggered_steps_of_one_cycle() -> None:
    clock = RoundClock(every=4, warmup=2, fragments=2)
    due = {s: clock.fragments_due(s) for s in range(1, 13) if clock.fragments_due(s)}
    assert due == {4: [0], 6: [1], 8: [0], 10: [1], 12: [0]}  # phases 2 and 0 of the 4-step cycle
    assert rounds(clock, 12) == [1, 2, 4, 6, 8, 10, 12]  # the stop vote sees every fragment's round
    one = RoundClock(every=4, warmup=2)
    assert [s for s in range(1, 13) if one.fragments_due(s)] == [6, 10]  # F = 1: every H after W


def test_pytorch_clock_counts_calls_from_zero_and_has_no_warmup_rounds() -> None:
    assert rounds(PytorchAveragerClock(every=5), 12) == [1, 6, 11]
    assert rounds(PytorchAveragerClock(every=5, warmup=3), 12) == [6, 11]  # counter 5, 10: past W=3
