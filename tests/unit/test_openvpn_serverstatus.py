"""A server's status file in openvpn 2.6's three formats (``multi_print_status``)."""

from __future__ import annotations

import time

import pytest

from tunconnector.proto.openvpn.serverstatus import (
    ClientRow,
    RouteRow,
    ServerSnapshot,
    parse_status,
    real_address,
    route_address,
    status_lines,
    status_text,
)

NOW = 1700000000  # 2023-11-14 22:13:20 UTC
TITLE = "OpenVPN 2.6.14 x86_64-pc-linux-gnu [SSL (OpenSSL)] [LZO] [LZ4] [EPOLL] [AEAD]"

SNAP = ServerSnapshot(
    now=NOW,
    clients=(
        ClientRow("alice", real_address("198.51.100.7", 51234), "10.8.0.6", "fd00::1000",
                  12345, 67890, NOW - 1000, "", 0, 0, "AES-256-GCM"),
        ClientRow("bob", real_address("2001:db8::5", 1194), "10.8.0.10", "", 5, 7,
                  NOW - 100, "bob", 3, 1, "CHACHA20-POLY1305"),
    ),
    routes=(
        RouteRow(route_address("10.8.0.6"), "alice", "198.51.100.7:51234", NOW - 10),
        RouteRow(route_address("fd00::1000"), "alice", "198.51.100.7:51234", NOW - 10),
        RouteRow(route_address("192.168.50.0/24"), "bob", "2001:db8::5", NOW - 50),
        RouteRow(route_address("10.8.0.10"), "bob", "2001:db8::5", NOW - 50, cached=True),
    ),
    max_bcast_queue=2,
    title=TITLE,
)

V1 = """\
OpenVPN CLIENT LIST
Updated,2023-11-14 22:13:20
Common Name,Real Address,Bytes Received,Bytes Sent,Connected Since
alice,198.51.100.7:51234,12345,67890,2023-11-14 21:56:40
bob,2001:db8::5,5,7,2023-11-14 22:11:40
ROUTING TABLE
Virtual Address,Common Name,Real Address,Last Ref
10.8.0.6,alice,198.51.100.7:51234,2023-11-14 22:13:10
fd00::1000,alice,198.51.100.7:51234,2023-11-14 22:13:10
192.168.50.0/24,bob,2001:db8::5,2023-11-14 22:12:30
10.8.0.10C,bob,2001:db8::5,2023-11-14 22:12:30
GLOBAL STATS
Max bcast/mcast queue length,2
END
"""

V2 = f"""\
TITLE,{TITLE}
TIME,2023-11-14 22:13:20,1700000000
HEADER,CLIENT_LIST,Common Name,Real Address,Virtual Address,Virtual IPv6 Address,\
Bytes Received,Bytes Sent,Connected Since,Connected Since (time_t),Username,Client ID,\
Peer ID,Data Channel Cipher
CLIENT_LIST,alice,198.51.100.7:51234,10.8.0.6,fd00::1000,12345,67890,\
2023-11-14 21:56:40,1699999000,UNDEF,0,0,AES-256-GCM
CLIENT_LIST,bob,2001:db8::5,10.8.0.10,,5,7,2023-11-14 22:11:40,1699999900,bob,3,1,\
CHACHA20-POLY1305
HEADER,ROUTING_TABLE,Virtual Address,Common Name,Real Address,Last Ref,Last Ref (time_t)
ROUTING_TABLE,10.8.0.6,alice,198.51.100.7:51234,2023-11-14 22:13:10,1699999990
ROUTING_TABLE,fd00::1000,alice,198.51.100.7:51234,2023-11-14 22:13:10,1699999990
ROUTING_TABLE,192.168.50.0/24,bob,2001:db8::5,2023-11-14 22:12:30,1699999950
ROUTING_TABLE,10.8.0.10C,bob,2001:db8::5,2023-11-14 22:12:30,1699999950
GLOBAL_STATS,Max bcast/mcast queue length,2
GLOBAL_STATS,dco_enabled,0
END
"""


def test_version_1_as_openvpn() -> None:
    assert status_text(SNAP, 1, time.gmtime) == V1


def test_version_2_as_openvpn() -> None:
    assert status_text(SNAP, 2, time.gmtime) == V2


def test_version_3_is_version_2_with_tabs() -> None:
    # no field here holds a comma: version 3 is version 2 with tabs for commas
    assert status_text(SNAP, 3, time.gmtime) == V2.replace(",", "\t")


def test_bad_version_is_openvpns_error_line() -> None:
    assert status_lines(SNAP, 4) == ["ERROR: bad status format version number"]


def test_empty_server() -> None:
    lines = status_lines(ServerSnapshot(NOW, dco=True), 2, time.gmtime)
    assert lines[2].startswith("HEADER,CLIENT_LIST,")
    assert lines[3].startswith("HEADER,ROUTING_TABLE,")
    assert lines[4:] == ["GLOBAL_STATS,Max bcast/mcast queue length,0",
                         "GLOBAL_STATS,dco_enabled,1", "END"]


def test_missing_common_name_is_undef() -> None:
    snap = ServerSnapshot(NOW, (ClientRow("", "192.0.2.1:1194"),))
    assert status_lines(snap, 1, time.gmtime)[3] == (
        "UNDEF,192.0.2.1:1194,0,0,1970-01-01 00:00:00")


@pytest.mark.parametrize(("host", "port", "printed"), [
    ("192.0.2.1", 1194, "192.0.2.1:1194"),
    ("::ffff:192.0.2.1", 5000, "192.0.2.1:5000"),  # v4-mapped: printed as IPv4
    ("2001:db8::1", 1194, "2001:db8::1"),  # 2.6 prints no port for IPv6
    ("fe80::1%eth0", 1194, "fe80::1"),
])
def test_real_address(host: str, port: int, printed: str) -> None:
    assert real_address(host, port) == printed


@pytest.mark.parametrize(("network", "printed"), [
    ("10.8.0.6", "10.8.0.6"),
    ("10.8.0.6/32", "10.8.0.6"),  # an iroute of one host is a host route
    ("10.9.0.0/16", "10.9.0.0/16"),
    ("10.9.1.1/16", "10.9.0.0/16"),
    ("fd00::1000", "fd00::1000"),
    ("fd00:1::/64", "fd00:1::/64"),
])
def test_route_address(network: str, printed: str) -> None:
    assert route_address(network) == printed


@pytest.mark.parametrize("version", [2, 3])
def test_parse_round_trip(version: int) -> None:
    back = parse_status(status_text(SNAP, version, time.gmtime))
    assert back == ServerSnapshot(NOW, SNAP.clients, SNAP.routes, 2, TITLE)


@pytest.mark.parametrize(("text", "match"), [
    ("OpenVPN CLIENT LIST\nEND\n", "not a status-version 2 or 3"),
    ("TITLE,x\nTIME,t,1\n", "without END"),
    ("TITLE,x\nHEADER,CLIENT_LIST,Common Name\nEND\n", "unexpected header"),
    ("TITLE,x\nCLIENT_LIST,a,b\nEND\n", "unexpected status line"),
    ("TITLE,x\nTIME\nEND\n", "short status line"),
])
def test_parse_refuses(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_status(text)
