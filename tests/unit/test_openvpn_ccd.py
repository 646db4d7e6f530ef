"""Client configs (client-config-dir files, client-connect output): parsed as openvpn
reads them (options.c), push operations as push.c applies them, and one server handing
the result to our client."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path
from typing import Any

from tunconnector.proto.connection import ConfigAssigned, Disconnected
from tunconnector.proto.openvpn.ccd import (
    ClientConfig,
    apply_push,
    exclusive_allows,
    lookup,
    parse_client_config,
)
from tunconnector.proto.openvpn.server import OpenVPNServer, OpenVPNServerSession

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

ALICE_CCD = """\
# alice's LAN is behind her
ifconfig-push 10.8.0.50 255.255.255.0
iroute 192.168.50.0 255.255.255.0
iroute-ipv6 2001:db8:50::/48
push "route 172.16.0.0 255.255.0.0"
"""


def test_parse_reads_every_instance_option_and_refuses_config() -> None:
    cfg = parse_client_config(ALICE_CCD + "ifconfig-ipv6-push 2001:db8::50/64\n"
                              "push-remove dhcp-option\npush-reset\ndisable\n"
                              "config other.conf\niroute 10.1.2.3 255.255.0.0\n"
                              "ifconfig-push nonsense 255.255.255.0\nfrobnicate 1\n"
                              "--iroute 10.9.9.9\n")
    assert cfg.ifconfig_push == (ipaddress.IPv4Address("10.8.0.50"),
                                 ipaddress.IPv4Address("255.255.255.0"), None)
    assert cfg.ifconfig_ipv6_push == (ipaddress.IPv6Interface("2001:db8::50/64"), None)
    assert [str(n) for n in cfg.iroutes] == ["192.168.50.0/24", "10.1.0.0/16",
                                             "10.9.9.9/32"]
    assert [str(n) for n in cfg.iroutes_ipv6] == ["2001:db8:50::/48"]
    assert cfg.push_ops == [("push", "route 172.16.0.0 255.255.0.0"),
                            ("push-remove", "dhcp-option"), ("push-reset", "")]
    assert cfg.disable
    assert len(cfg.errors) == 3 and "config" in cfg.errors[0]
    assert "ifconfig-push" in cfg.errors[1] and "frobnicate" in cfg.errors[2]


GLOBAL = ["route 10.9.0.0 255.255.0.0", "route-ipv6 2001:db8:9::/48",
          "dhcp-option DNS 10.8.0.1", "route-gateway 10.8.0.1", "topology subnet",
          "ping 10", "ping-restart 60"]


def test_push_reset_empties_everything_so_far_as_openvpn_does() -> None:
    res = apply_push(GLOBAL, parse_client_config(
        'push "route 10.1.0.0 255.255.0.0"\npush-reset\npush "topology subnet"\n'
    ).push_ops)
    # push_reset is CLEAR(push_list): also route-gateway, topology, ping (helper.c's)
    assert res.push == ["topology subnet"]


def test_push_remove_is_a_prefix_match_and_ifconfig_is_special() -> None:
    res = apply_push(GLOBAL, parse_client_config(
        "push-remove route\npush-remove ifconfig\npush-remove ifconfig-ipv6\n"
        'push "route 10.2.0.0 255.255.0.0"\n').push_ops)
    # strncmp(option, "route", 5): route-gateway and route-ipv6 go too
    assert res.push == ["dhcp-option DNS 10.8.0.1", "topology subnet", "ping 10",
                        "ping-restart 60", "route 10.2.0.0 255.255.0.0"]
    assert res.block_ifconfig and res.block_ifconfig_ipv6


def test_lookup_default_and_ccd_exclusive() -> None:
    alice, default = parse_client_config(ALICE_CCD), parse_client_config("push-reset\n")
    configs = {"alice": alice, "DEFAULT": default}
    assert lookup(configs, "alice") is alice and lookup(configs, "bob") is default
    assert lookup({}, "bob") is None
    assert exclusive_allows(configs, "alice")
    assert not exclusive_allows(configs, "bob") and not exclusive_allows(configs, "DEFAULT")
    assert not exclusive_allows(configs, None)


def test_script_output_extends_the_ccd_file() -> None:
    ccd = parse_client_config(ALICE_CCD)
    script = parse_client_config("ifconfig-push 10.8.0.60 255.255.255.0\n"
                                 "iroute 192.168.60.0 255.255.255.0\npush-reset\n")
    both = ccd.extend(script)
    assert both.ifconfig_push is not None and str(both.ifconfig_push[0]) == "10.8.0.60"
    assert [str(n) for n in both.iroutes] == ["192.168.50.0/24", "192.168.60.0/24"]
    assert both.push_ops[-1] == ("push-reset", "")


def _connect(server: OpenVPNServer, addr: tuple[str, int] = CLIENT_ADDR,
             **ckw: Any) -> Link:
    link = Link(server, OpenVPNClient(client_options(**ckw), peer=SERVER_ADDR), addr)
    link.client.start(0.0)
    link.pump(5.0)
    return link


def _assigned(link: Link) -> ConfigAssigned:
    assert link.connected(), link.client_events
    return next(e for e in link.client_events if isinstance(e, ConfigAssigned))


def test_ccd_address_and_iroute_reach_the_client_and_the_router() -> None:
    configs = {"alice": parse_client_config(ALICE_CCD +
                                            "ifconfig-ipv6-push 2001:db8::50/64\n")}
    server = OpenVPNServer(server_options(client_configs=configs,
                                          network6="2001:db8::/64"))
    link = _connect(server)
    assigned = _assigned(link)
    assert assigned.extra["ifconfig"] == ("10.8.0.50", "255.255.255.0")
    assert assigned.extra["ifconfig_ipv6"] == ("2001:db8::50/64", "2001:db8::1")
    assert ("172.16.0.0/16", None) in assigned.routes
    session: OpenVPNServerSession = link.session()
    assert server.pool.in_use() == []  # ifconfig-push takes nothing from the pool
    for addr in ("192.168.50.7", "10.8.0.50", "2001:db8:50::1", "2001:db8::50"):
        assert server.router.lookup(addr) == session.peer_id, addr
    assert server.router.lookup("192.168.51.1") is None
    assert session.status(link.now)["iroutes"] == ["192.168.50.0/24", "2001:db8:50::/48"]
    server.close_session(session, link.now)
    assert server.router.lookup("192.168.50.7") is None


def test_ccd_push_reset_and_remove_shape_the_push_reply() -> None:
    configs = {"DEFAULT": parse_client_config(
        'push-remove route\npush-reset\npush "route-gateway 10.8.0.1"\n'
        'push "topology subnet"\npush "ping 5"\n')}
    server = OpenVPNServer(server_options(client_configs=configs))
    link = _connect(server)
    _assigned(link)
    reply = link.session().push_reply_messages()[0].split(",")
    assert reply[1:4] == ["route-gateway 10.8.0.1", "topology subnet", "ping 5"]
    assert "route 10.9.0.0 255.255.0.0" not in reply and "ping-restart 60" not in reply
    assert reply[4] == "ifconfig 10.8.0.2 255.255.255.0"
    blocked = OpenVPNServer(server_options(
        client_configs={"DEFAULT": parse_client_config("push-remove ifconfig\n")}))
    link = _connect(blocked)
    assert not any(p.startswith("ifconfig ")
                   for p in link.session().push_reply_messages()[0].split(","))


def _refused(link: Link) -> str:
    down = [e for e in link.client_events if isinstance(e, Disconnected)]
    assert down and not link.connected()
    return str(down[0].reason)


def test_ccd_exclusive_refuses_a_name_without_its_own_file() -> None:
    configs = {"alice": parse_client_config(ALICE_CCD),
               "DEFAULT": parse_client_config("")}
    server = OpenVPNServer(server_options(client_configs=configs, ccd_exclusive=True))
    assert _assigned(_connect(server)).extra["ifconfig"][0] == "10.8.0.50"
    bob = _connect(server, ("198.51.100.8", 1), cert=BOB)
    assert "AUTH_FAILED" in _refused(bob)


def test_disable_refuses_the_client() -> None:
    server = OpenVPNServer(server_options(
        client_configs={"alice": parse_client_config("disable\n")}))
    assert "AUTH_FAILED" in _refused(_connect(server))
    _assigned(_connect(server, ("198.51.100.8", 1), cert=BOB))  # bob has no file


class _ScriptServer(OpenVPNServer):
    """Answers every AuthRequest with a client-connect script's output."""

    script = ClientConfig()

    def auth_result(self, session: OpenVPNServerSession, ok: bool, now: float,
                    reason: str = "", client_config: ClientConfig | None = None) -> None:
        super().auth_result(session, ok, now, reason, self.script)


