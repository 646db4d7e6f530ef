"""The OpenVPN TLS client against a small in-memory server built from the same pieces.

No socket, no sleep: each side's output is handed to the other (aioquic's roundtrip
style), optionally dropping packets to exercise retransmission. The interop truth is the
integration test against a real openvpn; this checks the state machine without root.
"""

from __future__ import annotations

import random
import secrets
import struct
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from OpenSSL import SSL

from tunconnector.proto.connection import ConfigAssigned, Connected, Disconnected, Rekeyed
from tunconnector.proto.offload import VNET_HDR_LEN
from tunconnector.proto.openvpn import packet as pk
from tunconnector.proto.openvpn.client import ClientOptions, OpenVPNClient
from tunconnector.proto.openvpn.common import PING_MAGIC
from tunconnector.proto.openvpn.datav2 import DataKey
from tunconnector.proto.openvpn.keymethod import (
    EKM_LABEL,
    KeySource,
    prf_key_material,
    read_string,
    split_key_material,
    write_string,
)
from tunconnector.proto.openvpn.reliable import ReliableReceiver, ReliableSender
from tunconnector.proto.openvpn.tlsauth import TlsCrypt, Wrapper

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.openvpn_pki import cert as make_cert  # noqa: E402
from tests.openvpn_pki import pem as _pem  # noqa: E402


def _cert(cn: str, key: Any, issuer: x509.Certificate | None, issuer_key: Any,
          ca: bool = False, eku: bool = True) -> x509.Certificate:
    usage = ExtendedKeyUsageOID.SERVER_AUTH if eku and not ca else None
    return make_cert(cn, key, issuer, issuer_key, ca=ca, eku=usage)


CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA = _cert("ca", CA_KEY, None, CA_KEY, ca=True)
SRV_KEY = ec.generate_private_key(ec.SECP256R1())
SRV = _cert("server", SRV_KEY, CA, CA_KEY)
NOEKU = _cert("server", SRV_KEY, CA, CA_KEY, eku=False)
TC_KEY = secrets.token_bytes(256)


