"""Receive-side anti-replay window (RFC 6479 bitmap of 64-bit blocks), sans I/O.

A ring of ``blocks`` words; the newest block is cleared lazily as the window slides, so
accepting an in-order counter costs O(1) and a jump of any size at most ``blocks`` word
writes. The usable window is ``(blocks - 1) * 64`` counters (8128 by default): any
counter within that distance behind the highest one seen is accepted exactly once.

Counters at or above ``limit`` are refused (the sender must have rekeyed long before),
which also guards against wrap-around of the 64-bit counter.
"""

from __future__ import annotations

#: WireGuard's RejectAfterMessages: 2**64 - 2**13 - 1
REJECT_AFTER_MESSAGES = (1 << 64) - (1 << 13) - 1

_BITS = 64
_LOG_BITS = 6


class ReplayWindow:
    """Sliding window over 64-bit counters; :meth:`update` accepts each counter once."""

    __slots__ = ("_ring", "_mask", "_last", "_limit", "window")

    def __init__(self, blocks: int = 128, limit: int = REJECT_AFTER_MESSAGES) -> None:
        if blocks < 2 or blocks & (blocks - 1):
            raise ValueError("blocks must be a power of two >= 2")
        self._ring = [0] * blocks
        self._mask = blocks - 1
        self._last = 0
        self._limit = limit
        #: how far behind the highest accepted counter a counter may still be accepted
        self.window = (blocks - 1) * _BITS
        self.reset()

    def reset(self) -> None:
        for i in range(len(self._ring)):
            self._ring[i] = 0
        self._last = 0

    @property
    def highest(self) -> int:
        return self._last

    def restore(self, highest: int) -> None:
        """Start from a saved :attr:`highest` whose window is unknown: every counter up
        to it counts as seen (refused), the ones above it are new."""
        ring = self._ring
        full = (1 << _BITS) - 1
        for i in range(len(ring)):
            ring[i] = full
        ring[(highest >> _LOG_BITS) & self._mask] = (2 << (highest & (_BITS - 1))) - 1
        self._last = highest

    def check(self, counter: int) -> bool:
        """True when ``counter`` would be accepted now (no state change; cheap pre-check)."""
        if counter >= self._limit or counter < 0:
            return False
        if counter > self._last:
            return True
        if self._last - counter > self.window:
            return False
        block = (counter >> _LOG_BITS) & self._mask
        return not (self._ring[block] >> (counter & (_BITS - 1))) & 1

    def update(self, counter: int) -> bool:
        """Accept ``counter`` once; False for replays, too-old and out-of-range counters.

        Call only after the packet authenticated, so forged counters cannot slide it.
        """
        if counter >= self._limit or counter < 0:
            return False
        ring = self._ring
        index = counter >> _LOG_BITS
        if counter > self._last:
            current = self._last >> _LOG_BITS
            diff = index - current
            if diff > 0:
                n = len(ring)
                if diff > n:
                    diff = n
                for i in range(1, diff + 1):
                    ring[(current + i) & self._mask] = 0
            self._last = counter
        elif self._last - counter > self.window:
            return False
        block = index & self._mask
        bit = 1 << (counter & (_BITS - 1))
        old = ring[block]
        if old & bit:
            return False
        ring[block] = old | bit
        return True
