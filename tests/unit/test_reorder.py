"""Reorder buffer (balance policy): table cases and hypothesis properties."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tunconnector.proto.reorder import ReorderBuffer


def f(n: int) -> bytes:
    return n.to_bytes(4, "big")


def test_in_order_passes_through() -> None:
    r = ReorderBuffer(timeout=0.01)
    assert [r.push(c, [f(c)], 0.0) for c in (5, 6, 7)] == [[f(5)], [f(6)], [f(7)]]
    assert r.get_timer() is None and r.stats.in_order == 3


def test_gap_filled_releases_in_order() -> None:
    r = ReorderBuffer(timeout=0.01)
    r.push(1, [f(1)], 0.0)
    assert r.push(3, [f(3)], 0.001) == []
    assert r.push(4, [f(4)], 0.002) == []
    assert r.get_timer() == 0.011
    assert r.push(2, [f(2)], 0.003) == [f(2), f(3), f(4)]
    assert r.get_timer() is None


def test_gap_times_out() -> None:
    r = ReorderBuffer(timeout=0.01)
    r.push(1, [f(1)], 0.0)
    r.push(3, [f(3)], 0.001)
    r.push(6, [f(6)], 0.004)
    assert r.handle_timer(0.005) == []
    assert r.handle_timer(0.011) == [f(3)]  # gap 2 given up, 4-5 still open since 0.004
    assert r.get_timer() == 0.014
    assert r.handle_timer(0.014) == [f(6)]
    assert r.push(2, [f(2)], 0.02) == [f(2)]  # late beats never
    assert r.stats.late == 1 and r.stats.gaps_skipped == 2


def test_frameless_counters_close_gaps() -> None:
    r = ReorderBuffer()
    r.push(1, [f(1)], 0.0)
    assert r.push(3, [f(3)], 0.0) == []
    assert r.push(2, [], 0.0) == [f(3)]  # a keepalive had counter 2


def test_overflow_skips() -> None:
    r = ReorderBuffer(max_packets=3, timeout=1.0)
    r.push(1, [f(1)], 0.0)
    out = []
    for c in (3, 4, 5, 6):
        out += r.push(c, [f(c)], 0.0)
    assert out == [f(3), f(4), f(5), f(6)]
    assert r.stats.overflows == 1


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(0, 40), st.randoms(use_true_random=False))
def test_bounded_shuffle_without_loss_comes_out_sorted(n: int, spread: int, rnd: Any) -> None:
    keys = sorted(range(n), key=lambda c: c + rnd.uniform(0, spread))
    r = ReorderBuffer(max_packets=1000, timeout=1.0)
    out: list[bytes] = []
    first = r.push(-1, [], 0.0)  # the stream starts before the shuffle
    assert first == []
    for c in keys:
        out += r.push(c, [f(c)], 0.0)
    assert out == [f(c) for c in range(n)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 200), max_size=300), st.integers(1, 50))
def test_any_input_each_frame_at_most_once(counters: list[int], cap: int) -> None:
    r = ReorderBuffer(max_packets=cap, timeout=0.005)
    out: list[bytes] = []
    seen: set[int] = set()
    for i, c in enumerate(counters):
        out += r.push(c, [f(c)] if c not in seen else [], i * 0.001)
        seen.add(c)
        out += r.handle_timer(i * 0.001)
    out += r.handle_timer(10.0)
    assert sorted(out) == sorted(f(c) for c in seen)
    assert r.holding == 0