class FakeServer:
    """Just enough of an OpenVPN server: resets, TLS, key method 2, push, DATA_V2 echo."""

    def __init__(self, cert: x509.Certificate = SRV, ekm: bool = True,
                 push: str = "PUSH_REPLY,route-gateway 10.8.0.1,topology subnet,ping 1,"
                             "ping-restart 5,ifconfig 10.8.0.2 255.255.255.0,"
                             "route 10.9.0.0 255.255.0.0,peer-id 7,cipher AES-128-GCM",
                 tls_crypt: bool = False) -> None:
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.use_certificate(cert)
        ctx.use_privatekey(SRV_KEY)
        self.ctx = ctx
        self.sid = secrets.token_bytes(8)
        self.client_sid: bytes | None = None
        self.ekm = ekm
        self.push = push + (",key-derivation tls-ekm" if ekm else "")
        self.wrapper: Wrapper = TlsCrypt(TC_KEY, client=False) if tls_crypt else Wrapper()
        self.keys: dict[int, dict[str, Any]] = {}
        self.data: dict[int, DataKey] = {}
        self.out: list[bytes] = []
        self.echoed = 0

    def _key_state(self, key_id: int, opcode: int) -> dict[str, Any]:
        conn = SSL.Connection(self.ctx, None)
        conn.set_accept_state()
        sender = ReliableSender()
        sender.queue(opcode, b"")
        ks = {"tls": conn, "send": sender, "recv": ReliableReceiver(), "reset": False,
              "app": b"", "client": None, "src": KeySource(secrets.token_bytes(32),
                                                           secrets.token_bytes(32))}
        self.keys[key_id] = ks
        return ks

    def receive(self, data: bytes, now: float) -> None:
        opcode, key_id = pk.split_opcode(data[0])
        if opcode == pk.P_DATA_V2:
            dk = self.data[key_id]
            payload = dk.decrypt(data)
            if payload[:1] == b"\x45" or payload == PING_MAGIC:  # echo IPv4 and pings
                self.echoed += 1
                self.out.append(self.data[max(self.data)].encrypt(payload))
            return
        op, kid, sid = pk.parse_header(data)
        body = self.wrapper.unwrap(data)
        p = pk.parse_body(op, kid, sid, body)
        if op == pk.P_CONTROL_HARD_RESET_CLIENT_V2:
            self.client_sid = sid
            if 0 not in self.keys:
                self._key_state(0, pk.P_CONTROL_HARD_RESET_SERVER_V2)
        elif op == pk.P_CONTROL_SOFT_RESET_V1 and kid not in self.keys:
            self._key_state(kid, pk.P_CONTROL_SOFT_RESET_V1)
        ks = self.keys[kid]
        ks["send"].ack(p.acks)
        if p.message_id is not None:
            ks["recv"].receive(p.message_id, p.payload)
            for payload in ks["recv"].pop_ready():
                if not ks["reset"]:
                    ks["reset"] = True
                    continue
                ks["tls"].bio_write(payload)
        self._advance(kid, ks, now)

    def _advance(self, kid: int, ks: dict[str, Any], now: float) -> None:
        tls = ks["tls"]
        try:
            tls.do_handshake()
            while True:
                ks["app"] += tls.recv(65536)
        except SSL.WantReadError:
            pass
        app = ks["app"]
        if ks["client"] is None and len(app) > 5 + 48 + 64:
            pos = 5 + 48 + 64
            try:
                for _ in range(4):
                    _, pos = read_string(app, pos)
            except Exception:
                return
            ks["client"] = KeySource(app[53:85], app[85:117], app[5:53])
            ks["app"] = app[pos:]
            src = ks["src"]
            tls.sendall(struct.pack("!IB", 0, 2) + src.random1 + src.random2
                        + write_string("V4,dev-type tun"))
            if kid:
                self._make_key(kid, ks, now)
        while b"\0" in ks["app"]:
            msg, _, ks["app"] = ks["app"].partition(b"\0")
            if msg == b"PUSH_REQUEST":
                tls.sendall(self.push.encode() + b"\0")
                self._make_key(kid, ks, now)
        out = b""
        try:
            while True:
                out += tls.bio_read(65536)
        except SSL.WantReadError:
            pass
        for i in range(0, len(out), 1000):
            ks["send"].queue(pk.P_CONTROL_V1, out[i : i + 1000])

    def _make_key(self, kid: int, ks: dict[str, Any], now: float) -> None:
        assert self.client_sid is not None
        if self.ekm:
            material = ks["tls"].export_keying_material(EKM_LABEL, 256, None)
        else:
            material = prf_key_material(ks["client"], ks["src"], self.client_sid, self.sid)
        c2s, s2c = split_key_material(material)
        self.data[kid] = DataKey(kid, "AES-128-GCM", s2c, c2s, 7, now)

    def flush(self, now: float) -> list[bytes]:
        for kid, ks in self.keys.items():
            for mid, op, payload in ks["send"].due(now):
                acks = ks["recv"].take_acks(4)
                pkt = pk.ControlPacket(op, kid, self.sid, acks,
                                       self.client_sid if acks else None, mid, payload)
                self.out.append(self.wrapper.wrap(pkt.header(), pkt.body()))
            while ks["recv"].pending_acks:
                acks = ks["recv"].take_acks(4)
                pkt = pk.ControlPacket(pk.P_ACK_V1, kid, self.sid, acks, self.client_sid)
                self.out.append(self.wrapper.wrap(pkt.header(), pkt.body()))
        out, self.out = self.out, []
        return out


def options(**kw: Any) -> ClientOptions:
    return ClientOptions(ca_pem=_pem(CA), remote_cert_tls="server", **kw)


def run(client: OpenVPNClient, server: FakeServer, until: float, now: float = 0.0,
        loss: float = 0.0, seed: int = 1, addr: Any = None) -> tuple[float, list[Any]]:
    """Exchange packets (dropping ``loss`` of them) and fire timers until ``until``."""
    rng = random.Random(seed)
    events: list[Any] = []
    while now < until:
        for _ in range(50):
            c2s = [d for d, _ in client.datagrams_to_send(now)]
            s2c = server.flush(now)
            if not c2s and not s2c:
                break
            for d in c2s:
                if rng.random() >= loss:
                    server.receive(d, now)
            for d in s2c:
                if rng.random() >= loss:
                    client.receive_datagram(d, addr, now)
            while (ev := client.next_event()) is not None:
                events.append(ev)
        t = client.get_timer()
        now = min(until, max(now + 0.01, t if t is not None else until))
        client.handle_timer(now)
        while (ev := client.next_event()) is not None:
            events.append(ev)
    return now, events


