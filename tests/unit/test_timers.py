"""TimerHeap: deadlines by key, moved and forgotten without searching the heap."""

from __future__ import annotations

from tunconnector.proto.timers import TimerHeap


def test_due_in_deadline_order_and_once() -> None:
    h: TimerHeap[str] = TimerHeap()
    assert h.schedule("a", 3.0) and h.schedule("b", 1.0) and h.schedule("c", 2.0)
    assert h.next() == 1.0
    assert h.due(2.5) == ["b", "c"]
    assert h.due(2.5) == []
    assert h.next() == 3.0 and len(h) == 1


def test_moved_and_discarded_deadlines_are_stale() -> None:
    h: TimerHeap[str] = TimerHeap()
    h.schedule("a", 1.0)
    assert not h.schedule("a", 1.0)  # unchanged: no new entry
    assert h.schedule("a", 5.0)  # later: the 1.0 entry is stale
    h.schedule("b", 2.0)
    h.discard("b")
    assert h.next() == 5.0
    assert h.due(4.0) == []
    assert h.schedule("a", None) is False and "a" not in h
    assert h.next() is None


def test_clear() -> None:
    h: TimerHeap[int] = TimerHeap()
    h.schedule(1, 1.0)
    h.clear()
    assert h.next() is None and h.due(10.0) == []
