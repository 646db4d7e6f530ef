"""Duplicate filter for multi-path receive (sans-I/O).

In ``duplicate`` mode every data packet travels on every healthy path with the same
native header counter, and on failover the packets in flight on the old path race the
ones on the new path. The receiver keeps a bounded sliding window of counters already
delivered (the WireGuard replay-window idea, without the security claims: with
encryption the session's replay window does the same job on authenticated counters).

``accept(counter)`` answers "deliver this one?": a counter is delivered at most once; one
``window`` or more behind the highest counter seen is dropped as too old. A run of
``restart_after`` consecutive too-old counters is taken as a peer restart (plaintext
counters start again from 1 when the peer's process restarts) and resets the window
instead of blackholing the peer until its counter catches up; a lone straggler never
triggers it. ``restart_after=None`` disables that.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_WINDOW = 4096
DEFAULT_RESTART_AFTER = 16


@dataclass(slots=True)
class DedupStats:
    delivered: int = 0
    duplicates: int = 0
    too_old: int = 0
    resets: int = 0


class DuplicateFilter:
    """Counter-indexed ring of "seen" flags over the last ``window`` counters."""

    __slots__ = ("window", "restart_after", "stats", "_ring", "_top", "_empty", "_old_run")

    def __init__(self, window: int = DEFAULT_WINDOW,
                 restart_after: int | None = DEFAULT_RESTART_AFTER) -> None:
        if window <= 0:
            raise ValueError("window must be > 0")
        if restart_after is not None and restart_after <= 0:
            raise ValueError("restart_after must be > 0")
        self.window = window
        self.restart_after = restart_after
        self._old_run = 0
        self.stats = DedupStats()
        self._ring = bytearray(window)
        self._top = 0
        self._empty = True

    @property
    def top(self) -> int | None:
        """Highest counter accepted so far (None before the first)."""
        return None if self._empty else self._top

    def reset(self) -> None:
        self._ring = bytearray(self.window)
        self._top = 0
        self._empty = True
        self._old_run = 0

    def accept(self, counter: int) -> bool:
        """True when ``counter`` is new (deliver it), False for a duplicate or too old."""
        w = self.window
        if self._empty:
            self._empty = False
            self._top = counter
            self._ring[counter % w] = 1
            self.stats.delivered += 1
            return True
        top = self._top
        if counter > top:
            gap = counter - top
            ring = self._ring
            if gap >= w:
                self._ring = ring = bytearray(w)
            else:
                for c in range(top + 1, counter):
                    ring[c % w] = 0
            ring[counter % w] = 1
            self._top = counter
            self._old_run = 0
            self.stats.delivered += 1
            return True
        if top - counter >= w:
            self._old_run += 1
            if self.restart_after is not None and self._old_run >= self.restart_after:
                self.stats.resets += 1
                self.reset()
                return self.accept(counter)
            self.stats.too_old += 1
            return False
        self._old_run = 0
        i = counter % w
        if self._ring[i]:
            self.stats.duplicates += 1
            return False
        self._ring[i] = 1
        self.stats.delivered += 1
        return True
