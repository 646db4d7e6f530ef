"""Unproven stream connections: bounded, oldest out first, deadlines, O(1) timer."""

from __future__ import annotations

import pytest

from tunconnector.proto.admission import Admission


def test_bounded_oldest_evicted_first() -> None:
    adm: Admission[int, str] = Admission(limit=3, prove_within=10.0)
    assert adm.add(1, "a", 0.0) == []
    assert adm.add(2, "b", 1.0) == []
    assert adm.add(3, "c", 2.0) == []
    assert adm.add(4, "d", 3.0) == ["a"]
    assert len(adm) == 3 and 1 not in adm and 4 in adm
    assert adm.add(5, "e", 4.0) == ["b"]


def test_proven_leaves_and_timer_is_oldest_deadline() -> None:
    adm: Admission[int, str] = Admission(limit=10, prove_within=5.0)
    assert adm.get_timer() is None
    adm.add(1, "a", 0.0)
    adm.add(2, "b", 1.0)
    assert adm.get_timer() == 5.0
    assert adm.pop(1) == "a"
    assert adm.pop(1) is None  # closed after being proven: nothing to forget
    assert adm.get_timer() == 6.0
    assert adm.get(2) == "b" and adm.get(1) is None


def test_expired_returns_only_overdue_in_order() -> None:
    adm: Admission[int, str] = Admission(limit=10, prove_within=5.0)
    for i in range(5):
        adm.add(i, str(i), float(i))
    assert adm.expired(4.9) == []
    assert adm.expired(6.0) == ["0", "1"]
    assert len(adm) == 3 and adm.get_timer() == 7.0
    assert adm.expired(100.0) == ["2", "3", "4"]
    assert adm.get_timer() is None


def test_buffer_cap_and_clear() -> None:
    adm: Admission[int, str] = Admission(limit=2, buffer_limit=100)
    assert not adm.over_buffer(100) and adm.over_buffer(101)
    adm.add(1, "a", 0.0)
    assert adm.clear() == ["a"] and len(adm) == 0
    with pytest.raises(ValueError):
        Admission(limit=0)


def test_many_connections_cost_constant_per_event() -> None:
    """100k arrivals against a bound of 64: the set never grows, every add is O(1)."""
    adm: Admission[int, int] = Admission(limit=64, prove_within=10.0)
    evicted = 0
    for i in range(100_000):
        evicted += len(adm.add(i, i, i * 1e-4))
    assert len(adm) == 64 and evicted == 100_000 - 64