IP = bytes.fromhex("4500001c00000000400100000a0800020a080001") + b"\x08\x00\xf7\xff\x00\x00\x00\x00"


@pytest.mark.parametrize(("ekm", "tls_crypt", "loss"), [(True, False, 0.0), (False, True, 0.0),
                                                         (True, True, 0.25)])
def test_connects_pushes_and_carries_data(ekm: bool, tls_crypt: bool, loss: float) -> None:
    tc = {"tls_crypt": TC_KEY} if tls_crypt else {}
    client = OpenVPNClient(options(offer_ekm=ekm, **tc))
    server = FakeServer(ekm=ekm, tls_crypt=tls_crypt)
    client.start(0.0)
    now, events = run(client, server, 30.0 if loss else 3.0, loss=loss)
    kinds = [type(e) for e in events]
    assert ConfigAssigned in kinds and Connected in kinds, events
    assigned = next(e for e in events if isinstance(e, ConfigAssigned))
    assert assigned.addresses == ("10.8.0.2/24",)
    assert assigned.routes == (("10.9.0.0/16", None),)
    assert assigned.extra["cipher"] == "AES-128-GCM" and assigned.extra["peer_id"] == 7
    client.send_frames([IP], now)
    run(client, server, now + 1.0, now)
    assert client.frames_to_deliver() == [IP]
    st = client.status(now)
    assert st["key_derivation"] == ("tls-ekm" if ekm else "prf") and st["state"] == "connected"


def test_send_frames_skips_the_device_header_without_a_copy() -> None:
    """``offset``: each frame's first bytes (a device's zero virtio_net_hdr) are left out
    of the sealed packet; the lane's one frame (seal_one) takes the same path."""
    client = OpenVPNClient(options())
    server = FakeServer()
    client.start(0.0)
    now, _ = run(client, server, 3.0)
    hdr = bytes(VNET_HDR_LEN)
    client.send_frames([hdr + IP, hdr + IP[:20]], now, VNET_HDR_LEN)
    assert client.bytes_out >= len(IP) + 20
    run(client, server, now + 1.0, now)
    assert client.frames_to_deliver() == [IP, IP[:20]]
    for d, _ in client.datagrams_to_send(now + 1.0):  # a ping the last timer queued
        server.receive(d, now + 1.0)
    sealed = client.send_one(hdr + IP, now + 1.0, vnet_hdr=True)
    assert isinstance(sealed, bytes)
    server.receive(sealed, now + 1.0)
    run(client, server, now + 2.0, now + 1.0)
    assert client.frames_to_deliver() == [IP]
    assert not client.drops


def _tcp4(flags: int, mss: int, data: bytes) -> bytes:
    """IPv4 TCP with an MSS option and ``data`` (checksums left zero: not checked here)."""
    tcp = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 6 << 4, flags, 64240, 0, 0) \
        + bytes((2, 4)) + mss.to_bytes(2, "big")
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(data), 1, 0x4000, 64,
                       6, 0, bytes((10, 8, 0, 2)), bytes((10, 8, 0, 1))) + tcp + data


def test_send_frames_clamps_long_syns_and_leaves_the_bulk_alone() -> None:
    """The inline pre-test before the MSS clamp: a long SYN (TCP Fast Open data) is still
    clamped, a long non-SYN segment and a short SYN as before."""
    client = OpenVPNClient(options())
    server = FakeServer()
    client.start(0.0)
    now, _ = run(client, server, 3.0)
    client.datagrams_to_send(now)
    mss = client._mss
    assert mss and mss < 1460
    hdr = bytes(VNET_HDR_LEN)
    frames = [_tcp4(0x02, 1460, bytes(60)), _tcp4(0x10, 1460, bytes(1300)),
              _tcp4(0x02, 1460, b"")]
    client.send_frames([hdr + f for f in frames], now, VNET_HDR_LEN)
    got = [server.data[d[0] & 7].decrypt(d) for d, _ in client.datagrams_to_send(now)]
    assert [len(g) for g in got] == [len(f) for f in frames]
    assert [int.from_bytes(g[42:44], "big") for g in got] == [mss, 1460, mss]
    assert got[1] == frames[1]


