"""The native endpoint as a tunnel drives it: screen a stranger's datagram, the fast
check for the known peer, then the full decode; plaintext, and encrypted (a PSK session
already established, so mutated handshakes and sealed DATA reach the crypto layer)."""

from __future__ import annotations

import os

from tunconnector.proto.framing import MsgType, encode_keepalive, encode_native, parse_header
from tunconnector.proto.native import NativeEndpoint
from tunconnector.proto.noise import HandshakeState
from tunconnector.proto.secure import SecureChannel

from ..registry import register

PSK = bytes(range(32))
IPV4 = bytes.fromhex("450000540001400040010000" "0a000001" "0a000002") + bytes(64)


def _endpoint(secure: SecureChannel | None = None) -> NativeEndpoint:
    ep = NativeEndpoint(keepalive=10, dead_after=60, max_frame=1518, secure=secure)
    ep.start(0.0, initiator=False)
    ep.decode(encode_keepalive(1, 1), 0.0)  # the peer is alive: quick() is live
    return ep


_plain = {"ep": _endpoint(), "now": 1.0}


@register("native.plain", seeds=lambda: [
    encode_keepalive(5, 77, 66), encode_native(MsgType.DATA, IPV4, counter=3),
    encode_native(MsgType.DATA, b"\x00" * 10 + IPV4, flags=0x02, counter=4),
    encode_native(MsgType.PROBE, bytes(20))])
def _native_plain(data: bytes) -> None:
    ep = _plain["ep"]
    _plain["now"] += 0.001
    now = _plain["now"]
    ep.screen_stranger(data, now)
    if ep.quick(data, now, "peer") is False:
        ep.decode(data, now, "peer")
    ep.messages_to_send()
    ep.handle_timer(now)


def _pair(now: float = 0.0) -> tuple[SecureChannel, SecureChannel, list[bytes]]:
    """An initiator and a responder with a session; returns the messages they swapped."""
    c = SecureChannel(initiator=True, psk=PSK)
    s = SecureChannel(initiator=False, psk=PSK)
    c.start(now)
    seen: list[bytes] = []
    for _ in range(4):
        for src, dst in ((c, s), (s, c)):
            for m in src.datagrams_to_send():
                seen.append(m)
                dst.open(m, parse_header(m), now, source="peer")
    assert c.established and s.established
    seen.append(c.seal(IPV4, now) or b"")
    seen.append(s.seal(IPV4, now) or b"")
    return c, s, seen


_secure: dict[str, object] = {}


def _secure_state() -> dict[str, object]:
    if not _secure:
        c, s, seen = _pair()
        _secure.update(c=c, s=s, seen=seen, n=0, now=1.0,
                       ep=_endpoint(s), ep_c=_endpoint(c))
    return _secure


def _secure_seeds() -> list[bytes]:
    return list(_secure_state()["seen"])  # type: ignore[arg-type]


@register("native.secure", seeds=_secure_seeds)
def _native_secure(data: bytes) -> None:
    st = _secure_state()
    st["n"] = int(st["n"]) + 1  # type: ignore[call-overload]
    st["now"] = float(st["now"]) + 0.001  # type: ignore[arg-type]
    now = float(st["now"])  # type: ignore[arg-type]
    if int(st["n"]) % 20000 == 0:  # type: ignore[call-overload]
        _secure.clear()  # fresh sessions now and then (timers, limits start over)
        st = _secure_state()
    for key in ("ep", "ep_c"):  # responder and initiator both see it
        ep: NativeEndpoint = st[key]  # type: ignore[assignment]
        ep.screen_stranger(data, now)
        if ep.quick(data, now, "peer") is False:
            ep.decode(data, now, "peer")
        ep.messages_to_send()


@register("noise.read_message", seeds=lambda: [
    HandshakeState("NNpsk0", initiator=True, psk=PSK).write_message(b""),
    os.urandom(48)])
def _noise(data: bytes) -> None:
    hs = HandshakeState("NNpsk0", initiator=False, psk=PSK)
    hs.read_message(data)
