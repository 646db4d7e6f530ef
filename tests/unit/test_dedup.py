"""Duplicate filter: table cases and hypothesis properties against a set-based model."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunconnector.proto.dedup import DuplicateFilter

W = 64


class Model:
    """The specification: deliver a counter once, unless W or more behind the top."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.seen: set[int] = set()
        self.top: int | None = None

    def accept(self, c: int) -> bool:
        if self.top is not None and self.top - c >= self.window:
            return False
        if c in self.seen:
            return False
        self.seen.add(c)
        self.top = c if self.top is None else max(self.top, c)
        return True


def test_table() -> None:
    f = DuplicateFilter(window=8, restart_after=None)
    cases = [(1, True), (1, False), (3, True), (2, True), (2, False), (3, False),
             (11, True), (3, False), (4, True), (4, False), (20, True), (12, False),
             (13, True), (19, True), (20, False), (100, True), (92, False), (93, True)]
    assert [(c, f.accept(c)) for c, _ in cases] == cases
    assert f.stats.delivered == sum(ok for _, ok in cases)
    assert f.stats.too_old == 3 and f.stats.duplicates == 5
    assert f.top == 100


def test_peer_restart_resets_after_a_run_of_too_old() -> None:
    f = DuplicateFilter(window=16, restart_after=4)
    for c in range(1, 5000):
        assert f.accept(c)
    assert not f.accept(4000)  # a lone straggler: dropped, no reset
    assert f.accept(4999 + 1)
    # the peer restarted: counters 1, 2, 3 ... are far behind
    assert [f.accept(c) for c in (1, 2, 3, 4, 5, 6)] == [False, False, False, True, True, True]
    assert f.stats.resets == 1 and f.top == 6
    assert not f.accept(5)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        DuplicateFilter(window=0)
    with pytest.raises(ValueError):
        DuplicateFilter(window=100, restart_after=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=6 * W), max_size=400))
def test_matches_model_on_any_sequence(counters: list[int]) -> None:
    f = DuplicateFilter(window=W, restart_after=None)
    m = Model(W)
    for c in counters:
        assert f.accept(c) == m.accept(c), c


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=500),
    copies=st.integers(min_value=1, max_value=4),
    data=st.data(),
)
def test_duplicates_within_window_deliver_each_exactly_once(
    n: int, copies: int, data: st.DataObject
) -> None:
    """Several paths each carry every counter; any interleaving whose reordering stays
    inside the window delivers every counter exactly once."""
    streams = [list(range(1, n + 1)) for _ in range(copies)]
    # each path may lag the others by up to W/2 packets (jitter, a slower path)
    lags = data.draw(st.lists(st.integers(0, W // 2), min_size=copies, max_size=copies))
    events = sorted(
        (c + lags[p] + data.draw(st.integers(0, W // 4)), p, c)
        for p, s in enumerate(streams) for c in s
    )
    f = DuplicateFilter(window=W, restart_after=None)
    delivered = [c for _, _, c in events if f.accept(c)]
    assert sorted(delivered) == list(range(1, n + 1))
    assert f.stats.duplicates == (copies - 1) * n
    assert f.stats.too_old == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=200),
       st.integers(min_value=0, max_value=10**6))
def test_too_old_is_dropped(counters: list[int], late: int) -> None:
    f = DuplicateFilter(window=W, restart_after=None)
    for c in counters:
        f.accept(c)
    top = f.top
    assert top is not None
    if top - late >= W:
        assert not f.accept(late)
    assert not f.accept(top)
