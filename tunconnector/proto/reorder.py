"""Bounded reorder buffer for the ``balance`` multi-path policy (sans-I/O).

Spreading one flow's packets over paths with different delays reorders them, and TCP
reads reordering as loss (duplicate ACKs, fast retransmit, a halved window). The
receiver holds a packet that arrives ahead of a gap, by the sender's native counter,
until the gap fills or ``timeout`` passes (the gap was a real loss), and never holds
more than ``max_packets``. Holding costs latency only while a gap is open.

Counters that carry no device frame (keepalives) are pushed with no frames so they do
not look like gaps. A counter below the next expected one (a packet that lost the
race against the timeout) is delivered at once: late beats never for TCP. ``reset()``
starts over (new session keys restart the counter).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class ReorderStats:
    in_order: int = 0
    held: int = 0
    late: int = 0
    gaps_skipped: int = 0
    overflows: int = 0


class ReorderBuffer:
    __slots__ = ("max_packets", "timeout", "stats", "_next", "_held", "_since")

    def __init__(self, max_packets: int = 512, timeout: float = 0.02) -> None:
        if max_packets <= 0 or timeout < 0:
            raise ValueError("max_packets must be > 0 and timeout >= 0")
        self.max_packets = max_packets
        self.timeout = timeout
        self.stats = ReorderStats()
        self._next: int | None = None
        # counter -> (frames, arrival)
        self._held: dict[int, tuple[Sequence[bytes], float]] = {}
        self._since: float | None = None  # when the oldest open gap was first seen

    def reset(self) -> None:
        self._next = None
        self._held.clear()
        self._since = None

    @property
    def holding(self) -> int:
        return len(self._held)

    def push(self, counter: int, frames: Sequence[bytes], now: float) -> list[bytes]:
        """Accept one message (its frames, maybe none); return what can go out now."""
        out: list[bytes] = []
        nxt = self._next
        if nxt is None or (counter == nxt and not self._held):
            self._next = counter + 1
            out.extend(frames)
            self.stats.in_order += len(frames)
            return out
        if counter < nxt:
            out.extend(frames)  # gave up on it already: late beats never
            self.stats.late += len(frames)
            return out
        if counter in self._held:
            return out  # a copy
        self._held[counter] = (frames, now)
        self.stats.held += len(frames)
        if self._since is None:
            self._since = now
        self._drain(out, now)
        if len(self._held) > self.max_packets:
            self.stats.overflows += 1
            self._skip(out, now)
        return out

    def get_timer(self) -> float | None:
        return None if self._since is None else self._since + self.timeout

    def handle_timer(self, now: float) -> list[bytes]:
        """Give up on gaps older than ``timeout``; return the frames that frees."""
        out: list[bytes] = []
        while self._since is not None and now >= self._since + self.timeout:
            self._skip(out, now)
        return out

    def _drain(self, out: list[bytes], now: float) -> None:
        held = self._held
        nxt = self._next
        if nxt is None:
            return
        while nxt in held:
            out.extend(held.pop(nxt)[0])
            nxt += 1
        self._next = nxt
        if not held:
            self._since = None
        elif self._since is None:
            self._since = min(t for _, t in held.values())

    def _skip(self, out: list[bytes], now: float) -> None:
        """Jump over the oldest gap to the lowest held counter."""
        if not self._held:
            self._since = None
            return
        self.stats.gaps_skipped += 1
        self._next = min(self._held)
        self._since = None
        self._drain(out, now)  # the next gap's clock: its oldest waiting packet
