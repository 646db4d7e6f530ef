"""Per-peer budgets for one round of received datagrams (max-min fair share), sans I/O.

A hub reads its one UDP socket in rounds. Reading and sorting a datagram by its source
costs little; decrypting and routing it costs much more. When a round brings more
datagrams than the hub should process before it reads again (``capacity``), the
peers that sent more than their fair share lose their excess before any decryption,
and every peer that sent less than the share keeps all of its datagrams: one peer's
flood cannot push the others' packets out of the socket's queue, because the queue is
drained every round and the flood is cut in user space, by sender.

The share is found by water-filling: the largest ``s`` with
``sum(min(count, s)) <= capacity``, but never below ``min_share`` (with many active
peers the round may then exceed ``capacity``: every peer still gets something). A round
from one sender is cut at ``capacity`` too: a round's work stays bounded, so whatever
else the process serves (other queues, the device, timers) waits one round at most.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping


def fair_share(counts: Mapping[Hashable, int], capacity: int, min_share: int = 1) -> int:
    """The per-sender budget of a round with ``counts`` datagrams per sender."""
    if sum(counts.values()) <= capacity:
        return max(counts.values(), default=0)
    left = capacity
    senders = len(counts)
    share = 0
    for n in sorted(counts.values()):
        even = left // senders
        if n > even:
            share = even
            break
        left -= n
        senders -= 1
        share = n
    return max(share, min_share)


class RoundBudget:
    """Admits the datagrams of one round: per sender, the first ``share`` of them.

    Use: :meth:`plan` with the round's senders (one entry per datagram, in order), then
    :meth:`admit` per datagram in the same order. Everything is admitted while the
    round is within ``capacity``.
    """

    __slots__ = ("capacity", "min_share", "_left", "limited", "share")

    def __init__(self, capacity: int = 256, min_share: int = 8) -> None:
        if capacity < 1 or min_share < 1:
            raise ValueError("capacity and min_share must be positive")
        self.capacity = capacity
        self.min_share = min_share
        self._left: dict[Hashable, int] = {}
        #: whether the last planned round was cut at all
        self.limited = False
        #: what each sender beyond it kept of the last planned round
        self.share = 0

    def plan(self, senders: list[Hashable]) -> bool:
        """Plan a round; returns whether any datagram may be refused in it."""
        self._left.clear()
        self.limited = False
        if len(senders) <= self.capacity:
            return False
        counts: dict[Hashable, int] = {}
        for s in senders:
            counts[s] = counts.get(s, 0) + 1
        share = self.share = fair_share(counts, self.capacity, self.min_share)
        self._left = {s: share for s, n in counts.items() if n > share}
        self.limited = bool(self._left)
        return self.limited

    def admit(self, sender: Hashable) -> bool:
        """Whether this datagram of ``sender`` is processed (call in round order)."""
        left = self._left.get(sender)
        if left is None:
            return True
        if left <= 0:
            return False
        self._left[sender] = left - 1
        return True


class FloodJudge:
    """Whether a sender ignores loss: the verdict that puts its queue on a ration.

    A sender with a receive queue of its own (see the hub) loses what the process does
    not read in time; the kernel drops it there for free. That is enough against a
    sender that backs off when it loses packets (TCP inside the tunnel does within a
    round trip), but a sender that does not (a UDP flood) keeps the process busy
    reading its queue as fast as it can: the process is then never idle, and the other
    peers' packets wait for the CPU scheduler, not for the queue (7x their idle round
    trip on a loaded 2-core host, with the queue itself fair). So a sender that lost
    more than ``ratio`` of what it sent in each of ``windows`` consecutive windows of
    ``window`` seconds is judged flooding, and the process rations its reading; the
    verdict ends after one window without loss. Loss from a single burst (TCP's slow
    start) lasts one window, not ``windows`` in a row.

    Use: :meth:`sample` with the running totals of datagrams read and dropped; it
    returns the verdict (True: flooding).
    """

    __slots__ = ("window", "ratio", "windows", "flooding", "_start", "_read", "_dropped",
                 "_lossy")

    def __init__(self, window: float = 0.1, ratio: float = 0.2, windows: int = 3) -> None:
        if window <= 0 or not 0 < ratio < 1 or windows < 1:
            raise ValueError("window > 0, 0 < ratio < 1 and windows >= 1 are required")
        self.window = window
        self.ratio = ratio
        self.windows = windows
        self.flooding = False
        self._start: float | None = None
        self._read = 0
        self._dropped = 0
        self._lossy = 0

    def due(self, now: float) -> bool:
        """Whether a window has ended (sample then; the totals may cost a syscall)."""
        return self._start is None or now - self._start >= self.window

    def sample(self, now: float, read: int, dropped: int) -> bool:
        """Feed the running totals at ``now``; a window that has ended is judged."""
        if self._start is None:
            self._start, self._read, self._dropped = now, read, dropped
            return self.flooding
        if now - self._start < self.window:
            return self.flooding
        got, lost = read - self._read, dropped - self._dropped
        self._start, self._read, self._dropped = now, read, dropped
        if lost > 0 and lost > self.ratio * (got + lost):
            self._lossy += 1
            if self._lossy >= self.windows:
                self.flooding = True
        elif lost <= 0:
            self._lossy = 0
            self.flooding = False
        else:
            self._lossy = 0
        return self.flooding
