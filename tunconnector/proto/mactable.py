"""The hub's learning switch for TAP: a MAC table with aging, pins and a per-peer limit.

Sans-I/O, keyed by opaque port ids: each peer is a port, and :data:`LOCAL` is the hub's
own device. Source MACs are learned on the port they arrive from; a destination found
in the table goes to its port, broadcast, multicast and unknown unicast are flooded
(every port but the one it came from). Entries age out after ``aging`` seconds without
a frame from that MAC (300 s, the Linux bridge default).

What one peer cannot do to the others:

- take a pinned MAC (:meth:`MacTable.pin`: the hub's own device MAC, a peer's static
  ``mac``): a frame from another port with that source is dropped (``mac_pinned``);
- take a MAC another port still uses: a learned MAC moves only once its owner was
  silent for ``move_after`` seconds (a station that really moved waits that long); until
  then frames from the new port with that source are dropped (``mac_move_refused``). The
  hub's own device (:data:`LOCAL`) is trusted and takes an address at once;
- fill the table: a peer owns at most ``max_per_peer`` MACs; frames with a new source
  beyond that are dropped (``mac_limit``), not flooded, so a random-MAC flood costs the
  other peers nothing beyond what the peer's own frames cost.
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

#: why a source address was refused (the frame is dropped and counted under it)
MAC_LIMIT = "mac_limit"
MAC_PINNED = "mac_pinned"
MAC_MOVE_REFUSED = "mac_move_refused"


def parse_mac(text: str) -> bytes:
    """``02:00:5e:10:00:01`` (or with ``-``) -> 6 bytes; ValueError if it is not one."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise ValueError(f"{text!r} is not a MAC address (6 hex bytes)")
    mac = bytes(int(p, 16) for p in parts)
    if mac[0] & 1:
        raise ValueError(f"{text!r} is a group address, not a station's")
    return mac


class MacTable:
    """MAC address -> port, with aging, pins, a move hold-down and a per-port cap."""

    def __init__(self, *, aging: float = 300.0, max_per_peer: int = 1024,
                 move_after: float = 0.0) -> None:
        self.aging = aging
        self.max_per_peer = max_per_peer
        self.move_after = move_after
        self._table: dict[bytes, tuple[PortId, float]] = {}
        self._pinned: dict[bytes, PortId] = {}
        self._count: collections.Counter[PortId] = collections.Counter()
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._table) + len(self._pinned)

    def pin(self, mac: bytes, port: PortId) -> None:
        """``mac`` lives behind ``port`` for good: never aged, never learned elsewhere."""
        entry = self._table.get(mac)
        if entry is not None:
            self._drop(mac, entry[0])
        self._pinned[mac] = port

    def unpin_port(self, port: PortId) -> None:
        for mac in [m for m, p in self._pinned.items() if p == port]:
            del self._pinned[mac]

    def pinned(self, port: PortId) -> list[bytes]:
        return [m for m, p in self._pinned.items() if p == port]

    def learn(self, mac: bytes, port: PortId, now: float) -> str | None:
        """Record that ``mac`` lives behind ``port``; None when done (or nothing to do:
        group addresses are never learned), else why it was refused (:data:`MAC_LIMIT`,
        :data:`MAC_PINNED`, :data:`MAC_MOVE_REFUSED`)."""
        if mac[0] & 1:
            return None
        pinned = self._pinned.get(mac)
        if pinned is not None:
            return None if pinned == port else MAC_PINNED
        entry = self._table.get(mac)
        if entry is not None:
            old, seen = entry
            if old == port:
                self._table[mac] = (port, now)
                return None
            if port is not LOCAL and now - seen < self.move_after \
                    and now - seen < self.aging:
                return MAC_MOVE_REFUSED  # its owner still uses it
            self._drop(mac, old)  # the station moved
        if port is not LOCAL and self._count[port] >= self.max_per_peer:
            return MAC_LIMIT
        self._table[mac] = (port, now)
        self._count[port] += 1
        if now >= self._next_sweep:
            self.expire(now)
        return None

    def lookup(self, mac: bytes, now: float) -> PortId | None:
        """The port of a unicast ``mac`` if pinned or known and fresh, else None."""
        pinned = self._pinned.get(mac)
        if pinned is not None:
            return pinned
        entry = self._table.get(mac)
        if entry is None:
            return None
        if now - entry[1] >= self.aging:
            self._drop(mac, entry[0])
            return None
        return entry[0]

    def decide(self, frame: bytes | bytearray | memoryview, ingress: PortId, now: float
               ) -> tuple[PortId | str | None, str | None]:
        """Learn the source of an Ethernet ``frame`` and pick its egress.

        Returns ``(egress, refused)``: egress is a port, :data:`FLOOD`, or None (dropped:
        the destination is the ingress port itself, or the source was refused);
        ``refused`` is None, or why the source address was refused (the frame is then
        dropped and should be counted under that name).
        """
        if len(frame) < 14:
            return None, None
        refused = self.learn(bytes(frame[6:12]), ingress, now)
        if refused is not None:
            return None, refused
        dst = bytes(frame[0:6])
        if dst[0] & 1:
            return FLOOD, None
        port = self.lookup(dst, now)
        if port is None:
            return FLOOD, None
        if port == ingress:
            return None, None
        return port, None

    def forget_port(self, port: PortId) -> None:
        """Drop every MAC learned on ``port`` (a peer was removed or went down); its
        pins stay (see :meth:`unpin_port`)."""
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


__all__ = ["FLOOD", "LOCAL", "MAC_LIMIT", "MAC_MOVE_REFUSED", "MAC_PINNED", "MacTable",
           "parse_mac"]
