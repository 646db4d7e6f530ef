"""The hub's learning switch for TAP: a MAC table with aging and a per-peer limit.

Sans-I/O, keyed by opaque port ids: each peer is a port, and :data:`LOCAL` is the hub's
own device. Source MACs are learned on the port they arrive from; a destination found
in the table goes to its port, broadcast, multicast and unknown unicast are flooded
(every port but the one it came from). Entries age out after ``aging`` seconds without
a frame from that MAC (300 s, the Linux bridge default). A peer may own at most
``max_per_peer`` MACs: beyond that, new source MACs are not learned (counted by the
caller as ``mac_limit``), so one peer cannot fill the hub's memory or evict others.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable

PortId = Hashable


class _Local:
    def __repr__(self) -> str:
        return "LOCAL"


#: the hub's own device, as a port of the switch
LOCAL: PortId = _Local()

#: what :meth:`MacTable.decide` returns for "send to every port but the ingress one"
FLOOD = "flood"


class MacTable:
    """MAC address -> port, with aging and a per-port cap on learned addresses."""

    def __init__(self, *, aging: float = 300.0, max_per_peer: int = 1024) -> None:
        self.aging = aging
        self.max_per_peer = max_per_peer
        self._table: dict[bytes, tuple[PortId, float]] = {}
        self._count: collections.Counter[PortId] = collections.Counter()
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._table)

    def learn(self, mac: bytes, port: PortId, now: float) -> bool:
        """Record that ``mac`` lives behind ``port``; False when the port's cap refused a
        new address (group addresses are never learned: True, nothing done)."""
        if mac[0] & 1:
            return True
        entry = self._table.get(mac)
        if entry is not None:
            old = entry[0]
            if old == port:
                self._table[mac] = (port, now)
                return True
            self._count[old] -= 1  # the station moved
            if self._count[old] <= 0:
                del self._count[old]
        if port is not LOCAL and self._count[port] >= self.max_per_peer:
            if entry is not None:
                del self._table[mac]
            return False
        self._table[mac] = (port, now)
        self._count[port] += 1
        if now >= self._next_sweep:
            self.expire(now)
        return True

    def lookup(self, mac: bytes, now: float) -> PortId | None:
        """The port of a unicast ``mac`` if known and fresh, else None."""
        entry = self._table.get(mac)
        if entry is None:
            return None
        if now - entry[1] >= self.aging:
            self._drop(mac, entry[0])
            return None
        return entry[0]

    def decide(self, frame: bytes | bytearray | memoryview, ingress: PortId, now: float
               ) -> tuple[PortId | str | None, bool]:
        """Learn the source of an Ethernet ``frame`` and pick its egress.

        Returns ``(egress, learned)``: egress is a port, :data:`FLOOD`, or None (the
        destination is the ingress port itself: dropped); ``learned`` is False when the
        per-peer cap refused the source address.
        """
        if len(frame) < 14:
            return None, True
        dst = bytes(frame[0:6])
        learned = self.learn(bytes(frame[6:12]), ingress, now)
        if dst[0] & 1:
            return FLOOD, learned
        port = self.lookup(dst, now)
        if port is None:
            return FLOOD, learned
        if port == ingress:
            return None, learned
        return port, learned

    def forget_port(self, port: PortId) -> None:
        """Drop every MAC learned on ``port`` (a peer was removed or went down)."""
        for mac in [m for m, (p, _) in self._table.items() if p == port]:
            del self._table[mac]
        self._count.pop(port, None)

    def macs(self, port: PortId) -> int:
        return self._count.get(port, 0)

    def expire(self, now: float) -> int:
        """Remove aged entries; returns how many (run at most once per aging/4)."""
        self._next_sweep = now + self.aging / 4
        old = [(m, p) for m, (p, t) in self._table.items() if now - t >= self.aging]
        for mac, port in old:
            self._drop(mac, port)
        return len(old)

    def _drop(self, mac: bytes, port: PortId) -> None:
        del self._table[mac]
        self._count[port] -= 1
        if self._count[port] <= 0:
            del self._count[port]


__all__ = ["FLOOD", "LOCAL", "MacTable"]