def test_client_renegotiates_and_old_key_still_decrypts() -> None:
    client = OpenVPNClient(options(reneg_sec=5))
    server = FakeServer()
    client.start(0.0)
    now, _ = run(client, server, 2.0)
    old = server.data[0]
    now, events = run(client, server, 8.0, now)
    assert any(isinstance(e, Rekeyed) and e.key_id == 1 for e in events)
    # a packet the server sent under the old key just before the switch still arrives
    client.receive_datagram(old.encrypt(IP), None, now)
    assert client.frames_to_deliver() == [IP]
    client.send_frames([IP], now)
    run(client, server, now + 1.0, now)
    assert client.frames_to_deliver() == [IP]
    assert client.status(now)["key_id"] == 1


def test_ping_restart_and_restart_from_scratch() -> None:
    client = OpenVPNClient(options())
    server = FakeServer()
    client.start(0.0)
    now, _ = run(client, server, 2.0)
    first_session = client.session_id
    # the server goes silent: ping-restart (5 s pushed) takes the connection down
    events = []
    t = now
    while t < now + 8:
        t += 0.5
        client.handle_timer(t)
        client.datagrams_to_send(t)
        while (ev := client.next_event()) is not None:
            events.append(ev)
    down = [e for e in events if isinstance(e, Disconnected)]
    assert down and down[0].restart and "ping-restart" in down[0].reason
    # after the backoff it starts a new session by itself
    t2 = client.get_timer()
    assert t2 is not None
    client.handle_timer(t2)
    assert client.session_id != first_session and client.state == "connecting"
    _, events = run(client, FakeServer(), t2 + 3.0, t2)
    assert any(isinstance(e, Connected) for e in events)


@pytest.mark.parametrize(("cert", "ca", "why"), [
    (NOEKU, CA, "remote-cert-tls server"),
    (SRV, _cert("other", CA_KEY, None, CA_KEY, ca=True), "does not lead to the configured CA"),
])
def test_refused_server_never_gets_keys(cert: x509.Certificate, ca: x509.Certificate,
                                       why: str) -> None:
    client = OpenVPNClient(ClientOptions(ca_pem=_pem(ca), remote_cert_tls="server"))
    server = FakeServer(cert=cert)
    client.start(0.0)
    _, events = run(client, server, 2.0)
    down = [e for e in events if isinstance(e, Disconnected)]
    assert down and why in down[0].reason
    assert not any(isinstance(e, Connected | ConfigAssigned) for e in events)
    assert not server.data
    client.send_frames([IP], 2.0)
    assert client.drops["no_key"] == 1


def test_garbage_is_counted_never_raised() -> None:
    client = OpenVPNClient(options())
    server = FakeServer()
    client.start(0.0)
    now, _ = run(client, server, 2.0)
    rng = random.Random(5)
    for _ in range(3000):
        n = rng.randrange(0, 80)
        data = bytes([rng.choice([0x20, 0x28, 0x48, 0x18, rng.randrange(256)])]) + rng.randbytes(n)
        client.receive_datagram(data, None, now)
    assert sum(client.drops.values()) > 0
    assert client.state == "connected"
    client.send_frames([IP], now)
    run(client, server, now + 1.0, now)
    assert client.frames_to_deliver() == [IP]


def test_auth_failed_stops_retrying() -> None:
    client = OpenVPNClient(options(username="u", password="wrong"))
    server = FakeServer(push="AUTH_FAILED,bad password")
    server.ekm = False
    server.push = "AUTH_FAILED,bad password"
    client.start(0.0)
    _, events = run(client, server, 3.0)
    down = [e for e in events if isinstance(e, Disconnected)]
    assert down and not down[0].restart and "AUTH_FAILED" in down[0].reason
    assert client.halted and client.get_timer() is None
    client.connection_made(4.0)  # a new TCP stream does not start over either
    assert client.state == "failed"


