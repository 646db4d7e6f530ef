"""openvpn's server addressing: ``server``/``server-ipv6``/``server-bridge`` expansion
(helper.c), the handle pool and its persist file (pool.c), the pushed ifconfig strings
(multi.c, push.c); and one server handing them to our client."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tunconnector.errors import ConfigError
from tunconnector.proto.connection import ConfigAssigned
from tunconnector.proto.openvpn.ifpool import IfconfigPool, format_persist, parse_persist
from tunconnector.proto.openvpn.server import OpenVPNServer
from tunconnector.proto.openvpn.servernet import expand_server, ifconfig_push

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.unit.test_openvpn_server import (  # noqa: E402
    BOB,
    CLIENT_ADDR,
    SERVER_ADDR,
    Link,
    OpenVPNClient,
    client_options,
    server_options,
)


def test_topology_subnet_expands_as_openvpn() -> None:
    net = expand_server("10.8.0.0/24")
    assert net.push == ("route-gateway 10.8.0.1", "topology subnet")
    assert net.pool4 == ("10.8.0.2", "10.8.0.254") and str(net.local4) == "10.8.0.1"
    pool = net.make_pool()
    assert pool is not None and pool.size == 253
    assert ifconfig_push(net, pool.lease(0)) == ["ifconfig 10.8.0.2 255.255.255.0"]


def test_topology_net30_gives_each_client_a_slash_30() -> None:
    net = expand_server("10.8.0.0/24", topology="net30")
    # helper.c: pool from network+4 to broadcast-4, "route SERVER", then the topology
    assert net.push == ("route 10.8.0.1", "topology net30")
    assert net.pool4 == ("10.8.0.4", "10.8.0.251") and net.routes == ("10.8.0.0/24",)
    pool = net.make_pool()
    assert pool is not None and pool.size == 62  # .4/30 to .248/30 (pool.c)
    first, second = pool.acquire("a"), pool.acquire("b")
    assert first is not None and second is not None
    # multi_select_virtual_addr: the client is .6, it points at .5 (the /30's first host)
    assert ifconfig_push(net, first) == ["ifconfig 10.8.0.6 10.8.0.5"]
    assert ifconfig_push(net, second) == ["ifconfig 10.8.0.10 10.8.0.9"]
    c2c = expand_server("10.8.0.0/24", topology="net30", client_to_client=True)
    assert c2c.push == ("route 10.8.0.0 255.255.255.0", "topology net30")
    assert expand_server("10.8.0.0/29", topology="net30").pool4 == ("10.8.0.4", "10.8.0.7")


def test_p2p_tap_and_server_bridge_push_what_openvpn_pushes() -> None:
    p2p = expand_server("10.8.0.0/24", topology="p2p")
    assert p2p.push == ("topology p2p",)
    pool = p2p.make_pool()
    assert pool is not None and not pool.net30
    assert ifconfig_push(p2p, pool.lease(0)) == ["ifconfig 10.8.0.4 10.8.0.1"]
    tap = expand_server("10.8.0.0/24", tap=True)
    assert tap.push == ("route-gateway 10.8.0.1",) and tap.topology is None
    bridge = expand_server(bridge=("192.168.8.4", "255.255.255.0", "192.168.8.128",
                                   "192.168.8.254"), tap=True)
    assert bridge.push == ("route-gateway 192.168.8.4",) and bridge.local4 is None
    pool = bridge.make_pool()
    assert pool is not None and pool.size == 127
    assert ifconfig_push(bridge, pool.lease(0)) == ["ifconfig 192.168.8.128 255.255.255.0"]
    with pytest.raises(ConfigError):
        expand_server(bridge=("192.168.8.4", "255.255.255.0", "192.168.9.1", "192.168.9.9"))


@pytest.mark.parametrize("kw", [{"network": "10.8.0.0/30"}, {"network": "10.0.0.0/8"},
                                {"network": "10.8.0.0/24", "topology": "mesh"},
                                {"network6": "2001:db8::/48"}])
def test_bad_server_lines_are_config_errors(kw: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        expand_server(**kw)


def test_server_ipv6_pool_and_push() -> None:
    net = expand_server("10.8.0.0/24", network6="2001:db8:0:123::/64")
    assert net.push == ("tun-ipv6", "route-gateway 10.8.0.1", "topology subnet")
    assert net.pool6 == ("2001:db8:0:123::1000", 64)
    pool = net.make_pool()
    assert pool is not None and pool.size == 253  # the smaller of the two
    lease = pool.acquire("a")
    assert lease is not None
    assert ifconfig_push(net, lease) == [
        "ifconfig-ipv6 2001:db8:0:123::1000/64 2001:db8:0:123::1",
        "ifconfig 10.8.0.2 255.255.255.0"]
    small = expand_server(None, network6="2001:db8::/120")
    assert small.pool6 == ("2001:db8::2", 120) and small.push == ("tun-ipv6",)
    pool = small.make_pool()
    assert pool is not None and pool.size == 254  # 256 - base (pool.c)
    lease = pool.acquire("a")
    assert lease is not None and ifconfig_push(small, lease) == [
        "ifconfig-ipv6 2001:db8::2/120 2001:db8::1"]
    # a pool starting at ::0 skips the anycast address
    assert str(IfconfigPool(ipv6=("2001:db8::", 64)).ipv6_of(0)) == "2001:db8::1"


def test_pool_keeps_a_name_on_its_handle_and_reuses_the_oldest_release() -> None:
    pool = IfconfigPool(("10.8.0.2", "10.8.0.5"))
    a, b, c = (pool.acquire(n) for n in "abc")
    assert a is not None and b is not None and c is not None
    pool.release(b.handle, now=10.0)
    pool.release(a.handle, now=20.0)
    again = pool.acquire("a")
    assert again is not None and again.ipv4 == a.ipv4  # its own, not the older b's
    d = pool.acquire("d")
    assert d is not None and d.handle == 3  # never-used handles count as released at 0
    e = pool.acquire("e")
    assert e is not None and e.ipv4 == b.ipv4  # then the oldest release (b's)
    assert pool.acquire("f") is None
    pool.release(e.handle, now=30.0, hard=True)
    assert pool.entries[e.handle].common_name is None


def test_duplicate_cn_pool_takes_the_first_free_and_remembers_no_name() -> None:
    pool = IfconfigPool(("10.8.0.2", "10.8.0.9"), duplicate_cn=True)
    a, b = pool.acquire("x"), pool.acquire("x")
    assert a is not None and b is not None and (a.handle, b.handle) == (0, 1)
    pool.release(a.handle, now=5.0)
    assert pool.listing() == []
    again = pool.acquire("x")
    assert again is not None and again.handle == 0


def test_persist_file_round_trip_in_openvpns_format() -> None:
    net = expand_server("10.8.0.0/24", topology="net30", network6="2001:db8::/64")
    pool = net.make_pool()
    assert pool is not None
    for name in ("alice", "bob"):
        assert pool.acquire(name) is not None
    text = format_persist(pool)
    # ifconfig_pool_list: the /30's network for net30, and the IPv6 of the same handle
    assert text == "alice,10.8.0.4,2001:db8::1000\nbob,10.8.0.8,2001:db8::1001\n"
    fresh = net.make_pool()
    assert fresh is not None
    assert fresh.load(parse_persist("# comment\n;x\n" + text), fixed=False, now=0.0) == 2
    bob = fresh.acquire("bob")
    assert bob is not None and str(bob.ipv4) == "10.8.0.10" and str(bob.ipv6) == \
        "2001:db8::1001"


def test_persist_file_lines_openvpn_accepts_and_ignores() -> None:
    pool = IfconfigPool(("10.8.0.2", "10.8.0.254"), ipv6=("2001:db8::1000", 64))
    entries = parse_persist("a,10.8.0.7\nb,,2001:db8::1003\nc,10.9.0.1,2001:db8::1010\n"
                            "d,nonsense,\ne\nf,10.8.0.20,2001:db8::1001\n")
    assert entries[0] == ("a", "10.8.0.7", "") and ("e", "", "") not in entries
    assert pool.load(entries, fixed=False, now=0.0) == 4
    # IPv4 out of range falls back to the IPv6's handle; both valid: IPv4 wins
    assert [(cn, v4) for cn, v4, _ in pool.listing()] == [
        ("b", "10.8.0.5"), ("a", "10.8.0.7"), ("c", "10.8.0.18"), ("f", "10.8.0.20")]


def test_fixed_persist_entries_go_to_no_one_else() -> None:
    pool = IfconfigPool(("10.8.0.2", "10.8.0.3"))
    pool.load([("alice", "10.8.0.2", "")], fixed=True, now=0.0)
    other = pool.acquire("bob")
    assert other is not None and str(other.ipv4) == "10.8.0.3"
    assert pool.acquire("carol") is None
    alice = pool.acquire("alice")
    assert alice is not None and str(alice.ipv4) == "10.8.0.2"


def _connect(server: OpenVPNServer, addr: tuple[str, int] = CLIENT_ADDR,
             **ckw: Any) -> tuple[Link, ConfigAssigned]:
    link = Link(server, OpenVPNClient(client_options(**ckw), peer=SERVER_ADDR), addr)
    link.client.start(0.0)
    link.pump(5.0)
    assert link.connected()
    return link, next(e for e in link.client_events if isinstance(e, ConfigAssigned))


def test_net30_and_ipv6_client_configures_from_the_push() -> None:
    server = OpenVPNServer(server_options(topology="net30", network6="2001:db8::/64"))
    link, assigned = _connect(server)
    assert assigned.extra["ifconfig"] == ("10.8.0.6", "10.8.0.5")
    assert assigned.extra["ifconfig_ipv6"] == ("2001:db8::1000/64", "2001:db8::1")
    assert assigned.extra["topology"] == "net30"
    st = link.session().status(link.now)
    assert st["address"] == "10.8.0.6" and st["address6"] == "2001:db8::1000"


def test_server_restart_with_the_persist_file_gives_the_same_addresses() -> None:
    first = OpenVPNServer(server_options())
    _connect(first)                                       # alice: 10.8.0.2
    _, bob = _connect(first, ("198.51.100.8", 1), cert=BOB)
    assert bob.extra["ifconfig"] == ("10.8.0.3", "255.255.255.0")
    text = first.pool_file()
    second = OpenVPNServer(server_options())
    assert second.load_pool(text, now=0.0) == 2
    _, bob = _connect(second, ("198.51.100.8", 1), cert=BOB)  # bob first this time
    assert bob.extra["ifconfig"] == ("10.8.0.3", "255.255.255.0")


def test_a_client_that_left_gets_its_address_back_after_another_connected() -> None:
    server = OpenVPNServer(server_options())
    alice, assigned = _connect(server)
    assert assigned.extra["ifconfig"][0] == "10.8.0.2"
    server.close_session(alice.session(), alice.now)
    _, bob = _connect(server, ("198.51.100.8", 1), cert=BOB)
    assert bob.extra["ifconfig"][0] == "10.8.0.3"  # .2 still carries alice's name
    _, again = _connect(server, ("198.51.100.9", 2))
    assert again.extra["ifconfig"][0] == "10.8.0.2"


def test_nopool_with_an_explicit_ifconfig_pool() -> None:
    net = expand_server("10.8.0.0/24", nopool=True, pool=("10.8.0.100", "10.8.0.149", None))
    pool = net.make_pool()
    assert pool is not None and pool.size == 50
    assert ifconfig_push(net, pool.lease(0)) == ["ifconfig 10.8.0.100 255.255.255.0"]
    assert expand_server("10.8.0.0/24", nopool=True).make_pool() is None
    net30 = expand_server("10.8.0.0/24", topology="net30", nopool=True,
                          pool=("10.8.0.64", "10.8.0.127", None))
    pool = net30.make_pool()
    assert pool is not None and pool.size == 16
    assert ifconfig_push(net30, pool.lease(1)) == ["ifconfig 10.8.0.70 10.8.0.69"]
    with pytest.raises(ConfigError, match="nopool"):
        expand_server("10.8.0.0/24", pool=("10.8.0.100", "10.8.0.149", None))
    with pytest.raises(ConfigError):
        expand_server("10.8.0.0/24", nopool=True, pool=("10.8.0.149", "10.8.0.100", None))


def test_script_environment_names_the_addresses_as_openvpn() -> None:
    server = OpenVPNServer(server_options(topology="net30", network6="2001:db8::/64"))
    link, _ = _connect(server)
    assert link.session().address_env() == {
        "ifconfig_pool_remote_ip": "10.8.0.6", "ifconfig_pool_local_ip": "10.8.0.5",
        "ifconfig_pool_remote_ip6": "2001:db8::1000",
        "ifconfig_pool_local_ip6": "2001:db8::1", "ifconfig_pool_ip6_netbits": "64"}
    subnet = OpenVPNServer(server_options())
    link, _ = _connect(subnet)
    assert link.session().address_env() == {"ifconfig_pool_remote_ip": "10.8.0.2",
                                            "ifconfig_pool_netmask": "255.255.255.0"}


def test_explicit_ifconfig_ipv6_pool() -> None:
    net = expand_server("10.8.0.0/24", pool6="2001:db8:1::100/64",
                        ifconfig6="2001:db8:1::1/64")
    assert "tun-ipv6" not in net.push  # only server-ipv6 pushes it
    pool = net.make_pool()
    assert pool is not None
    lease = pool.acquire("a")
    assert lease is not None and ifconfig_push(net, lease) == [
        "ifconfig-ipv6 2001:db8:1::100/64 2001:db8:1::1", "ifconfig 10.8.0.2 255.255.255.0"]
    with pytest.raises(ConfigError, match="already defines"):
        expand_server(network6="2001:db8::/64", pool6="2001:db8:1::100/64",
                      ifconfig6="2001:db8:1::1/64")
    with pytest.raises(ConfigError):
        expand_server(pool6="2001:db8:1::100/64")
