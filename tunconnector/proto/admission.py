"""Unproven stream connections waiting to prove themselves, bounded in number and time.

Why: a TCP server accepts a connection before it knows who is on the other end. Until the
connection has sent something that proves it is our peer (a valid native message, or a
first frame for ``simpletun``), it must cost almost nothing: anyone can open thousands of
them, send nothing, send one byte now and then, or hold most of a large frame. So the set
of unproven connections is bounded (the oldest is dropped to make room for a new one),
each has a deadline to prove itself, and every operation is O(1): connections are kept in
arrival order, and since they all get the same time to prove themselves the oldest one has
the earliest deadline (the one timer to arm).

The buffered-bytes cap is a number here; the adapter compares a connection's pending bytes
with it after every read. Sans-I/O: keys are whatever the adapter uses for a connection.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from typing import Generic, TypeVar

#: unproven connections kept at once (a new one beyond this drops the oldest)
MAX_UNPROVEN = 64
#: seconds a new connection has to prove itself
PROVE_WITHIN = 10.0
#: bytes an unproven connection may have buffered (a hello or handshake is far smaller)
UNPROVEN_BUFFER = 4096
#: bytes an unproven connection may send in all, for adapters that cannot see what a
#: connection buffers (a peer proves itself with its first message)
UNPROVEN_RECEIVED = 65_536

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Admission(Generic[K, V]):
    """Unproven connections in arrival order, each with its deadline."""

    __slots__ = ("limit", "prove_within", "buffer_limit", "_waiting")

    def __init__(self, limit: int = MAX_UNPROVEN, prove_within: float = PROVE_WITHIN,
                 buffer_limit: int = UNPROVEN_BUFFER) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self.prove_within = prove_within
        self.buffer_limit = buffer_limit
        self._waiting: collections.OrderedDict[K, tuple[float, V]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, key: object) -> bool:
        return key in self._waiting

    def get(self, key: K) -> V | None:
        item = self._waiting.get(key)
        return None if item is None else item[1]

    def values(self) -> list[V]:
        return [v for _, v in self._waiting.values()]

    def add(self, key: K, value: V, now: float) -> list[V]:
        """Admit ``key``; returns the connections evicted to make room (oldest first)."""
        evicted: list[V] = []
        while len(self._waiting) >= self.limit:
            evicted.append(self._waiting.popitem(last=False)[1][1])
        self._waiting[key] = (now + self.prove_within, value)
        return evicted

    def pop(self, key: K) -> V | None:
        """Forget ``key`` (proven, or closed); None if it was not waiting."""
        item = self._waiting.pop(key, None)
        return None if item is None else item[1]

    def expired(self, now: float) -> list[V]:
        """Remove and return the connections whose deadline has passed."""
        out: list[V] = []
        waiting = self._waiting
        while waiting:
            key, (deadline, value) = next(iter(waiting.items()))
            if deadline > now:
                break
            del waiting[key]
            out.append(value)
        return out

    def get_timer(self) -> float | None:
        """The earliest deadline (the oldest connection's), None when nothing waits."""
        if not self._waiting:
            return None
        return next(iter(self._waiting.values()))[0]

    def over_buffer(self, buffered: int) -> bool:
        return buffered > self.buffer_limit

    def clear(self) -> list[V]:
        out = self.values()
        self._waiting.clear()
        return out


__all__ = ["Admission", "MAX_UNPROVEN", "PROVE_WITHIN", "UNPROVEN_BUFFER", "UNPROVEN_RECEIVED"]
