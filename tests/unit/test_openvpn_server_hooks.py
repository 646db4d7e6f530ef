"""The server's client-connect / client-disconnect hooks in openvpn's order, the password
asked again on renegotiation, the client's fallback from a refused auth-token to its
password, and openvpn's exact AUTH_FAILED texts."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tunconnector.proto.connection import (
    AuthRequest,
    ClientConnect,
    ClientDisconnect,
    ConfigAssigned,
    Disconnected,
    Rekeyed,
)
from tunconnector.proto.openvpn import client as client_mod
from tunconnector.proto.openvpn.ccd import parse_client_config
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
    roundtrip_data,
    server_options,
)

T0 = 1_800_000_000
KEY = bytes(range(32))
PEER_INFO = {"IV_VER": "2.6.14", "IV_PLAT": "linux", "IV_PROTO": "14", "IV_NCP": "2",
             "IV_CIPHERS": "AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305", "IV_TCPNL": "1",
             "IV_GUI_VER": "tunconnector"}


class _Clock:
    def __init__(self) -> None:
        self.t = float(T0)

    def __call__(self) -> float:
        return self.t


def _start(server: OpenVPNServer, until: float = 5.0, addr: tuple[str, int] = CLIENT_ADDR,
           auth: Any = None, **ckw: Any) -> Link:
    ckw.setdefault("username", "alice")
    ckw.setdefault("password", "secret")
    link = Link(server, OpenVPNClient(client_options(**ckw), peer=SERVER_ADDR), addr,
                auth=auth or (lambda req: (req.password == "secret", "bad password")))
    link.client.start(0.0)
    link.pump(until)
    return link


def _of(link: Link, kind: type, side: str = "server") -> list[Any]:
    events = link.server_events if side == "server" else link.client_events
    return [e for e in events if isinstance(e, kind)]


def _client_down(link: Link) -> Disconnected:
    down = _of(link, Disconnected, "client")
    assert down and not link.connected()
    return down[0]


# -- client-connect ----------------------------------------------------------------------

def test_client_connect_comes_after_the_address_with_openvpns_environment() -> None:
    server = OpenVPNServer(server_options(auth_user_pass_verify=True, client_connect=True,
                                          network6="2001:db8::/64"), wall=_Clock())
    link = _start(server)
    session: OpenVPNServerSession = link.session()
    # authenticated, address chosen, no PUSH_REPLY yet: the hook's answer is awaited
    kinds = [type(e) for e in link.server_events]
    assert kinds == [AuthRequest, ClientConnect]
    assert not link.connected() and session.state == "client-connect"
    (cc,) = _of(link, ClientConnect)
    assert cc.env == {
        **PEER_INFO, "script_type": "client-connect", "common_name": "alice",
        "username": "alice", "trusted_ip": "198.51.100.7", "trusted_port": "40000",
        "ifconfig_pool_remote_ip": "10.8.0.2", "ifconfig_pool_netmask": "255.255.255.0",
        "ifconfig_pool_remote_ip6": "2001:db8::1000", "ifconfig_pool_local_ip6": "2001:db8::1",
        "ifconfig_pool_ip6_netbits": "64", "time_unix": str(T0),
        "time_ascii": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T0))}
    assert server.pool.in_use() != []
    # the script's file: another address (the pool's goes back), a route, a push
    out = parse_client_config('ifconfig-push 10.8.0.60 255.255.255.0\n'
                              'iroute 192.168.70.0 255.255.255.0\n'
                              'push "dhcp-option DNS 10.8.0.1"\n')
    server.client_connect_result(session, True, link.now, out)
    link.pump(link.now + 1.0)  # no PUSH_REQUEST retry needed: the reply left at once
    assert link.connected()
    (assigned,) = _of(link, ConfigAssigned, "client")
    assert assigned.extra["ifconfig"] == ("10.8.0.60", "255.255.255.0")
    assert assigned.extra["ifconfig_ipv6"] is None  # a static IPv4 takes no pool IPv6
    assert "dhcp-option DNS 10.8.0.1" in session.push_reply_messages()[0].split(",")
    assert server.pool.in_use() == []
    assert server.router.lookup("192.168.70.9") == session.peer_id
    roundtrip_data(link)


def test_client_connect_without_output_keeps_the_pool_address() -> None:
    server = OpenVPNServer(server_options(client_connect=True))
    link = _start(server, username=None, password=None)
    (cc,) = _of(link, ClientConnect)
    assert "username" not in cc.env and cc.env["ifconfig_pool_remote_ip"] == "10.8.0.2"
    server.client_connect_result(link.session(), True, link.now)
    link.pump(link.now + 1.0)
    (assigned,) = _of(link, ConfigAssigned, "client")
    assert assigned.extra["ifconfig"] == ("10.8.0.2", "255.255.255.0")


@pytest.mark.parametrize(("ccd", "verdict", "output", "disconnect"), [
    (False, False, "", False),      # the script failed, nothing had succeeded before it
    (True, False, "", True),        # the CCD file was a step that succeeded
    (False, True, "disable\n", True),  # the script succeeded, its file says disable
])
def test_a_refused_connect_is_plain_auth_failed(ccd: bool, verdict: bool, output: str,
                                                disconnect: bool) -> None:
    configs = {"DEFAULT": parse_client_config("")} if ccd else None
    server = OpenVPNServer(server_options(client_connect=True, client_disconnect=True,
                                          client_configs=configs))
    link = _start(server, username=None, password=None)
    session = link.session()
    server.client_connect_result(session, verdict, link.now, parse_client_config(output))
    link.pump(link.now + 10.0)
    down = _client_down(link)
    assert down.reason == "server refused authentication: AUTH_FAILED" and not down.restart
    assert session.closed and server.pool.in_use() == []
    assert len(_of(link, ClientDisconnect)) == int(disconnect)
    assert str(session.last_error).startswith("authentication failed: ")


def test_a_ccd_disable_refuses_before_the_script_runs() -> None:
    server = OpenVPNServer(server_options(
        client_connect=True, client_configs={"alice": parse_client_config("disable\n")}))
    link = _start(server, until=10.0, username=None, password=None)
    assert _client_down(link).reason == "server refused authentication: AUTH_FAILED"
    assert _of(link, ClientConnect) == []


# -- client-disconnect -------------------------------------------------------------------

def test_client_disconnect_reports_traffic_duration_and_identity() -> None:
    server = OpenVPNServer(server_options(client_disconnect=True), wall=_Clock())
    received: list[int] = []
    sent: list[int] = []
    real_receive, real_send = server.receive_datagram, server.datagrams_to_send

    def receive(data: bytes, addr: Any, now: float) -> Any:
        session = real_receive(data, addr, now)
        if session is not None:  # the gate's stateless exchange is nobody's traffic
            received.append(len(data))
        return session

    def send(now: float) -> list[tuple[bytes, Any]]:
        out = real_send(now)
        sent.extend(len(d) for d, _ in out)
        return out

    server.receive_datagram = receive  # type: ignore[method-assign]
    server.datagrams_to_send = send  # type: ignore[method-assign]
    link = _start(server, username=None, password=None)
    assert link.connected() and _of(link, ClientDisconnect) == []
    roundtrip_data(link)
    session = link.session()
    link.pump(12.5)
    before = session.link_bytes_out
    server.close_session(session, link.now)
    link._events(link.now)
    kinds = [type(e) for e in link.server_events]
    (ev,) = _of(link, ClientDisconnect)
    # after Connected, before Disconnected (the address is still in its environment)
    assert kinds.index(ClientDisconnect) == kinds.index(Disconnected) - 1
    link.pump(link.now + 0.1)  # the last words (OCC EXIT) are not counted any more
    assert ev.env == {
        **PEER_INFO, "script_type": "client-disconnect", "common_name": "alice",
        "trusted_ip": "198.51.100.7", "trusted_port": "40000",
        "ifconfig_pool_remote_ip": "10.8.0.2", "ifconfig_pool_netmask": "255.255.255.0",
        "time_unix": str(T0),
        "time_ascii": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T0)),
        "bytes_received": str(sum(received)),
        "bytes_sent": str(before), "time_duration": "12"}
    # besides the session's bytes, only the gate's reply and the exit notice went out
    assert session.link_bytes_out > before and 0 < sum(sent) - before < 400


def test_no_client_disconnect_without_a_finished_connect() -> None:
    server = OpenVPNServer(server_options(client_connect=True, client_disconnect=True))
    link = _start(server, username=None, password=None)
    server.close_session(link.session(), link.now)  # while client-connect runs
    link._events(link.now)
    assert _of(link, ClientDisconnect) == [] and _of(link, Disconnected)


# -- the password on renegotiation -------------------------------------------------------

class _HeldLink(Link):
    """Collects AuthRequests and leaves them unanswered: the test answers."""

    asked: list[AuthRequest]

    def _events(self, now: float) -> None:
        while (ev := self.client.next_event()) is not None:
            self.client_events.append(ev)
        while (got := self.server.next_event()) is not None:
            self.server_events.append(got[1])
            if isinstance(got[1], AuthRequest):
                self.asked.append(got[1])


def test_every_renegotiation_asks_for_the_password_again() -> None:
    server = OpenVPNServer(server_options(auth_user_pass_verify=True, reneg_sec=20))
    link = _HeldLink(server, OpenVPNClient(client_options(username="alice",
                                                         password="secret"),
                                           peer=SERVER_ADDR), CLIENT_ADDR)
    asked: list[AuthRequest] = []
    link.asked = asked
    link.client.start(0.0)
    link.pump(1.0)
    session = link.session()
    server.auth_result(session, True, link.now)
    link.pump(5.0)
    assert link.connected() and len(asked) == 1
    link.pump(25.0)  # the client renegotiates at 20: asked again, the old key carries on
    assert len(asked) == 2 and asked[1].password == "secret" and asked[1].username == "alice"
    assert _of(link, Rekeyed) == [] and session.state == "connected"
    roundtrip_data(link)
    server.auth_result(session, True, link.now)
    link.pump(link.now + 1.0)
    assert [e.key_id for e in _of(link, Rekeyed)] == [1]
    roundtrip_data(link)


def test_a_refused_renegotiation_ends_the_client() -> None:
    answers = iter([(True, ""), (False, "password changed")])
    server = OpenVPNServer(server_options(auth_user_pass_verify=True, reneg_sec=20))
    link = _start(server, auth=lambda req: next(answers))
    session = link.session()
    link.pump(40.0)
    (down,) = _of(link, Disconnected, "client")
    assert link.client.halted
    assert down.reason == "server refused authentication: AUTH_FAILED,password changed"
    assert session.closed and _of(link, Rekeyed) == []
    assert session.last_error == "authentication failed: password changed"


# -- the client and its auth-token -------------------------------------------------------

def test_the_client_sends_the_token_not_the_password_once_it_has_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str | None] = []
    real = client_mod.client_message

    def spy(*args: Any) -> bytes:
        sent.append(args[3])
        return real(*args)

    monkeypatch.setattr(client_mod, "client_message", spy)
    clock = _Clock()
    server = OpenVPNServer(server_options(auth_user_pass_verify=True, auth_gen_token=True,
                                          auth_token_secret=KEY, reneg_sec=20), wall=clock)
    link = _start(server)
    first = link.client.auth_token
    assert first is not None and sent == ["secret"]
    clock.t += 20
    link.pump(30.0)
    assert sent == ["secret", first] and link.client.options.password == "secret"


@pytest.mark.parametrize("second_ok", [True, False])
def test_a_refused_token_falls_back_to_the_password_once(second_ok: bool) -> None:
    clock = _Clock()
    asked: list[AuthRequest] = []

    def decide(req: AuthRequest) -> tuple[bool, str]:
        asked.append(req)
        return (len(asked) == 1 or second_ok, "bad password")

    server = OpenVPNServer(server_options(auth_user_pass_verify=True, auth_gen_token=True,
                                          auth_token_secret=KEY), wall=clock)
    link = _start(server, auth=decide)
    assert link.connected() and link.client.auth_token is not None
    clock.t += 2 * 3600  # the token's renewal window is long gone
    link.client.start(link.now)
    link.pump(link.now + 10.0)
    downs = _of(link, Disconnected, "client")
    assert downs[0].reason == \
        "server refused our auth-token: AUTH_FAILED,SESSION: token expired"
    assert downs[0].restart
    assert [a.password for a in asked] == ["secret", "secret"]
    if second_ok:
        assert link.client.state == "connected" and len(downs) == 1
        assert link.client.auth_token is not None
    else:  # no token left: the second refusal is final
        assert len(downs) == 2 and not downs[1].restart and link.client.halted
        assert downs[1].reason == "server refused authentication: AUTH_FAILED,bad password"


# -- openvpn's exact refusals ------------------------------------------------------------

def test_ccd_exclusive_and_disable_say_plain_auth_failed() -> None:
    configs = {"alice": parse_client_config("disable\n"), "DEFAULT": parse_client_config("")}
    server = OpenVPNServer(server_options(client_configs=configs, ccd_exclusive=True))
    alice = _start(server, until=10.0, username=None, password=None)
    bob = _start(server, until=10.0, addr=("198.51.100.8", 1), cert=BOB,
                 username=None, password=None)
    for link in (alice, bob):
        assert _client_down(link).reason == "server refused authentication: AUTH_FAILED"
    errors = [e.reason for e in bob.server_events if isinstance(e, Disconnected)]
    assert errors == ["authentication failed: client-config-dir authentication failed "
                      "(ccd-exclusive)"]
