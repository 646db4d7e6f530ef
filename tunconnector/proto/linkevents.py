"""rtnetlink link notifications, decoded just enough to follow an interface's state.

The multi-link client watches its underlay interfaces (``hw_int``): when one goes down
(admin down or no carrier) the TAP tunnel over it is dead at once, without waiting for
keepalives or the bond's ARP monitor. Only the fixed ``ifinfomsg`` header is needed:
index and flags. Pure bytes in, tuples out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import RemoteProtocolError

NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
RTM_NEWLINK = 16
RTM_DELLINK = 17
NLMSG_DONE = 3
IFF_UP = 0x1
IFF_RUNNING = 0x40
IFF_LOWER_UP = 0x10000
RTMGRP_LINK = 0x1


@dataclass(frozen=True, slots=True)
class LinkEvent:
    index: int
    flags: int
    deleted: bool = False

    @property
    def usable(self) -> bool:
        """Admin up and with carrier: packets can leave through it."""
        return not self.deleted and bool(self.flags & IFF_UP) and bool(self.flags & IFF_RUNNING)


def parse_link_events(data: bytes) -> list[LinkEvent]:
    """Every RTM_NEWLINK/RTM_DELLINK in one netlink datagram (other messages skipped)."""
    out: list[LinkEvent] = []
    pos = 0
    while pos + NLMSG_HDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, pos)
        if length < NLMSG_HDR.size or pos + length > len(data):
            raise RemoteProtocolError("truncated", "netlink message length out of range")
        if mtype in (RTM_NEWLINK, RTM_DELLINK):
            body = pos + NLMSG_HDR.size
            if body + IFINFO.size > pos + length:
                raise RemoteProtocolError("truncated", "ifinfomsg shorter than its header")
            _fam, _type, index, flags, _change = IFINFO.unpack_from(data, body)
            out.append(LinkEvent(index, flags, mtype == RTM_DELLINK))
        pos += (length + 3) & ~3
    return out
