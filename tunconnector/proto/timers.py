"""One heap of deadlines for many connections: the adapter's one timer.

Sans-I/O. Each key (a peer, a session) has at most one current deadline; moving it
pushes a new entry and leaves the old one in the heap, skipped when it surfaces (a
deadline is current while it equals the key's in ``_at``). So 1,000 idle peers cost a
heap entry each and the adapter wakes only when one of them has something to do, and
rescheduling is one push, never a search.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TimerHeap(Generic[K]):
    """Deadlines by key: :meth:`schedule`, :meth:`due`, :meth:`next`."""

    __slots__ = ("_heap", "_at", "_seq")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._at: dict[K, float] = {}
        self._seq = itertools.count()  # ties never compare keys

    def __len__(self) -> int:
        return len(self._at)

    def __contains__(self, key: object) -> bool:
        return key in self._at

    def schedule(self, key: K, when: float | None) -> bool:
        """Give ``key`` the deadline ``when`` (None: none). True when it is new or moved,
        so the caller may need to wake earlier."""
        if when is None:
            self._at.pop(key, None)
            return False
        if self._at.get(key) == when:
            return False
        self._at[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))
        return True

    def discard(self, key: K) -> None:
        """Forget ``key``'s deadline (its heap entries become stale)."""
        self._at.pop(key, None)

    def next(self) -> float | None:
        """The earliest current deadline (stale entries on top are dropped)."""
        heap, at = self._heap, self._at
        while heap and at.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def due(self, now: float) -> list[K]:
        """The keys whose deadline is ``now`` or earlier, in deadline order; each loses
        its deadline (the caller schedules the next one)."""
        heap, at = self._heap, self._at
        out: list[K] = []
        while heap and heap[0][0] <= now:
            t, _, key = heapq.heappop(heap)
            if at.get(key) == t:
                del at[key]
                out.append(key)
        return out

    def clear(self) -> None:
        self._heap.clear()
        self._at.clear()


__all__ = ["TimerHeap"]
