"""The OpenVPN TLS client's sans-I/O pieces: packets, reliability, wrapping, keys, push."""

from __future__ import annotations

import pytest

from tunconnector.errors import RemoteProtocolError
from tunconnector.proto.openvpn import packet as pk
from tunconnector.proto.openvpn import push
from tunconnector.proto.openvpn.datav2 import DataKey
from tunconnector.proto.openvpn.keymethod import (
    KeySource,
    client_message,
    parse_server_message,
    prf_key_material,
    split_key_material,
    tls1_prf,
    write_string,
)
from tunconnector.proto.openvpn.reliable import ReliableReceiver, ReliableSender
from tunconnector.proto.openvpn.tlsauth import TlsAuth, TlsCrypt, Wrapper, parse_static_key

KEY = bytes(range(256))
KEY_TEXT = (
    "#\n# 2048 bit OpenVPN static key\n#\n-----BEGIN OpenVPN Static key V1-----\n"
    + "\n".join(KEY[i : i + 16].hex() for i in range(0, 256, 16))
    + "\n-----END OpenVPN Static key V1-----\n"
)


def test_control_packet_roundtrip() -> None:
    p = pk.ControlPacket(pk.P_CONTROL_V1, 3, b"A" * 8, (1, 2), b"B" * 8, 7, b"tls bytes")
    raw = p.header() + p.body()
    op, kid, sid = pk.parse_header(raw)
    assert (op, kid, sid) == (pk.P_CONTROL_V1, 3, b"A" * 8)
    assert pk.parse_body(op, kid, sid, raw[pk.HEADER_LEN :]) == p


def test_ack_packet_has_no_message_id() -> None:
    p = pk.ControlPacket(pk.P_ACK_V1, 0, b"A" * 8, (5,), b"B" * 8)
    body = p.body()
    assert len(body) == 1 + 4 + 8
    assert pk.parse_body(pk.P_ACK_V1, 0, b"A" * 8, body).acks == (5,)


