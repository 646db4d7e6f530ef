"""OpenVPN's parsers: control packets, tls-auth/tls-crypt unwrapping, the key-method-2
server message, PUSH_REPLY options, DATA_V2 decryption, and a static-key connection fed
datagrams and TCP streams."""

from __future__ import annotations

import struct

from tunconnector.proto.openvpn import packet as pk
from tunconnector.proto.openvpn import push
from tunconnector.proto.openvpn.common import OCC_MAGIC, PING_MAGIC
from tunconnector.proto.openvpn.datav2 import DataKey
from tunconnector.proto.openvpn.keyfile import format_static_key, parse_static_key
from tunconnector.proto.openvpn.keymethod import parse_server_message, split_key_material
from tunconnector.proto.openvpn.static import StaticKeyConnection
from tunconnector.proto.openvpn.tlsauth import TlsAuth, TlsCrypt

from ..registry import register

KEY = bytes(range(256))
SERVER = ("10.0.0.1", 1194)
IPV4 = bytes.fromhex("450000540001400040010000" "0a000001" "0a000002") + bytes(64)


def _control() -> list[bytes]:
    p = pk.ControlPacket(pk.P_CONTROL_V1, 0, b"S" * 8, (1, 2), b"R" * 8, 3, b"tls bytes")
    a = pk.ControlPacket(pk.P_ACK_V1, 0, b"S" * 8, (7,), b"R" * 8)
    return [p.header() + p.body(), a.header() + a.body()]


@register("openvpn.control_packet", seeds=_control)
def _control_packet(data: bytes) -> None:
    opcode, key_id, sid = pk.parse_header(data)
    pk.parse_body(opcode, key_id, sid, data[pk.HEADER_LEN:])


_auth = TlsAuth(KEY, 0, "SHA256")
_crypt = TlsCrypt(KEY, client=False)
_auth_peer = TlsAuth(KEY, 1, "SHA256")
_crypt_peer = TlsCrypt(KEY, client=True)


def _wrapped() -> list[bytes]:
    out = []
    for seed in _control():
        for w in (_auth_peer, _crypt_peer):
            out.append(w.wrap(seed[: pk.HEADER_LEN], seed[pk.HEADER_LEN:]))
    return out


@register("openvpn.tls_auth_unwrap", seeds=_wrapped)
def _unwrap_auth(data: bytes) -> None:
    _auth.unwrap(data)


@register("openvpn.tls_crypt_unwrap", seeds=_wrapped)
def _unwrap_crypt(data: bytes) -> None:
    _crypt.unwrap(data)


def _server_message() -> bytes:
    opts = b"V4,dev-type tun,link-mtu 1550\x00"
    return (struct.pack("!IB", 0, 2) + bytes(64) + struct.pack("!H", len(opts)) + opts
            + struct.pack("!H", 3) + b"ab\x00")


@register("openvpn.key_method_2", seeds=lambda: [_server_message()])
def _key_method(data: bytes) -> None:
    parse_server_message(data)


@register("openvpn.push_reply", seeds=lambda: [
    b"route-gateway 10.8.0.1,topology subnet,ping 10,ping-restart 120,ifconfig 10.8.0.2 "
    b"255.255.255.0,peer-id 0,cipher AES-256-GCM,route 10.9.0.0 255.255.0.0,"
    b"redirect-gateway def1,ifconfig-ipv6 fd00::2/64 fd00::1,tun-mtu 1500,"
    b"protocol-flags cc-exit tls-ekm,key-derivation tls-ekm,route-ipv6 fd01::/64"])
def _push(data: bytes) -> None:
    reply = push.PushReply()
    options = push.parse_options(data.decode("utf-8", "replace"))
    push.apply(reply, options)
    push.continuation(options)
    reply.addresses(tap=False)
    reply.addresses(tap=True)
    reply.default_gateway()


_c2s, _s2c = split_key_material(KEY)
_data_rx = {"key": DataKey(2, "AES-256-GCM", _s2c, _c2s, peer_id=5, created=0.0), "n": 0}
_data_tx = DataKey(2, "AES-256-GCM", _c2s, _s2c, peer_id=5, created=0.0)


@register("openvpn.data_v2", seeds=lambda: [_data_tx.encrypt(IPV4), _data_tx.encrypt(b"")])
def _data_v2(data: bytes) -> None:
    _data_rx["n"] = int(_data_rx["n"]) + 1  # type: ignore[call-overload]
    if int(_data_rx["n"]) % 10000 == 0:  # type: ignore[call-overload]
        _data_rx["key"] = DataKey(2, "AES-256-GCM", _s2c, _c2s, peer_id=5, created=0.0)
    _data_rx["key"].decrypt(data)  # type: ignore[union-attr]


_STATIC = parse_static_key(format_static_key(KEY))


def _static_pair(stream: bool) -> tuple[StaticKeyConnection, StaticKeyConnection]:
    c = StaticKeyConnection(_STATIC, cipher="AES-256-CBC", auth="SHA1", mode="client",
                            remote=SERVER, stream=stream)
    s = StaticKeyConnection(_STATIC, cipher="AES-256-CBC", auth="SHA1", mode="server",
                            stream=stream)
    c.start(0.0)
    s.start(0.0)
    return c, s


def _static_seeds(stream: bool) -> list[bytes]:
    c, _ = _static_pair(stream)
    c.connection_made(0.0)
    c.send_frames([IPV4, PING_MAGIC, OCC_MAGIC + b"\x01"], 0.0)
    if stream:
        return [b"".join(c.stream_to_send(0.0))]
    return [d for d, _ in c.datagrams_to_send(0.0)]


_static_udp = {"s": _static_pair(False)[1], "now": 1.0}


@register("openvpn.static_datagram", seeds=lambda: _static_seeds(False))
def _static_datagram(data: bytes) -> None:
    s: StaticKeyConnection = _static_udp["s"]  # type: ignore[assignment]
    _static_udp["now"] = float(_static_udp["now"]) + 0.001  # type: ignore[arg-type]
    now = float(_static_udp["now"])  # type: ignore[arg-type]
    s.receive_datagram(data, ("10.0.0.2", 1194), now)
    s.frames_to_deliver()
    s.datagrams_to_send(now)
    while s.next_event() is not None:
        pass


@register("openvpn.static_stream", stream=True, seeds=lambda: _static_seeds(True))
def _static_stream(chunks: list[bytes]) -> None:
    _, s = _static_pair(True)
    s.connection_made(0.0)
    for chunk in chunks:
        s.receive_stream(chunk, 0.5)
        s.frames_to_deliver()
    s.stream_to_send(0.5)