@pytest.mark.parametrize("ifconfig", ["ifconfig 192.0.2.1 255.255.255.0",
                                      "ifconfig 192.0.2.7 255.255.255.0"])
def test_pushed_ifconfig_over_the_server_is_refused(ifconfig: str) -> None:
    server_addr = ("192.0.2.1", 1194)
    client = OpenVPNClient(options(), peer=server_addr)
    server = FakeServer(push="PUSH_REPLY,topology subnet,ping 1,ping-restart 5,"
                             f"{ifconfig},peer-id 7,cipher AES-128-GCM")
    client.start(0.0)
    _, events = run(client, server, 3.0)
    assert not any(isinstance(e, ConfigAssigned | Connected) for e in events), events
    assert any(isinstance(e, Disconnected) and "192.0.2.1" in e.reason for e in events)
    assert "refused" in (client.last_error or "")


def test_pushed_ifconfig_elsewhere_names_the_server() -> None:
    client = OpenVPNClient(options(), peer=("192.0.2.1", 1194))
    client.start(0.0)
    _, events = run(client, FakeServer(), 3.0)
    assigned = next(e for e in events if isinstance(e, ConfigAssigned))
    assert assigned.extra["server"] == "192.0.2.1"


def test_packets_from_another_address_never_reach_the_session() -> None:
    server_addr = ("192.0.2.1", 1194)
    client = OpenVPNClient(options(), peer=server_addr)
    server = FakeServer()
    client.start(0.0)
    now, events = run(client, server, 3.0, addr=server_addr)
    assert any(isinstance(e, Connected) for e in events)
    assert client.remote_session_id is not None
    # 60 control packets with the server's session id and a junk TLS record, from a
    # stranger: none reaches the TLS session, the tunnel stays up
    junk = pk.P_CONTROL_V1 << 3
    for i in range(60):
        pkt = bytes([junk]) + client.remote_session_id + b"\x00" + struct.pack("!I", 50 + i) \
            + b"\x17\x03\x03\x00\x20" + secrets.token_bytes(32)
        client.receive_datagram(pkt, ("192.0.2.66", 1194), now)
        client.receive_datagram(pkt, ("192.0.2.1", 4444), now)
    assert client.drops["unknown_peer"] == 120 and client.state == "connected"
    assert client.next_event() is None
    client.send_frames([IP], now)
    run(client, server, now + 1.0, now, addr=server_addr)
    assert client.frames_to_deliver() == [IP]
    # the server answering from another address: data that authenticates moves it
    client.send_frames([IP], now + 1.0)
    run(client, server, now + 2.0, now + 1.0, addr=("192.0.2.2", 1194))
    assert client.frames_to_deliver() == [IP] and client.state == "connected"


def test_server_answering_from_another_address_is_learned() -> None:
    # a multi-homed server answers from the address its route picks, not the remote's
    client = OpenVPNClient(options(), peer=("192.0.2.1", 1194))
    client.start(0.0)
    now, events = run(client, FakeServer(), 3.0, addr=("198.51.100.1", 1194))
    assert any(isinstance(e, Connected) for e in events)
    assert not client.drops["unknown_peer"]


def test_status_says_session_up_when_connected(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from tunconnector import cli, status

    client = OpenVPNClient(options())
    assert client.status(0.0)["established"] is False
    client.start(0.0)
    now, _ = run(client, FakeServer(), 3.0)
    crypto = client.status(now)
    assert crypto["established"] is True and crypto["session_age"] is not None
    tunnel = {"name": "ovpn1", "state": "up", "mode": "client", "transport": "udp/openvpn",
              "device": "tun0", "addresses": ["10.8.0.2/24"], "peer": "192.0.2.1:1194",
              "drops": {}, "crypto": crypto, "rx_bytes": 0, "tx_bytes": 0, "rx_packets": 0,
              "tx_packets": 0, "last_rx_age": 0.1}
    monkeypatch.setattr(status, "query_all", lambda *a, **k: [
        {"pid": 1, "version": "x", "tunnels": [tunnel]}])
    assert cli.cmd_status([]) == 0
    out = capsys.readouterr().out
    assert "session up" in out and "session down" not in out, out
