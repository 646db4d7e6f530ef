"""The hub's forwarders without a hub: routes (TUN) and the learning switch (TAP)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

from tunconnector.proto.mactable import MacTable
from tunconnector.proto.router import Router
from tunconnector.proto.switch import IpRoutes, MacSwitch


@dataclass(eq=False)
class _Stats:
    rx_bytes: int = 0
    rx_packets: int = 0
    drops: collections.Counter[str] = field(default_factory=collections.Counter)


@dataclass(eq=False)
class _Peer:
    name: str
    up: bool = True
    stats: _Stats = field(default_factory=_Stats)


def _ip4(src: str, dst: str) -> bytes:
    def b(a: str) -> bytes:
        return bytes(int(x) for x in a.split("."))
    return bytes([0x45]) + bytes(11) + b(src) + b(dst) + bytes(8)


def test_ip_routes_group_by_peer_and_check_sources() -> None:
    a, b = _Peer("a"), _Peer("b")
    router = Router(client_to_client=True)
    router.set_peer(a, ["10.0.0.2/32"])
    router.set_peer(b, ["10.0.0.3/32"])
    sw: IpRoutes[_Peer] = IpRoutes(router)
    drops: collections.Counter[str] = collections.Counter()
    out = list(sw.outbound([_ip4("10.0.0.1", "10.0.0.2"), _ip4("10.0.0.1", "10.0.0.9"),
                            _ip4("10.0.0.1", "10.0.0.3"), _ip4("10.0.0.1", "10.0.0.2")],
                           0.0, drops))
    assert [(p.name, len(fs)) for p, fs in out] == [("a", 2), ("b", 1)]
    assert drops["no_route"] == 1
    res = sw.inbound([(a, _ip4("10.0.0.2", "10.0.0.1")), (a, _ip4("10.0.0.7", "10.0.0.1")),
                      (a, _ip4("10.0.0.2", "10.0.0.3"))], 0.0, whole=False)
    assert len(res.to_device) == 1 and res.extra == 0
    assert [(p.name, len(fs)) for p, fs in res.forward.values()] == [("b", 1)]
    assert a.stats.rx_packets == 3 and a.stats.drops["spoofed_source"] == 1


def _eth(dst: bytes, src: bytes) -> bytes:
    return dst + src + b"\x08\x00" + bytes(20)


def test_mac_switch_learns_floods_to_up_peers_and_keeps_peers_apart() -> None:
    a, b, c = _Peer("a"), _Peer("b"), _Peer("c", up=False)
    peers = [a, b, c]
    macs = MacTable()
    sw: MacSwitch[_Peer] = MacSwitch(macs, lambda: peers, client_to_client=False)
    ma, mb = b"\x02\x00\x00\x00\x00\x0a", b"\x02\x00\x00\x00\x00\x0b"
    res = sw.inbound([(a, _eth(b"\xff" * 6, ma)), (b, _eth(ma, mb))], 1.0, whole=True)
    assert len(res.to_device) == 1 and not res.forward  # the broadcast; b->a refused
    assert b.stats.drops["client_to_client"] == 1
    drops: collections.Counter[str] = collections.Counter()
    out = {p.name: len(fs) for p, fs in sw.outbound(
        [_eth(ma, b"\x02" + bytes(5)), _eth(b"\xff" * 6, b"\x02" + bytes(5))], 1.0, drops)}
    assert out == {"a": 2, "b": 1}  # unicast to a; the flood to the peers that are up
