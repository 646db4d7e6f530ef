"""The hub's IP router: which peer a packet goes to, and whether a peer may send it.

Sans-I/O and keyed by opaque peer ids. Each peer owns prefixes: its tunnel address (a
host route) and its ``allowed_ips`` (networks behind it, OpenVPN's iroute). Outbound,
the destination is matched by longest prefix over every peer's prefixes (WireGuard's
cryptokey routing). Inbound from peer P, the inner source must map back to P by the
same lookup, else the packet is spoofed (a peer may only speak for its own prefixes,
and a more specific prefix of another peer wins, as in WireGuard). The destination then
decides: another peer (forwarded inside the hub when ``client_to_client``, dropped
otherwise), P itself (dropped: it would loop), anything else: the hub's device.

Lookups are one dict probe per prefix length present (at most 33 for IPv4, 129 for
IPv6, a handful in practice), so 1,000 peers cost the same as one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
PeerId = Hashable

#: verdicts of :meth:`Router.inbound`
TO_DEVICE = "device"
FORWARD = "forward"
DROP = "drop"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a packet a peer sent: ``action`` and, to forward, the peer;
    to drop, the drop-counter key in ``reason``."""

    action: str
    peer: PeerId = None
    reason: str = ""


_DEVICE = Verdict(TO_DEVICE)
_SPOOFED = Verdict(DROP, reason="spoofed_source")
_C2C = Verdict(DROP, reason="client_to_client")
_HAIRPIN = Verdict(DROP, reason="hairpin")
_NOT_IP = Verdict(DROP, reason="not_ip")
_LINK_LOCAL = Verdict(DROP, reason="link_local")
_FE80 = 0xFE80 << 112
_FE80_MASK = 0xFFC0 << 112


class _Table:
    """Longest-prefix match for one address family: {prefixlen: {network int: peer}}."""

    __slots__ = ("bits", "by_len", "lengths")

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.by_len: dict[int, dict[int, PeerId]] = {}
        self.lengths: list[int] = []  # present prefix lengths, longest first

    def add(self, net: Network, peer: PeerId) -> None:
        plen = net.prefixlen
        bucket = self.by_len.get(plen)
        if bucket is None:
            bucket = self.by_len[plen] = {}
            self.lengths = sorted(self.by_len, reverse=True)
        bucket[int(net.network_address)] = peer

    def remove(self, net: Network, peer: PeerId) -> None:
        bucket = self.by_len.get(net.prefixlen)
        key = int(net.network_address)
        if bucket is not None and bucket.get(key) == peer:
            del bucket[key]
            if not bucket:
                del self.by_len[net.prefixlen]
                self.lengths = sorted(self.by_len, reverse=True)

    def lookup(self, addr: int) -> PeerId | None:
        bits = self.bits
        for plen in self.lengths:
            key = addr & ~((1 << (bits - plen)) - 1)
            peer = self.by_len[plen].get(key)
            if peer is not None:
                return peer
        return None


class Router:
    """Longest-prefix routing and anti-spoofing between one TUN device and many peers."""

    def __init__(self, *, client_to_client: bool = False) -> None:
        self.client_to_client = client_to_client
        self._v4 = _Table(32)
        self._v6 = _Table(128)
        self._prefixes: dict[PeerId, list[Network]] = {}

    # -- table ---------------------------------------------------------------------
    def set_peer(self, peer: PeerId, prefixes: Iterable[Network | str]) -> None:
        """Give ``peer`` exactly these prefixes (replacing what it had)."""
        self.remove_peer(peer)
        nets = [ipaddress.ip_network(p, strict=False) if isinstance(p, str) else p
                for p in prefixes]
        self._prefixes[peer] = nets
        for net in nets:
            (self._v4 if net.version == 4 else self._v6).add(net, peer)

    def remove_peer(self, peer: PeerId) -> None:
        for net in self._prefixes.pop(peer, []):
            (self._v4 if net.version == 4 else self._v6).remove(net, peer)
        # a prefix another peer also announced stays with whoever set it last; re-add
        # the survivors' prefixes so removing one owner never hides another's
        for other, nets in self._prefixes.items():
            for net in nets:
                table = self._v4 if net.version == 4 else self._v6
                if table.by_len.get(net.prefixlen, {}).get(int(net.network_address)) is None:
                    table.add(net, other)

    def prefixes(self, peer: PeerId) -> list[Network]:
        return list(self._prefixes.get(peer, []))

    def peers(self) -> list[PeerId]:
        return list(self._prefixes)

    # -- lookups -------------------------------------------------------------------
    def lookup(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address
               ) -> PeerId | None:
        """The peer owning ``address`` by longest prefix, or None."""
        a = ipaddress.ip_address(address) if isinstance(address, str) else address
        return (self._v4 if a.version == 4 else self._v6).lookup(int(a))

    def outbound(self, packet: bytes | bytearray | memoryview, offset: int = 0
                 ) -> PeerId | None:
        """The peer a packet read from the device goes to (None: no route, dropped);
        the packet starts ``offset`` bytes in (after a device's virtio_net_hdr)."""
        n = len(packet) - offset
        if n <= 0:
            return None
        version = packet[offset] >> 4
        if version == 4 and n >= 20:
            return self._v4.lookup(int.from_bytes(packet[offset + 16:offset + 20], "big"))
        if version == 6 and n >= 40:
            return self._v6.lookup(int.from_bytes(packet[offset + 24:offset + 40], "big"))
        return None

    def inbound(self, peer: PeerId, packet: bytes | bytearray | memoryview) -> Verdict:
        """What to do with ``packet`` received from ``peer`` (anti-spoofing first)."""
        if not packet:
            return _NOT_IP
        version = packet[0] >> 4
        if version == 4 and len(packet) >= 20:
            table = self._v4
            src = int.from_bytes(packet[12:16], "big")
            dst = int.from_bytes(packet[16:20], "big")
        elif version == 6 and len(packet) >= 40:
            table = self._v6
            src = int.from_bytes(packet[8:24], "big")
            dst = int.from_bytes(packet[24:40], "big")
            if src & _FE80_MASK == _FE80 or src == 0:
                return _LINK_LOCAL  # a device's own chatter (RS, MLD): not routable
        else:
            return _NOT_IP
        if table.lookup(src) != peer:
            return _SPOOFED
        target = table.lookup(dst)
        if target is None:
            return _DEVICE
        if target == peer:
            return _HAIRPIN
        if not self.client_to_client:
            return _C2C
        return Verdict(FORWARD, target)


__all__ = ["DROP", "FORWARD", "TO_DEVICE", "Router", "Verdict"]
