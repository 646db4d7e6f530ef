"""pull-filter, route-nopull and the config's own routes."""

from __future__ import annotations

from tunconnector.ovpnconfig import parse
from tunconnector.proto.openvpn.pullfilter import filter_pushed
from tunconnector.proto.openvpn.push import parse_options

PUSH = parse_options("route 10.77.0.0 255.255.0.0,route-gateway 10.8.0.1,"
                     "dhcp-option DNS 10.8.0.1,redirect-gateway def1,topology subnet,"
                     "ifconfig 10.8.0.2 255.255.255.0,push-continuation 2")


def _names(opts: list[list[str]]) -> list[str]:
    return [o[0] for o in opts]


def test_first_matching_filter_decides() -> None:
    kept, rejected = filter_pushed(PUSH, [("accept", "route 10.77."), ("ignore", "route"),
                                          ("ignore", "dhcp-option")], False)
    assert rejected is None
    # "route" also matches route-gateway (a prefix, as openvpn); push-continuation stays
    assert _names(kept) == ["route", "redirect-gateway", "topology", "ifconfig",
                            "push-continuation"]
    kept, rejected = filter_pushed(PUSH, [("reject", "redirect-gateway")], False)
    assert rejected == "redirect-gateway def1"


def test_route_nopull() -> None:
    kept, _ = filter_pushed(PUSH, [], True)
    assert _names(kept) == ["route-gateway", "topology", "ifconfig", "push-continuation"]


def test_config_directives() -> None:
    ca = "<ca>\nx\n</ca>\n<cert>\nc\n</cert>\n<key>\nk\n</key>\n"
    o = parse("client\nremote a\npull-filter ignore \"dhcp-option\"\nroute-nopull\n"
              "route 192.0.2.0 255.255.255.0\nroute 198.51.100.7\n"
              "route-ipv6 2001:db8::/32\n" + ca, "t").options
    assert o.pull_filters == [("ignore", "dhcp-option")] and o.route_nopull
    assert o.routes == [["route", "192.0.2.0", "255.255.255.0"], ["route", "198.51.100.7"],
                        ["route-ipv6", "2001:db8::/32"]]
