"""The OpenVPN TLS server session against our own OpenVPN TLS client, in memory.

Each side's datagrams are handed to the other (no socket, no sleep); the client is the
unchanged :class:`OpenVPNClient`, so a handshake that completes here is the client's
view of a correct server. Interop with a real openvpn is an integration matter.
"""

from __future__ import annotations

import datetime
import random
import secrets
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tunconnector.errors import ConfigError
from tunconnector.proto.connection import AuthRequest, Connected, Disconnected, Rekeyed
from tunconnector.proto.openvpn import packet as pk
from tunconnector.proto.openvpn.client import ClientOptions, OpenVPNClient
from tunconnector.proto.openvpn.gate import GateAccept, GateDrop, GateReply, HandshakeGate
from tunconnector.proto.openvpn.keymethod import (
    KeySource,
    client_message,
    parse_client_message,
    parse_server_message,
    server_message,
)
from tunconnector.proto.openvpn.server import (
    OpenVPNServer,
    ServerOptions,
    negotiate_cipher,
)
from tunconnector.proto.openvpn.tlsauth import TlsAuth, Wrapper

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.openvpn_pki import cert as make_cert  # noqa: E402
from tests.openvpn_pki import pem as _pem  # noqa: E402

SERVER_ADDR = ("192.0.2.1", 1194)
CLIENT_ADDR = ("198.51.100.7", 40000)


def _cert(cn: str, key: Any, issuer: x509.Certificate | None, issuer_key: Any,
          ca: bool = False, usage: Any = None) -> x509.Certificate:
    # what openvpn's remote-cert-tls wants: EKU and key usage
    return make_cert(cn, key, issuer, issuer_key, ca=ca, eku=usage, key_usage=usage is not None)


def _crl(revoked: list[x509.Certificate], ca: x509.Certificate,
         ca_key: Any) -> x509.CertificateRevocationList:
    now = datetime.datetime.now(datetime.UTC)
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
         .last_update(now - datetime.timedelta(hours=1))
         .next_update(now + datetime.timedelta(days=1)))
    for c in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(c.serial_number)
            .revocation_date(now - datetime.timedelta(minutes=5)).build())
    return b.sign(ca_key, hashes.SHA256())


CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA = _cert("ca", CA_KEY, None, CA_KEY, ca=True)
SRV_KEY = ec.generate_private_key(ec.SECP256R1())
SRV = _cert("server", SRV_KEY, CA, CA_KEY, usage=ExtendedKeyUsageOID.SERVER_AUTH)
CLI_KEY = ec.generate_private_key(ec.SECP256R1())
CLI = _cert("alice", CLI_KEY, CA, CA_KEY, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
BOB = _cert("bob", CLI_KEY, CA, CA_KEY, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
OTHER_CA_KEY = ec.generate_private_key(ec.SECP256R1())
OTHER_CA = _cert("other-ca", OTHER_CA_KEY, None, OTHER_CA_KEY, ca=True)
STRANGER = _cert("mallory", CLI_KEY, OTHER_CA, OTHER_CA_KEY,
                 usage=ExtendedKeyUsageOID.CLIENT_AUTH)
STATIC_KEY = secrets.token_bytes(256)

IP = bytes.fromhex("4500001c00000000400100000a0800020a080001" "0800f7ff00000000")
IP_BACK = bytes.fromhex("4500001c00000000400100000a0800010a080002" "0000ffff00000000")


def server_options(**kw: Any) -> ServerOptions:
    kw.setdefault("push", ["route 10.9.0.0 255.255.0.0"])
    return ServerOptions(ca_pem=_pem(CA), cert_pem=_pem(SRV), key_pem=_pem(SRV_KEY), **kw)


def client_options(cert: x509.Certificate | None = CLI, **kw: Any) -> ClientOptions:
    if cert is not None:
        kw.update(cert_pem=_pem(cert), key_pem=_pem(CLI_KEY))
    return ClientOptions(ca_pem=_pem(CA), remote_cert_tls="server", **kw)


class Link:
    """One client and the server, exchanging datagrams in memory."""

    def __init__(self, server: OpenVPNServer, client: OpenVPNClient,
                 addr: tuple[str, int] = CLIENT_ADDR,
                 auth: Callable[[AuthRequest], tuple[bool, str]] | None = None) -> None:
        self.server, self.client, self.addr, self.auth = server, client, addr, auth
        self.client_events: list[Any] = []
        self.server_events: list[Any] = []
        self.now = 0.0

    def pump(self, until: float, loss: float = 0.0, seed: int = 1) -> None:
        rng = random.Random(seed)
        while self.now < until:
            now = self.now
            for _ in range(60):
                c2s = [d for d, _ in self.client.datagrams_to_send(now)]
                s2c = [d for d, a in self.server.datagrams_to_send(now) if a == self.addr]
                if not c2s and not s2c:
                    break
                for d in c2s:
                    if rng.random() >= loss:
                        self.server.receive_datagram(d, self.addr, now)
                for d in s2c:
                    if rng.random() >= loss:
                        self.client.receive_datagram(d, SERVER_ADDR, now)
                self._events(now)
            times = [t for t in (self.client.get_timer(), self.server.get_timer())
                     if t is not None]
            t = min(times) if times else until
            self.now = min(until, max(now + 0.01, t))
            self.client.handle_timer(self.now)
            self.server.handle_timer(self.now)
            self._events(self.now)

    def _events(self, now: float) -> None:
        while (ev := self.client.next_event()) is not None:
            self.client_events.append(ev)
        while (got := self.server.next_event()) is not None:
            session, ev = got
            self.server_events.append(ev)
            if isinstance(ev, AuthRequest) and self.auth is not None:
                ok, why = self.auth(ev)
                self.server.auth_result(session, ok, now, why)

    def connected(self) -> bool:
        return any(isinstance(e, Connected) for e in self.client_events) and \
            any(isinstance(e, Connected) for e in self.server_events)

    def session(self) -> Any:
        return self.server.sessions[self.addr]


def connect(sopts: ServerOptions | None = None, copts: ClientOptions | None = None,
            until: float = 5.0, **kw: Any) -> Link:
    server = OpenVPNServer(sopts or server_options())
    client = OpenVPNClient(copts or client_options(), peer=SERVER_ADDR)
    link = Link(server, client, **kw)
    client.start(0.0)
    link.pump(until)
    return link


def roundtrip_data(link: Link) -> None:
    """A frame each way: client -> server device, server device -> client."""
    link.client.send_frames([IP], link.now)
    link.pump(link.now + 0.5)
    session = link.session()
    assert session.frames_to_deliver() == [IP]
    session.send_frames([IP_BACK], link.now)
    link.pump(link.now + 0.5)
    assert link.client.frames_to_deliver() == [IP_BACK]


# -- handshake, push, data ---------------------------------------------------------------

@pytest.mark.parametrize(("ekm", "wrap", "loss"), [
    (True, None, 0.0), (False, None, 0.0), (True, "tls-auth", 0.0), (False, "tls-crypt", 0.0),
    (True, "tls-crypt", 0.2)])
def test_client_connects_gets_pushed_address_and_data_flows(ekm: bool, wrap: str | None,
                                                           loss: float) -> None:
    skw: dict[str, Any] = {}
    ckw: dict[str, Any] = {"offer_ekm": ekm}
    if wrap == "tls-auth":
        skw.update(tls_auth=STATIC_KEY, key_direction=0)
        ckw.update(tls_auth=STATIC_KEY, key_direction=1)
    elif wrap == "tls-crypt":
        skw.update(tls_crypt=STATIC_KEY)
        ckw.update(tls_crypt=STATIC_KEY)
    server = OpenVPNServer(server_options(**skw))
    client = OpenVPNClient(client_options(**ckw), peer=SERVER_ADDR)
    link = Link(server, client)
    client.start(0.0)
    link.pump(40.0 if loss else 5.0, loss=loss)
    assert link.connected(), (link.client_events, link.server_events, client.drops)
    from tunconnector.proto.connection import ConfigAssigned

    assigned = next(e for e in link.client_events if isinstance(e, ConfigAssigned))
    assert assigned.addresses == ("10.8.0.2/24",)
    assert ("10.9.0.0/16", None) in assigned.routes
    assert assigned.extra["route_gateway"] == "10.8.0.1"
    assert assigned.extra["cipher"] == "AES-256-GCM"
    session = link.session()
    assert assigned.extra["peer_id"] == session.peer_id
    st = session.status(link.now)
    assert st["common_name"] == "alice" and st["address"] == "10.8.0.2"
    assert st["key_derivation"] == ("tls-ekm" if ekm else "prf")
    assert client.status(link.now)["key_derivation"] == st["key_derivation"]
    roundtrip_data(link)


def test_keepalive_keeps_both_sides_up_and_silence_ends_the_session() -> None:
    link = connect(server_options(keepalive=(2, 10)))
    assert link.connected()
    link.pump(60.0)  # pings both ways: nobody times out
    assert link.client.state == "connected" and link.session().state == "connected"
    session = link.session()
    # the client vanishes: the server ends the session after 2 x ping-restart
    t = link.now
    while t < link.now + 30 and not session.closed:
        t += 1.0
        link.server.handle_timer(t)
        link.server.datagrams_to_send(t)
    assert session.closed and "ping-restart" in (session.last_error or "")
    assert CLIENT_ADDR not in link.server.sessions and not link.server.by_peer_id


def test_two_clients_get_distinct_addresses_and_peer_ids() -> None:
    server = OpenVPNServer(server_options())
    a = Link(server, OpenVPNClient(client_options(), peer=SERVER_ADDR), CLIENT_ADDR)
    b = Link(server, OpenVPNClient(client_options(cert=BOB), peer=SERVER_ADDR),
             ("198.51.100.8", 40001))
    a.client.start(0.0)
    b.client.start(0.0)
    # one pump at a time would starve the other: alternate
    for step in range(1, 30):
        a.pump(step * 0.2)
        b.now = a.now - 0.2
        b.pump(step * 0.2)
    assert a.connected() and b.connected()
    sa, sb = a.session(), b.session()
    assert {sa.address, sb.address} == {"10.8.0.2", "10.8.0.3"}
    assert sa.peer_id != sb.peer_id


# -- refusals ------------------------------------------------------------------------------

def test_client_cert_from_another_ca_is_refused_with_a_reason() -> None:
    link = connect(copts=client_options(cert=STRANGER))
    down = [e for e in link.server_events if isinstance(e, Disconnected)]
    assert down and "does not lead to the configured CA" in down[0].reason, link.server_events
    assert not link.connected()
    assert not link.server.sessions


def test_revoked_client_cert_is_refused() -> None:
    crl = _crl([CLI], CA, CA_KEY)
    link = connect(server_options(crl_pem=_pem(crl)))
    down = [e for e in link.server_events if isinstance(e, Disconnected)]
    assert down and "revoked" in down[0].reason and "alice" in down[0].reason
    assert not link.connected()
    # another client of the same CA is not in the CRL
    link = connect(server_options(crl_pem=_pem(crl)), client_options(cert=BOB))
    assert link.connected()


def test_a_changed_crl_ends_a_connected_client_it_revokes() -> None:
    link = connect(server_options(crl_pem=_pem(_crl([], CA, CA_KEY))))
    assert link.connected()
    # a CRL from another CA changes nothing: the client stays
    with pytest.raises(ConfigError, match="not signed"):
        link.server.set_crl(_pem(_crl([CLI], OTHER_CA, OTHER_CA_KEY)), link.now)
    assert not link.session().closed
    ended = link.server.set_crl(_pem(_crl([BOB], CA, CA_KEY)), link.now)
    assert ended == [] and not link.session().closed  # bob is not this client
    session = link.session()
    ended = link.server.set_crl(_pem(_crl([CLI], CA, CA_KEY)), link.now)
    assert ended == [session] and session.closed
    assert "revoked" in (session.last_error or "")
    link.pump(link.now + 1.0)
    # a new handshake with the same certificate is refused by the new list
    link = connect(server_options(crl_pem=_pem(_crl([CLI], CA, CA_KEY))))
    assert not link.connected()


def test_crl_not_signed_by_the_ca_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not signed"):
        OpenVPNServer(server_options(crl_pem=_pem(_crl([], OTHER_CA, OTHER_CA_KEY))))


def test_client_without_certificate_when_required() -> None:
    link = connect(copts=client_options(cert=None, username="u", password="p"))
    down = [e for e in link.server_events if isinstance(e, Disconnected)]
    assert down and not link.connected()


def test_password_decided_by_the_adapter() -> None:
    seen: list[AuthRequest] = []

    def decide(req: AuthRequest) -> tuple[bool, str]:
        seen.append(req)
        return (req.password == "secret", "bad password")

    sopts = server_options(auth_user_pass_verify=True, verify_client_cert="none")
    link = connect(sopts, client_options(cert=None, username="alice", password="secret"),
                   auth=decide)
    assert link.connected()
    assert seen[0].username == "alice" and seen[0].common_name is None
    assert "IV_CIPHERS" in seen[0].peer_info
    roundtrip_data(link)

    link = connect(sopts, client_options(cert=None, username="alice", password="wrong"),
                   auth=decide, until=10.0)
    cdown = [e for e in link.client_events if isinstance(e, Disconnected)]
    assert cdown and not cdown[0].restart and "AUTH_FAILED,bad password" in cdown[0].reason
    sdown = [e for e in link.server_events if isinstance(e, Disconnected)]
    assert sdown and "bad password" in sdown[0].reason
    assert not link.server.sessions and not link.server.pool.in_use()


def test_auth_answer_may_come_later() -> None:
    server = OpenVPNServer(server_options(auth_user_pass_verify=True))
    client = OpenVPNClient(client_options(username="alice", password="pw"), peer=SERVER_ADDR)
    link = Link(server, client)
    client.start(0.0)
    link.pump(3.0)
    pending = [e for e in link.server_events if isinstance(e, AuthRequest)]
    assert pending and pending[0].common_name == "alice"
    assert not link.connected() and link.session().state == "auth-pending"
    # data before the decision never reaches the device
    link.server.auth_result(link.session(), True, link.now)
    link.pump(link.now + 0.2)  # the reply goes out at once, no PUSH_REQUEST retry needed
    assert link.connected()
    roundtrip_data(link)


def test_no_shared_cipher_is_auth_failed_without_asking_the_adapter() -> None:
    link = connect(server_options(data_ciphers=("CHACHA20-POLY1305",),
                                  auth_user_pass_verify=True),
                   client_options(data_ciphers=("AES-128-GCM",), username="a", password="b"))
    cdown = [e for e in link.client_events if isinstance(e, Disconnected)]
    assert cdown and "no shared cipher" in cdown[0].reason and not link.connected()
    assert not any(isinstance(e, AuthRequest) for e in link.server_events)


def test_cipher_negotiation_follows_server_order() -> None:
    info = {"IV_CIPHERS": "AES-128-GCM:CHACHA20-POLY1305"}
    assert negotiate_cipher(("CHACHA20-POLY1305", "AES-128-GCM"), info, "", None) \
        == "CHACHA20-POLY1305"
    assert negotiate_cipher(("AES-256-GCM",), {"IV_NCP": "2"}, "", None) == "AES-256-GCM"
    assert negotiate_cipher(("AES-256-GCM", "AES-256-CBC"), {}, "V4,cipher AES-256-CBC",
                            None) == "AES-256-CBC"
    assert negotiate_cipher(("AES-256-GCM",), {}, "V4", "AES-128-CBC") == "AES-128-CBC"
    assert negotiate_cipher(("AES-256-GCM",), {}, "V4", None) is None
    # the fallback is for clients that say nothing about ciphers
    assert negotiate_cipher(("AES-256-CBC",), {"IV_NCP": "2"}, "", "AES-128-CBC") is None
    assert negotiate_cipher(("AES-256-GCM",), {}, "V4,cipher BF-CBC", "AES-128-CBC") is None
    # a client listing IV_CIPHERS is held to that list, its own --cipher is not assumed
    assert negotiate_cipher(("AES-256-CBC",), {"IV_CIPHERS": "AES-256-GCM"},
                            "V4,cipher AES-256-CBC", None) is None


def test_push_options_with_a_comma_are_refused() -> None:
    with pytest.raises(ConfigError, match="comma"):
        OpenVPNServer(server_options(push=["dhcp-option DNS 10.0.0.1,10.0.0.2"]))


# -- renegotiation ---------------------------------------------------------------------------

@pytest.mark.parametrize("who", ["client", "server"])
def test_renegotiation_swaps_keys_without_losing_data(who: str) -> None:
    if who == "client":
        link = connect(copts=client_options(reneg_sec=20), until=3.0)
    else:
        link = connect(server_options(reneg_sec=20), until=3.0)
    assert link.connected()
    session = link.session()
    got_server: list[bytes] = []
    got_client: list[bytes] = []
    sent = 0
    # a frame each way every 0.5 s across the renegotiation at t=20
    while link.now < 30.0:
        link.client.send_frames([IP], link.now)
        session.send_frames([IP_BACK], link.now)
        sent += 1
        link.pump(link.now + 0.5)
        got_server += session.frames_to_deliver()
        got_client += link.client.frames_to_deliver()
    assert any(isinstance(e, Rekeyed) for e in link.client_events)
    assert any(isinstance(e, Rekeyed) for e in link.server_events)
    assert session.status(link.now)["key_id"] == 1 == link.client.status(link.now)["key_id"]
    assert len(got_server) == sent and len(got_client) == sent
    assert session.drops["unknown_key"] == 0 and link.client.drops["unknown_key"] == 0


# -- the handshake gate --------------------------------------------------------------------

def _reset(sid: bytes, wrapper: Wrapper | None = None, mid: int = 0) -> bytes:
    p = pk.ControlPacket(pk.P_CONTROL_HARD_RESET_CLIENT_V2, 0, sid, (), None, mid, b"")
    return (wrapper or Wrapper()).wrap(p.header(), p.body())


def _second(sid: bytes, cookie: bytes, wrapper: Wrapper | None = None) -> bytes:
    p = pk.ControlPacket(pk.P_CONTROL_V1, 0, sid, (0,), cookie, 1, b"\x16\x03\x01hello")
    return (wrapper or Wrapper()).wrap(p.header(), p.body())


def test_gate_keeps_no_state_for_junk_resets_or_spoofed_sources() -> None:
    server = OpenVPNServer(server_options(tls_auth=STATIC_KEY, key_direction=0))
    rng = random.Random(3)
    for _ in range(3000):  # junk of every shape
        n = rng.randrange(0, 120)
        first = rng.choice([0x38, 0x20, 0x28, 0x48, 0x50, rng.randrange(256)])
        server.receive_datagram(bytes([first]) + rng.randbytes(n),
                                (f"203.0.113.{rng.randrange(256)}", 1000), 0.0)
    assert len(server.sessions) == 0 and not server.datagrams_to_send(0.0)
    # well-formed resets with a good tls-auth HMAC get a reply each, and still no state
    good = TlsAuth(STATIC_KEY, 1)
    for i in range(50):
        server.receive_datagram(_reset(secrets.token_bytes(8), good), ("203.0.113.9", i), 0.0)
    replies = server.datagrams_to_send(0.0)
    assert len(replies) == 50 and len(server.sessions) == 0
    # a reset with a bad HMAC gets nothing
    server.receive_datagram(_reset(b"s" * 8, TlsAuth(secrets.token_bytes(256), 1)),
                            ("203.0.113.9", 1), 0.0)
    assert not server.datagrams_to_send(0.0) and server.gate.drops["bad_hmac"] >= 1


def test_gate_cookie_is_bound_to_source_and_time() -> None:
    gate = HandshakeGate(Wrapper, hand_window=60.0, key=b"k" * 32)
    sid = b"c" * 8
    reply = gate.check(_reset(sid), CLIENT_ADDR, 100.0)
    assert isinstance(reply, GateReply)
    op, _, cookie = pk.parse_header(reply.packet)
    body = pk.parse_body(op, 0, cookie, reply.packet[pk.HEADER_LEN :])
    # openvpn's standalone reset: acks the client's message 0, carries message id 0
    assert op == pk.P_CONTROL_HARD_RESET_SERVER_V2 and body.acks == (0,)
    assert body.remote_session_id == sid and body.message_id == 0
    assert isinstance(gate.check(_second(sid, cookie), CLIENT_ADDR, 130.0), GateAccept)
    # another source (a spoofer who saw the reply), another port, another session id
    for addr, s in ((("198.51.100.99", 40000), sid), (("198.51.100.7", 40001), sid),
                    (CLIENT_ADDR, b"d" * 8)):
        assert isinstance(gate.check(_second(s, cookie), addr, 130.0), GateDrop)
    # too late: beyond the current slot and the two before it
    assert isinstance(gate.check(_second(sid, cookie), CLIENT_ADDR, 100.0 + 95.0), GateDrop)
    # a second packet without the ack (so without our session id): our reset again,
    # no session
    p = pk.ControlPacket(pk.P_CONTROL_V1, 0, sid, (), None, 1, b"x")
    again = gate.check(p.header() + p.body(), CLIENT_ADDR, 130.0)
    assert isinstance(again, GateReply)
    assert again.packet[1:9] == gate.cookie(sid, CLIENT_ADDR, 130.0)


def test_gate_replies_are_rate_limited() -> None:
    gate = HandshakeGate(Wrapper, reply_rate=10.0, reply_burst=5.0)
    verdicts = [gate.check(_reset(secrets.token_bytes(8)), CLIENT_ADDR, 0.0)
                for _ in range(20)]
    assert sum(isinstance(v, GateReply) for v in verdicts) == 5
    assert gate.drops["reply_rate"] == 15
    assert isinstance(gate.check(_reset(b"x" * 8), CLIENT_ADDR, 1.0), GateReply)


def test_replayed_and_spoofed_handshakes_create_no_session() -> None:
    # capture a real client's first two packets, then replay them from elsewhere
    server = OpenVPNServer(server_options(tls_crypt=STATIC_KEY))
    client = OpenVPNClient(client_options(tls_crypt=STATIC_KEY), peer=SERVER_ADDR)
    client.start(0.0)
    first = [d for d, _ in client.datagrams_to_send(0.0)]
    for d in first:
        server.receive_datagram(d, CLIENT_ADDR, 0.0)
    reply = server.datagrams_to_send(0.0)
    assert len(reply) == 1 and len(server.sessions) == 0
    spoofed = ("203.0.113.50", 40000)
    for d in first:  # the reset replayed from a spoofed source: a reply, no state
        server.receive_datagram(d, spoofed, 1.0)
    assert len(server.sessions) == 0
    client.receive_datagram(reply[0][0], SERVER_ADDR, 0.0)
    second = [d for d, _ in client.datagrams_to_send(0.0)]
    for d in second:  # the client's proof, replayed from the spoofed source first
        server.receive_datagram(d, spoofed, 0.1)
    assert len(server.sessions) == 0 and server.gate.drops["bad_cookie"] >= 1
    for d in second:  # from the real client: a session
        server.receive_datagram(d, CLIENT_ADDR, 0.1)
    assert list(server.sessions) == [CLIENT_ADDR]


def test_handshakes_per_source_are_bounded() -> None:
    server = OpenVPNServer(server_options(max_handshakes_per_source=2))
    made = 0
    for port in range(5):
        client = OpenVPNClient(client_options(), peer=SERVER_ADDR)
        client.start(0.0)
        addr = ("198.51.100.7", 50000 + port)
        for _ in range(2):  # reset and cookie, then TLS: each stays in its handshake
            for d, _ in client.datagrams_to_send(0.0):
                if server.receive_datagram(d, addr, 0.0) is not None:
                    made += 1
            for d, a in server.datagrams_to_send(0.0):
                if a == addr:
                    client.receive_datagram(d, SERVER_ADDR, 0.0)
    assert len(server.sessions) == 2
    assert server.drops["handshakes_per_source"] >= 3


def test_a_restarted_client_at_the_same_address_replaces_its_session() -> None:
    link = connect()
    assert link.connected()
    old = link.session()
    link.client = OpenVPNClient(client_options(), peer=SERVER_ADDR)  # same address
    link.client_events.clear()
    link.client.start(link.now)
    link.pump(link.now + 5.0)
    assert any(isinstance(e, Connected) for e in link.client_events)
    assert old.closed and link.session() is not old
    roundtrip_data(link)


def test_client_quick_datagram_takes_data_from_the_server_only() -> None:
    """The client's bulk decoder: data from where the server answers gives the frame;
    anything else is left untouched (False) for receive_datagram; a replay is dropped."""
    link = connect()
    assert link.connected()
    link.session().send_frames([IP_BACK], link.now)
    (pkt,) = [d for d, a in link.server.datagrams_to_send(link.now) if a == link.addr]
    client = link.client
    assert client.quick_datagram(pkt, ("192.0.2.99", 1194), link.now) is False
    assert client.quick_datagram(pkt, SERVER_ADDR, link.now) == IP_BACK
    assert client.quick_datagram(pkt, SERVER_ADDR, link.now) is None
    assert client.drops["replay"] == 1
    control = pk.op_byte(pk.P_ACK_V1, 0).to_bytes(1, "big") + bytes(16)
    assert client.quick_datagram(control, SERVER_ADDR, link.now) is False


def test_data_from_a_new_address_floats_only_when_it_decrypts() -> None:
    link = connect()
    session = link.session()
    # a forged DATA_V2 naming the session's peer-id from elsewhere: dropped, no move
    forged = bytes([pk.P_DATA_V2 << 3]) + session.peer_id.to_bytes(3, "big") + \
        struct.pack("!I", 9) + secrets.token_bytes(40)
    link.server.receive_datagram(forged, ("203.0.113.1", 1), link.now)
    assert session.peer == CLIENT_ADDR and session.drops["bad_tag"] == 1
    # the real client behind a new NAT port
    link.addr = ("198.51.100.7", 40999)
    link.client.send_frames([IP], link.now)
    link.pump(link.now + 0.5)
    assert session.peer == link.addr and link.server.sessions[link.addr] is session
    assert session.frames_to_deliver() == [IP]
    assert CLIENT_ADDR not in link.server.sessions


def test_garbage_into_a_live_session_is_counted_never_raised() -> None:
    link = connect()
    session = link.session()
    rng = random.Random(9)
    for _ in range(3000):
        first = rng.choice([0x20, 0x28, 0x18, 0x48, 0x38, rng.randrange(256)])
        data = bytes([first]) + session.remote_session_id + rng.randbytes(rng.randrange(0, 60))
        link.server.receive_datagram(data, CLIENT_ADDR, link.now)
    assert sum(session.drops.values()) > 0 and session.state == "connected"
    roundtrip_data(link)


# -- pieces ------------------------------------------------------------------------------------

def test_key_method_client_message_parses_and_server_message_reads_back() -> None:
    src = KeySource(b"a" * 32, b"b" * 32, b"p" * 48)
    msg = client_message(src, "V4,dev-type tun", "alice", "pw", "IV_VER=2.6\nIV_PROTO=14\n")
    assert parse_client_message(msg[:-3]) is None
    got = parse_client_message(msg + b"PUSH_REQUEST\0")
    assert got is not None and got.length == len(msg)
    assert got.source == src and got.username == "alice" and got.password == "pw"
    assert got.peer_info_map() == {"IV_VER": "2.6", "IV_PROTO": "14"}
    anon = parse_client_message(client_message(src, "V4", None, None, ""))
    assert anon is not None and anon.username is None
    reply = server_message(KeySource(b"c" * 32, b"d" * 32), "V4,tls-server")
    parsed = parse_server_message(reply + b"PUSH_REPLY,x\0")
    assert parsed is not None and parsed.length == len(reply)
    assert parsed.options == "V4,tls-server"


# -- more of a server's life ---------------------------------------------------------------

def test_tcp_session_without_cookie() -> None:
    server = OpenVPNServer(server_options(proto="tcp"))
    client = OpenVPNClient(client_options(proto="tcp"), peer=SERVER_ADDR)
    session = server.accept_stream(CLIENT_ADDR, 0.0)
    assert session is not None
    client.connection_made(0.0)
    now = 0.0
    for _ in range(200):
        for chunk in client.stream_to_send(now):
            for i in range(0, len(chunk), 7):  # a stream cut anywhere
                session.receive_stream(chunk[i : i + 7], now)
        back = b"".join(session.stream_to_send(now))
        if back:
            client.receive_stream(back, now)
        now += 0.05
        client.handle_timer(now)
        session.handle_timer(now)
        if session.state == "connected" and client.state == "connected":
            break
    assert session.state == "connected" and client.state == "connected"
    client.send_frames([IP], now)
    session.receive_stream(b"".join(client.stream_to_send(now)), now)
    assert session.frames_to_deliver() == [IP]
    session.receive_stream(b"", now)  # EOF
    assert session.closed


def test_long_push_lists_are_split_with_push_continuation() -> None:
    routes = [f"route 10.{i}.0.0 255.255.0.0" for i in range(100, 180)]
    link = connect(server_options(push=routes))
    assert link.connected()
    messages = link.session().push_reply_messages()
    assert len(messages) > 1 and all(len(m) <= 1024 for m in messages)
    assert all(m.endswith("push-continuation 2") for m in messages[:-1])
    from tunconnector.proto.connection import ConfigAssigned

    assigned = next(e for e in link.client_events if isinstance(e, ConfigAssigned))
    assert len(assigned.routes) == 80


def test_explicit_exit_both_ways() -> None:
    link = connect(copts=client_options(explicit_exit_notify=1))
    session = link.session()
    link.client.close(link.now)
    link.pump(link.now + 0.5)
    assert session.closed and "explicit-exit-notify" in (session.last_error or "")
    # the server ending a client tells it to come back (it restarts, not halts)
    link = connect()
    link.server.close_session(link.session(), link.now)
    assert not link.server.sessions
    link.pump(link.now + 0.5)
    down = [e for e in link.client_events if isinstance(e, Disconnected)]
    assert down and down[0].restart and "exit" in down[0].reason


def test_second_client_with_the_same_identity_replaces_the_first() -> None:
    server = OpenVPNServer(server_options())
    a = Link(server, OpenVPNClient(client_options(), peer=SERVER_ADDR), CLIENT_ADDR)
    a.client.start(0.0)
    a.pump(3.0)
    first = a.session()
    b = Link(server, OpenVPNClient(client_options(), peer=SERVER_ADDR), ("198.51.100.9", 1))
    b.now = a.now
    b.client.start(b.now)
    b.pump(b.now + 3.0)
    assert b.connected() and first.closed and b.session().address == first.address
    assert list(server.sessions) == [("198.51.100.9", 1)]


def test_duplicate_cn_gives_each_its_own_address_and_frees_it() -> None:
    server = OpenVPNServer(server_options(duplicate_cn=True))
    links = []
    for i in range(2):
        link = Link(server, OpenVPNClient(client_options(), peer=SERVER_ADDR),
                    ("198.51.100.9", 100 + i))
        link.client.start(0.0)
        link.pump(3.0)
        assert link.connected()
        links.append(link)
    assert links[0].session().address != links[1].session().address
    links[0].session().close(3.0)
    server.handle_timer(3.0)
    assert len(server.pool.in_use()) == 1 and len(server.sessions) == 1


def test_mangled_handshake_packets_never_raise() -> None:
    # every datagram of a handshake, with one byte flipped, is fed in before the real one
    rng = random.Random(11)
    server = OpenVPNServer(server_options())
    client = OpenVPNClient(client_options(), peer=SERVER_ADDR)
    client.start(0.0)
    now = 0.0
    for _ in range(80):
        for d, _ in client.datagrams_to_send(now):
            bad = bytearray(d)
            i = rng.randrange(len(bad))
            bad[i] ^= 1 << rng.randrange(8)
            server.receive_datagram(bytes(bad), CLIENT_ADDR, now)
            server.receive_datagram(d, CLIENT_ADDR, now)
        for d, _ in server.datagrams_to_send(now):
            client.receive_datagram(d, SERVER_ADDR, now)
        now += 0.1
        client.handle_timer(now)
        server.handle_timer(now)
    # the flipped copies may end a handshake (TLS is unforgiving), but nothing escapes
    assert client.state in ("connected", "connecting", "failed")


@pytest.mark.parametrize(("skw", "ckw", "cipher", "derivation"), [
    ({"data_ciphers": ("AES-256-CBC",), "auth": "SHA256"},
     {"data_ciphers": ("AES-256-CBC",), "auth": "SHA256"}, "AES-256-CBC", "tls-ekm"),
    ({"data_ciphers": ("CHACHA20-POLY1305", "AES-256-GCM")}, {}, "CHACHA20-POLY1305",
     "tls-ekm"),
    ({"allow_ekm": False}, {}, "AES-256-GCM", "prf"),
])
def test_other_ciphers_and_the_prf_when_the_server_says_so(skw: dict[str, Any],
                                                            ckw: dict[str, Any], cipher: str,
                                                            derivation: str) -> None:
    link = connect(server_options(**skw), client_options(**ckw))
    assert link.connected()
    st = link.session().status(link.now)
    assert (st["cipher"], st["key_derivation"]) == (cipher, derivation)
    roundtrip_data(link)


@pytest.mark.parametrize(("server", "client", "pushed"), [
    ("lzo", "lzo", "comp-lzo no"), ("stub-v2", None, "compress stub-v2"),
    ("stub", None, "compress stub")])
def test_compression_framing_is_pushed_and_used(server: str, client: str | None,
                                                 pushed: str) -> None:
    link = connect(server_options(compress=server), client_options(compress=client))
    assert link.connected()
    assert pushed in link.session().push_reply_messages()[-1].split(",")
    roundtrip_data(link)
    link.pump(link.now + 30.0)  # pings and OCC in the framing too: nobody times out
    assert link.client.state == "connected" and link.session().state == "connected"


def test_compress_migrate_frames_only_comp_lzo_clients() -> None:
    link = connect(server_options(compress="migrate"))
    assert link.connected()
    assert not any("comp" in m for m in link.session().push_reply_messages())
    with pytest.raises(ConfigError, match="compress"):
        OpenVPNServer(server_options(compress="lz4"))


def test_lost_ack_of_the_cookie_reset_is_recovered_without_state() -> None:
    # the client's packet that acks our reset is lost; its retransmission carries no ack
    server = OpenVPNServer(server_options(tls_crypt=STATIC_KEY))
    client = OpenVPNClient(client_options(tls_crypt=STATIC_KEY), peer=SERVER_ADDR)
    link = Link(server, client)
    client.start(0.0)
    for d, _ in client.datagrams_to_send(0.0):
        server.receive_datagram(d, CLIENT_ADDR, 0.0)
    for d, _ in server.datagrams_to_send(0.0):
        client.receive_datagram(d, SERVER_ADDR, 0.0)
    assert client.datagrams_to_send(0.0)  # the ClientHello with the ack: lost
    assert not server.sessions
    link.pump(10.0)
    assert link.connected() and server.gate.drops["no_cookie"] >= 1
    roundtrip_data(link)


def test_lost_ack_answers_are_rate_limited_and_need_a_low_message_id() -> None:
    gate = HandshakeGate(Wrapper, reply_rate=1.0, reply_burst=1.0)
    p = pk.ControlPacket(pk.P_CONTROL_V1, 0, b"c" * 8, (), None, 1, b"x")
    assert isinstance(gate.check(p.header() + p.body(), CLIENT_ADDR, 0.0), GateReply)
    assert gate.check(p.header() + p.body(), CLIENT_ADDR, 0.0) == GateDrop("reply_rate")
    p = pk.ControlPacket(pk.P_CONTROL_V1, 0, b"c" * 8, (), None, 5, b"x")
    assert gate.check(p.header() + p.body(), CLIENT_ADDR, 9.0) == GateDrop("no_cookie")