def test_client_connect_output_is_applied_after_the_ccd_file() -> None:
    server = _ScriptServer(server_options(
        auth_user_pass_verify=True,
        client_configs={"alice": parse_client_config(ALICE_CCD)}))
    server.script = parse_client_config("ifconfig-push 10.8.0.60 255.255.255.0\n"
                                        'push "dhcp-option DNS 10.8.0.1"\n')
    link = Link(server, OpenVPNClient(client_options(username="alice", password="pw"),
                                      peer=SERVER_ADDR), CLIENT_ADDR,
                auth=lambda req: (True, ""))
    link.client.start(0.0)
    link.pump(5.0)
    assigned = _assigned(link)
    assert assigned.extra["ifconfig"] == ("10.8.0.60", "255.255.255.0")
    reply = link.session().push_reply_messages()[0]
    assert "route 172.16.0.0 255.255.0.0,dhcp-option DNS 10.8.0.1" in reply
    assert server.router.lookup("192.168.50.1") == link.session().peer_id


def test_a_reloaded_ccd_reconnects_only_the_clients_it_changed() -> None:
    configs = {"alice": parse_client_config(ALICE_CCD)}
    server = OpenVPNServer(server_options(client_configs=configs))
    alice = _connect(server)
    bob = _connect(server, ("198.51.100.8", 1), cert=BOB)
    a, b = alice.session(), bob.session()
    assert server.set_client_configs(dict(configs), 6.0) == []  # same text: nothing
    changed = {"alice": parse_client_config("ifconfig-push 10.8.0.70 255.255.255.0\n")}
    assert server.set_client_configs(changed, 6.0) == [a]
    assert a.closed and not b.closed
    assert server.router.lookup("192.168.50.1") is None
    again = _connect(server, ("198.51.100.9", 2))
    assert _assigned(again).extra["ifconfig"] == ("10.8.0.70", "255.255.255.0")
    # with ccd-exclusive, a reload ends the clients that have no file of their own
    server.options.ccd_exclusive = True
    assert server.set_client_configs(changed, 7.0) == [b]
