"""One native connection as the adapter will drive it: the known peer's datagrams through
``quick`` first (``receive_datagram`` when it says False), a stranger's through
``receive_datagram``, GRO reads through ``receive_run``; plaintext and encrypted (a
session already established), state kept across inputs as a tunnel keeps it."""

from __future__ import annotations

from collections.abc import Callable

from tunconnector.proto.connection import GsoRun, each_datagram
from tunconnector.proto.fragment import FRAG_OVERHEAD, FragmentRun
from tunconnector.proto.native import NativeEndpoint
from tunconnector.proto.native_conn import DEFAULT_MAX_DATAGRAM, NativeConnection
from tunconnector.proto.offload import VNET_HDR_LEN, VnetHdr, build_vnet_hdr
from tunconnector.proto.secure import SecureChannel

from ..registry import register

PSK = bytes(range(32))
PEER = ("192.0.2.2", 40000)
STRANGER = ("198.51.100.7", 41000)
SERVER = ("192.0.2.1", 55556)
IPV4 = bytes.fromhex("450000540001400040010000" "0a000001" "0a000002") + bytes(64)


def _make(encrypted: bool, initiator: bool) -> Callable[[], NativeEndpoint]:
    def make() -> NativeEndpoint:
        secure = SecureChannel(initiator=initiator, psk=PSK) if encrypted else None
        return NativeEndpoint(keepalive=10, dead_after=60, max_frame=1518, secure=secure)
    return make


def _pair(encrypted: bool) -> tuple[NativeConnection, NativeConnection, list[bytes]]:
    """A client and a server that are up; returns what the client sent (seeds)."""
    c = NativeConnection(_make(encrypted, True), server=False, peer=SERVER)
    s = NativeConnection(_make(encrypted, False), server=True)
    c.start(0.0)
    s.start(0.0)
    seen: list[bytes] = []
    for _ in range(6):
        for d, _a in c.datagrams_to_send(0.0):
            seen.append(bytes(d))
            s.receive_datagram(d, PEER, 0.0)
        for d, _a in s.datagrams_to_send(0.0):
            c.receive_datagram(d, SERVER, 0.0)
    c.send_frames([IPV4, b"x"], 0.0)
    gso = build_vnet_hdr(VnetHdr(0, 0, 0, 0, 0, 0)) + IPV4
    big = build_vnet_hdr(VnetHdr(1, 1, 40, 1400, 20, 16)) + IPV4[:20] + bytes(20) + bytes(5000)
    c.send_device([gso, big[:VNET_HDR_LEN + 3000]], 0.0)
    c.send_device([big], 0.0)
    for batch, _a in c.batches_to_send(0.0):
        seen.extend(bytes(d) for d in each_datagram(batch))
        if isinstance(batch, GsoRun):
            seen.append(bytes(batch.buf))  # whole: a GRO read of the run
    seen.extend(bytes(d) for d, _a in c.datagrams_to_send(0.0))
    return c, s, seen


_state: dict[bool, dict[str, object]] = {}


def _get(encrypted: bool) -> dict[str, object]:
    st = _state.get(encrypted)
    if st is None or int(st["n"]) >= 20000:  # type: ignore[call-overload]
        _c, s, seen = _pair(encrypted)
        st = _state[encrypted] = {"s": s, "seen": seen, "n": 0, "now": 1.0}
    return st


def _feed(encrypted: bool, data: bytes) -> None:
    st = _get(encrypted)
    st["n"] = n = int(st["n"]) + 1  # type: ignore[call-overload]
    st["now"] = now = float(st["now"]) + 0.001  # type: ignore[arg-type]
    s: NativeConnection = st["s"]  # type: ignore[assignment]
    if n % 5 == 0 and len(data) > FRAG_OVERHEAD:  # as a GRO read of the client's stride
        stride = DEFAULT_MAX_DATAGRAM if len(data) > DEFAULT_MAX_DATAGRAM else len(data)
        s.receive_run(FragmentRun(memoryview(data), stride), PEER, now)
    elif n % 3 == 0:
        s.receive_datagram(data, STRANGER, now)
    elif s.quick(data, now) is False:
        s.receive_datagram(data, PEER, now)
    s.has_work()
    s.batches_to_send(now)
    s.datagrams_to_send(now)
    s.frames_to_deliver()
    while s.next_event() is not None:
        pass
    s.handle_timer(now)


@register("native_conn.datagram", seeds=lambda: _get(False)["seen"] + _get(True)["seen"])  # type: ignore[operator]
def _datagram(data: bytes) -> None:
    _feed(False, data)
    _feed(True, data)
