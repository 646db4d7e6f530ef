"""What a pushed configuration must not do to the client's path to its server."""

from __future__ import annotations

from tunconnector.proto.openvpn.push import (
    ifconfig_conflict,
    routes_covering,
    underlay_overlaps,
)

SERVER = "198.51.100.7"


def test_routes_covering_the_server() -> None:
    routes = [("198.51.100.7/32", None), ("198.0.0.0/8", "10.8.0.1"), ("10.9.0.0/16", None),
              ("0.0.0.0/1", None), ("128.0.0.0/1", None), ("2001:db8::/32", None)]
    assert routes_covering(routes, SERVER) == ["198.51.100.7/32", "198.0.0.0/8",
                                               "128.0.0.0/1"]
    assert routes_covering(routes, "2001:db8::1") == ["2001:db8::/32"]
    assert routes_covering([("10.9.0.0/16", None)], SERVER) == []
    assert routes_covering(routes, "not-an-address") == []


def test_ifconfig_equal_to_or_covering_the_server() -> None:
    assert "own address" in (ifconfig_conflict(("198.51.100.7/24",), SERVER) or "")
    assert "contains" in (ifconfig_conflict(("198.51.100.9/24",), SERVER) or "")
    assert ifconfig_conflict(("198.51.100.9/32",), SERVER) is None
    assert ifconfig_conflict(("10.8.0.2/24", "fd00::2/64"), SERVER) is None
    assert ifconfig_conflict(("10.8.0.2/24",), "2001:db8::1") is None


def test_ifconfig_inside_the_underlay_subnet() -> None:
    underlay = ["192.168.1.20/24", "127.0.0.1/8", "fe80::1/64"]
    assert underlay_overlaps(("192.168.1.200/24",), underlay) == [
        ("192.168.1.200/24", "192.168.1.20/24")]
    assert underlay_overlaps(("192.168.0.2/16",), underlay) == [
        ("192.168.0.2/16", "192.168.1.20/24")]
    assert underlay_overlaps(("10.8.0.2/24",), underlay) == []
