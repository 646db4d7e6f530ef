"""Replay window: table tests and hypothesis properties over random orderings."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunconnector.proto.replay import REJECT_AFTER_MESSAGES, ReplayWindow

W = ReplayWindow().window  # 8128


@pytest.mark.parametrize(
    "name, sequence, expected",
    [
        ("in order", [0, 1, 2, 3], [True, True, True, True]),
        ("duplicate", [0, 1, 1, 2, 0], [True, True, False, True, False]),
        ("out of order in window", [5, 3, 4, 1, 0, 2], [True] * 6),
        ("gap then fill", [100, 50, 99, 100, 50], [True, True, True, False, False]),
        ("too old", [W + 10, 9, 10, 11], [True, False, True, True]),
        ("edge of window", [W, 0, W + 1, 1, 0], [True, True, True, True, False]),
        ("big jump clears ring", [0, 1_000_000, 1, 1_000_000 - W, 999_999],
         [True, True, False, True, True]),
        ("jump by exactly one ring", [0, 8192, 64, 8192 - W - 1], [True, True, True, False]),
        ("wrap guard", [REJECT_AFTER_MESSAGES - 1, REJECT_AFTER_MESSAGES, 2**64 - 1, -1],
         [True, False, False, False]),
    ],
)
def test_table(name: str, sequence: list[int], expected: list[bool]) -> None:
    w = ReplayWindow()
    got = [w.update(c) for c in sequence]
    assert got == expected, name


def test_check_does_not_mutate() -> None:
    w = ReplayWindow()
    assert w.check(7) and w.check(7)
    assert w.update(7)
    assert not w.check(7)
    assert w.highest == 7


def test_window_at_least_2048() -> None:
    assert ReplayWindow().window >= 2048
    w = ReplayWindow(blocks=64)
    assert w.window == 63 * 64
    with pytest.raises(ValueError):
        ReplayWindow(blocks=3)


def _reference(seq: list[int], window: int) -> list[bool]:
    """Obviously-correct model: a set and the highest counter."""
    seen: set[int] = set()
    top = -1
    out = []
    for c in seq:
        ok = c not in seen and (c > top or top - c <= window)
        out.append(ok)
        if ok:
            seen.add(c)
            top = max(top, c)
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=40_000), max_size=300))
def test_matches_reference_model(seq: list[int]) -> None:
    w = ReplayWindow()
    assert [w.update(c) for c in seq] == _reference(seq, w.window)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=3000), st.randoms(use_true_random=False),
       st.integers(min_value=0, max_value=2**40))
def test_any_ordering_within_window_accepted_once(
    n: int, rnd: random.Random, base: int
) -> None:
    """Any permutation of a block of counters narrower than the window: all accepted once,
    and a second pass of the same counters is entirely refused."""
    counters = list(range(base, base + n))
    rnd.shuffle(counters)
    w = ReplayWindow()
    assert all(w.update(c) for c in counters)
    rnd.shuffle(counters)
    assert not any(w.update(c) for c in counters)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**64 + 10), max_size=100))
def test_check_predicts_update(seq: list[int]) -> None:
    w = ReplayWindow()
    for c in seq:
        assert w.check(c) == w.update(c)


def test_restore_refuses_everything_up_to_the_saved_highest() -> None:
    from tunconnector.proto.replay import ReplayWindow

    for highest in (5, 31, 32, 1000, 70000):
        w = ReplayWindow(blocks=64)
        w.restore(highest)
        assert w.highest == highest
        assert not any(w.check(c) for c in range(max(0, highest - 3000), highest + 1))
        assert w.update(highest + 1) and w.update(highest + 40) and w.update(highest + 2)
        assert not w.update(highest + 1)
