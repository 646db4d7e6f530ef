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

    __slots__ = ("capacity", "min_share", "_left", "limited")

    def __init__(self, capacity: int = 256, min_share: int = 8) -> None:
        if capacity < 1 or min_share < 1:
            raise ValueError("capacity and min_share must be positive")
        self.capacity = capacity
        self.min_share = min_share
        self._left: dict[Hashable, int] = {}
        #: whether the last planned round was cut at all
        self.limited = False

    def plan(self, senders: list[Hashable]) -> bool:
        """Plan a round; returns whether any datagram may be refused in it."""
        self._left.clear()
        self.limited = False
        if len(senders) <= self.capacity:
            return False
        counts: dict[Hashable, int] = {}
        for s in senders:
            counts[s] = counts.get(s, 0) + 1
        share = fair_share(counts, self.capacity, self.min_share)
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