@pytest.mark.parametrize("raw", [b"", b"\x20", b"\x20" + b"x" * 8, bytes([pk.P_DATA_V2 << 3]) * 9])
def test_bad_headers_are_remote_errors(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        op, kid, sid = pk.parse_header(raw)
        pk.parse_body(op, kid, sid, raw[pk.HEADER_LEN :])


def test_body_fuzz_never_raises_anything_else() -> None:
    import random

    rng = random.Random(1)
    for _ in range(2000):
        body = rng.randbytes(rng.randrange(0, 60))
        try:
            pk.parse_body(pk.P_CONTROL_V1, 0, b"s" * 8, body)
        except RemoteProtocolError:
            pass


def test_reliable_in_order_and_acks() -> None:
    r = ReliableReceiver(window=4)
    assert r.receive(1, b"b")
    assert r.pop_ready() == []
    assert r.receive(0, b"a")
    assert r.pop_ready() == [b"a", b"b"]
    assert r.receive(0, b"a")  # a duplicate is acked again, not delivered
    assert r.pop_ready() == []
    assert not r.receive(9, b"far")  # beyond the window: dropped, not acked
    assert r.take_acks(8) == (1, 0)


def test_reliable_retransmits_with_backoff() -> None:
    s = ReliableSender(window=2, initial_rto=1.0, max_rto=4.0)
    for p in (b"a", b"b", b"c"):
        s.queue(4, p)
    assert [m for m, _, _ in s.due(0.0)] == [0, 1]  # window of 2
    assert s.due(0.5) == []
    assert [m for m, _, _ in s.due(1.0)] == [0, 1]
    s.ack([0])
    assert [m for m, _, _ in s.due(1.0)] == [2]
    assert s.next_due() == 2.0
    assert [m for m, _, _ in s.due(2.5)] == [2]  # 1 was resent at 1.0, rto now 2 s
    assert [m for m, _, _ in s.due(3.0)] == [1]
    s.ack([1, 2])
    assert s.empty and s.retransmits == 4


def test_static_key_file() -> None:
    assert parse_static_key(KEY_TEXT) == KEY


@pytest.mark.parametrize("kind", ["auth", "auth-nodir", "crypt", "none"])
def test_wrapping_roundtrip_and_tamper(kind: str) -> None:
    c: Wrapper
    s: Wrapper
    if kind == "auth":
        c, s = TlsAuth(KEY, 1, "SHA256"), TlsAuth(KEY, 0, "SHA256")
    elif kind == "auth-nodir":
        c, s = TlsAuth(KEY, None), TlsAuth(KEY, None)
    elif kind == "crypt":
        c, s = TlsCrypt(KEY, client=True), TlsCrypt(KEY, client=False)
    else:
        c, s = Wrapper(), Wrapper()
    header = bytes([pk.P_CONTROL_V1 << 3]) + b"S" * 8
    for body in (b"\x00\x00\x00\x00\x01hello", b"\x00\x00\x00\x00\x02again"):
        wire = c.wrap(header, body)
        assert wire[: pk.HEADER_LEN] == header
        assert s.unwrap(wire) == body
    if kind == "none":
        return
    with pytest.raises(RemoteProtocolError):  # replayed
        s.unwrap(wire)
    bad = bytearray(c.wrap(header, b"\x00\x00\x00\x00\x03x"))
    bad[-1] ^= 1
    with pytest.raises(RemoteProtocolError):
        s.unwrap(bytes(bad))
    if kind == "crypt":
        assert b"hello" not in c.wrap(header, b"hello")


def test_tls1_prf_vector() -> None:
    # the widely published TLS 1.0/1.1 PRF test vector (secret 0xab*48, seed 0xcd*64)
    out = tls1_prf(b"\xab" * 48, b"PRF Testvector" + b"\xcd" * 64, 104)
    assert out.hex().startswith("d3d4d1e349b5d515044666d51de32bab258cb521b6b05346")
    assert out.hex().endswith("8b2d8f1afbc655a8c9a013")


def test_key_method_messages() -> None:
    src = KeySource(b"1" * 32, b"2" * 32, b"p" * 48)
    msg = client_message(src, "V4,dev-type tun", None, None, "IV_VER=2.6\n")
    assert msg[:5] == b"\x00\x00\x00\x00\x02"
    assert msg[5:53] == b"p" * 48
    assert msg.endswith(b"\x00\x00" * 2 + write_string("IV_VER=2.6\n"))
    server = b"\x00\x00\x00\x00\x02" + b"3" * 32 + b"4" * 32 + write_string("V4,x")
    assert parse_server_message(server[:-2]) is None  # incomplete
    got = parse_server_message(server + b"tail")
    assert got is not None and got.options == "V4,x" and got.length == len(server)
    with pytest.raises(RemoteProtocolError):
        parse_server_message(b"\x00\x00\x00\x00\x01" + b"x" * 80)
    material = prf_key_material(src, got.source, b"c" * 8, b"s" * 8)
    assert len(material) == 256
    assert material != prf_key_material(src, got.source, b"c" * 8, b"t" * 8)


@pytest.mark.parametrize("cipher", ["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"])
def test_data_v2_roundtrip_replay_and_layout(cipher: str) -> None:
    c2s, s2c = split_key_material(bytes(range(256)))
    client = DataKey(2, cipher, c2s, s2c, peer_id=5, created=0.0)
    server = DataKey(2, cipher, s2c, c2s, peer_id=5, created=0.0)
    wire = client.encrypt(b"x" * 84)
    assert len(wire) == 84 + 24  # the captured 84 -> 108 bytes
    assert wire[0] == (pk.P_DATA_V2 << 3) | 2 and wire[1:4] == b"\x00\x00\x05"
    assert wire[4:8] == b"\x00\x00\x00\x01"
    assert server.decrypt(wire) == b"x" * 84
    with pytest.raises(RemoteProtocolError, match="replay"):
        server.decrypt(wire)
    bad = bytearray(client.encrypt(b"y"))
    bad[10] ^= 1
    with pytest.raises(RemoteProtocolError):
        server.decrypt(bytes(bad))


def test_push_reply_subnet() -> None:
    r = push.PushReply()
    push.apply(r, push.parse_options(
        "route-gateway 10.8.0.1,topology subnet,ping 10,ping-restart 60,"
        "ifconfig 10.8.0.2 255.255.255.0,peer-id 3,cipher AES-256-GCM,key-derivation tls-ekm,"
        "route 192.168.5.0 255.255.255.0,dhcp-option DNS 1.1.1.1,block-outside-dns"))
    assert r.addresses(tap=False) == ("10.8.0.2/24",)
    assert r.routes == [("192.168.5.0/24", None)]
    assert (r.peer_id, r.cipher, r.ping, r.ping_restart) == (3, "AES-256-GCM", 10, 60)
    assert r.key_derivation == "tls-ekm" and r.default_gateway() == "10.8.0.1"
    assert r.ignored == ["block-outside-dns"]


def test_push_reply_net30_and_continuation() -> None:
    first = push.parse_options("ifconfig 10.8.0.6 10.8.0.5,push-continuation 2")
    assert push.continuation(first)
    r = push.PushReply()
    push.apply(r, first)
    push.apply(r, push.parse_options("route 10.9.0.0 255.255.0.0 10.8.0.5,push-continuation 1"))
    assert r.addresses(tap=False) == ("10.8.0.6/30",)
    assert r.routes == [("10.9.0.0/16", "10.8.0.5")]
    assert r.default_gateway() == "10.8.0.5"
    with pytest.raises(RemoteProtocolError):
        push.apply(r, push.parse_options("ifconfig bogus 255.0.0.0"))
