"""Loss-adaptive super-packet size: a decision of the native data path without any I/O.

Why here and not in the adapter: which size a super-packet may have on the wire is a
protocol decision (how much one lost datagram costs), and it is tested with synthetic
packets and a fake clock like the rest of the core.
"""

from __future__ import annotations

import collections
import struct
from dataclasses import dataclass, field

from ..errors import RemoteProtocolError
from .offload import GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN, gso_resplit, l3_offset_of_frame

_U16LE = struct.Struct("<H")
_U32BE = struct.Struct("!I")


@dataclass(slots=True, eq=False)
class LossAdaptiveCap:
    """Shrink super-packets while the path loses datagrams, grow them back when it stops.

    On UDP a lost datagram costs its whole super-packet (up to 44 datagrams), so 1% of
    datagram loss loses a third of 64 KiB super-packets and TCP inside collapses; 16 KiB
    ones lose 10% (measured in docs/bench.md). Loss is seen locally, without any wire
    message: TCP retransmissions show up as super-packets whose sequence numbers lie
    below what that flow already sent. ``events`` of them within ``window`` halve the cap
    (down to ``floor``); ``grow_after`` seconds after the last change it doubles again
    (and halves again if retransmissions go on: under steady loss it probes between
    ``floor`` and twice that; on a clean path it is back at the ceiling in seconds).
    Oversized super-packets are then cut with :func:`gso_resplit`.
    """

    ceiling: int = 65_536
    floor: int = 8_000
    window: float = 0.25
    events: int = 16
    grow_after: float = 1.0
    max_flows: int = 1024
    cap: int = field(init=False)
    retransmits: int = field(default=0, init=False)
    decreases: int = field(default=0, init=False)
    _recent: collections.deque[float] = field(init=False, repr=False)
    _last_change: float = field(default=0.0, init=False, repr=False)
    _flows: dict[bytes, int] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.cap = self.ceiling
        self._recent = collections.deque(maxlen=self.events)

    def shape(self, frames: list[bytes], now: float, *, tap: bool = False) -> list[bytes]:
        """Watch TCP super-packets for retransmissions; cut the ones above the cap."""
        out: list[bytes] | None = None
        for i, f in enumerate(frames):
            if f[1] & 0x7F not in (GSO_TCPV4, GSO_TCPV6):
                if out is not None:
                    out.append(f)
                continue
            self.observe(f, now, tap)
            if len(f) - VNET_HDR_LEN > self.cap:
                if out is None:
                    out = list(frames[:i])
                out.extend(gso_resplit(f, self.cap))
            elif out is not None:
                out.append(f)
        if self.cap < self.ceiling and now - self._last_change >= self.grow_after:
            self.cap = min(self.ceiling, self.cap * 2)
            self._last_change = now
        return frames if out is None else out

    def observe(self, f: bytes, now: float, tap: bool) -> None:
        """Note one TCP packet (virtio_net_hdr + packet) of the device's output."""
        (l4,) = _U16LE.unpack_from(f, 6)  # csum_start: TCP header offset in the packet
        p = VNET_HDR_LEN
        try:
            l3 = p + (l3_offset_of_frame(memoryview(f)[p:]) if tap else 0)
        except RemoteProtocolError:
            return
        l4 += p
        if len(f) < l4 + 20:
            return
        v4 = f[l3] >> 4 == 4
        if f[l3 + 9 if v4 else l3 + 6] != 6:  # not TCP
            return
        key = f[l3 + 12:l3 + 20] + f[l4:l4 + 4] if v4 else f[l3 + 8:l3 + 40] + f[l4:l4 + 4]
        (seq,) = _U32BE.unpack_from(f, l4 + 4)
        end = (seq + len(f) - l4 - (f[l4 + 12] >> 4) * 4) & 0xFFFFFFFF
        prev = self._flows.get(key)
        if prev is None:
            if len(self._flows) >= self.max_flows:
                self._flows.clear()
            self._flows[key] = end
            return
        if 0 < (prev - seq) & 0xFFFFFFFF < 0x80000000:  # starts below what was sent
            self.retransmits += 1
            self._recent.append(now)
            if (len(self._recent) == self.events and now - self._recent[0] <= self.window
                    and now - self._last_change >= self.window and self.cap > self.floor):
                self.cap = max(self.floor, self.cap // 2)
                self._last_change = now
                self.decreases += 1
        if 0 < (end - prev) & 0xFFFFFFFF < 0x80000000:
            self._flows[key] = end


__all__ = ["LossAdaptiveCap"]
