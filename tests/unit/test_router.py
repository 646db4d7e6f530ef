"""The hub router: longest-prefix match and anti-spoofing (no root, no sockets)."""

from __future__ import annotations

import ipaddress

from tunconnector.proto.router import DROP, FORWARD, TO_DEVICE, Router


def ip4(src: str, dst: str, payload: bytes = b"x" * 8) -> bytes:
    total = 20 + len(payload)
    return (bytes([0x45, 0]) + total.to_bytes(2, "big") + bytes(4) + bytes([64, 17, 0, 0])
            + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + payload)


def ip6(src: str, dst: str) -> bytes:
    return (bytes([0x60, 0, 0, 0]) + (8).to_bytes(2, "big") + bytes([17, 64])
            + ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed + bytes(8))


def make(c2c: bool = True) -> Router:
    r = Router(client_to_client=c2c)
    r.set_peer("a", ["10.220.0.50/32", "192.168.10.0/24"])
    r.set_peer("b", ["10.220.0.2/32", "192.168.0.0/16", "fd00:b::/64"])
    r.set_peer("c", ["10.220.0.3/32", "192.168.10.128/25"])
    return r


def test_longest_prefix_wins() -> None:
    r = make()
    assert r.outbound(ip4("10.220.0.1", "10.220.0.50")) == "a"
    assert r.outbound(ip4("10.220.0.1", "192.168.10.7")) == "a"      # /24 beats /16
    assert r.outbound(ip4("10.220.0.1", "192.168.10.200")) == "c"    # /25 beats /24
    assert r.outbound(ip4("10.220.0.1", "192.168.99.1")) == "b"      # only the /16
    assert r.outbound(ip4("10.220.0.1", "10.9.9.9")) is None
    assert r.outbound(ip6("fd00::1", "fd00:b::7")) == "b"
    assert r.outbound(ip6("fd00::1", "fd00:c::7")) is None
    assert r.outbound(b"") is None and r.outbound(b"\x45" + bytes(5)) is None
    assert r.lookup("192.168.10.129") == "c"


def test_outbound_past_a_device_header() -> None:
    """``offset``: the packet starts after a device's virtio_net_hdr (not copied off)."""
    r = make()
    hdr = bytes(10)
    assert r.outbound(hdr + ip4("10.220.0.1", "192.168.10.200"), 10) == "c"
    assert r.outbound(hdr + ip6("fd00::1", "fd00:b::7"), 10) == "b"
    assert r.outbound(hdr, 10) is None and r.outbound(hdr + b"\x45" + bytes(5), 10) is None


def test_inbound_anti_spoofing() -> None:
    r = make()
    # a's own address and a's network are fine; to the hub side: the device
    assert r.inbound("a", ip4("10.220.0.50", "10.220.0.1")).action == TO_DEVICE
    assert r.inbound("a", ip4("192.168.10.9", "8.8.8.8")).action == TO_DEVICE
    # another peer's address, an unknown address, a more specific prefix of c: spoofed
    for src in ("10.220.0.2", "10.1.1.1", "192.168.10.200"):
        v = r.inbound("a", ip4(src, "10.220.0.1"))
        assert (v.action, v.reason) == (DROP, "spoofed_source"), src
    assert r.inbound("b", ip6("fd00:b::1", "fd00::1")).action == TO_DEVICE
    assert r.inbound("a", ip6("fd00:b::1", "fd00::1")).reason == "spoofed_source"
    assert r.inbound("a", b"\x00garbage").reason == "not_ip"
    assert r.inbound("b", ip6("fe80::1", "ff02::2")).reason == "link_local"


def test_client_to_client_on_and_off() -> None:
    on = make(True)
    v = on.inbound("a", ip4("10.220.0.50", "10.220.0.2"))
    assert (v.action, v.peer) == (FORWARD, "b")
    v = on.inbound("b", ip4("10.220.0.2", "192.168.10.5"))  # a network behind a
    assert (v.action, v.peer) == (FORWARD, "a")
    assert on.inbound("a", ip4("10.220.0.50", "10.220.0.50")).reason == "hairpin"
    off = make(False)
    v = off.inbound("a", ip4("10.220.0.50", "10.220.0.2"))
    assert (v.action, v.reason) == (DROP, "client_to_client")
    assert off.inbound("a", ip4("10.220.0.50", "10.220.0.1")).action == TO_DEVICE


def test_remove_and_replace_peer() -> None:
    r = make()
    r.remove_peer("c")
    assert r.outbound(ip4("10.220.0.1", "192.168.10.200")) == "a"
    r.set_peer("a", ["10.220.0.51/32"])  # changed: the old prefixes are gone
    assert r.outbound(ip4("10.220.0.1", "10.220.0.50")) is None
    assert r.outbound(ip4("10.220.0.1", "192.168.10.7")) == "b"
    assert r.prefixes("a") == [ipaddress.ip_network("10.220.0.51/32")]
    # a prefix two peers announced survives the removal of one of them
    r.set_peer("d", ["10.220.0.51/32"])
    r.remove_peer("d")
    assert r.lookup("10.220.0.51") == "a"


def test_thousand_peers() -> None:
    r = Router()
    for i in range(1000):
        r.set_peer(i, [f"10.{i // 250}.{i % 250}.1/32", f"172.16.{i % 256}.0/24"
                       if i < 256 else f"10.200.{i % 256}.0/24"])
    assert r.outbound(ip4("10.0.0.9", "10.3.249.1")) == 999
    assert r.outbound(ip4("10.0.0.9", "172.16.7.77")) == 7
