"""A point-to-point tunnel's receive loop as Tunnel._on_udp_batch runs it: the known peer's
raw address compared, its datagrams (and GRO runs, which the quick decoder must refuse
untouched) through the connection's quick decoder first, the rest through PeerAcceptor;
for a native connection with a live session (plaintext and encrypted) and for raw
framing with and without packet information."""

from __future__ import annotations

from typing import Any

from tunconnector.proto.acceptor import PeerAcceptor
from tunconnector.proto.fragment import FRAG_OVERHEAD, FragmentRun
from tunconnector.proto.framing import MsgType
from tunconnector.proto.native_conn import DEFAULT_MAX_DATAGRAM
from tunconnector.proto.plain_conn import RawConnection

from ..registry import register
from .native_conn import PEER, STRANGER, _get

RAW_PEER = ("::ffff:" + PEER[0], PEER[1], 0, 0)
RAW_STRANGER = ("::ffff:" + STRANGER[0], STRANGER[1], 0, 0)

_raw: dict[bool, PeerAcceptor] = {}
_native: dict[bool, PeerAcceptor] = {}
_n = [0]
_FRAGMENT = int(MsgType.FRAGMENT)


def _normalize(raw: Any) -> Any:
    return (raw[0][7:], raw[1])


def _loop(acc: PeerAcceptor, batch: list[tuple[Any, Any]], now: float) -> None:
    conn = acc.conn
    quick, source = conn.quick_parts()
    peer_raw = acc.raw
    for data, raw in batch:
        if raw == peer_raw:
            if quick(data, now, source) is not False:
                continue
        if type(data) is FragmentRun:
            acc.receive_run(data, raw, _normalize(raw), now)
        else:
            acc.receive(data, raw, _normalize(raw), now)
        conn.frames_to_deliver()
        peer_raw = acc.raw
        quick, source = conn.quick_parts()
    conn.batches_to_send(now)
    conn.datagrams_to_send(now)
    conn.frames_to_deliver()
    while conn.next_event() is not None:
        pass
    conn.handle_timer(now)


def _batch(data: bytes) -> list[tuple[Any, Any]]:
    n = _n[0] = _n[0] + 1
    batch: list[tuple[Any, Any]] = [(data, RAW_PEER)]
    if n % 3 == 0:
        batch.append((data, RAW_STRANGER))
    if n % 4 == 0 and len(data) > FRAG_OVERHEAD:  # a GRO read of the peer's stride
        # kept whole only when it holds FRAGMENTs, as UdpEndpoint.add_received does
        run = bytearray(data)
        run[1] = _FRAGMENT
        stride = DEFAULT_MAX_DATAGRAM if len(run) > DEFAULT_MAX_DATAGRAM else len(run)
        batch.append((FragmentRun(memoryview(run), stride), RAW_PEER))
    return batch


@register("acceptor.p2p", seeds=lambda: _get(False)["seen"] + _get(True)["seen"])  # type: ignore[operator]
def _p2p(data: bytes) -> None:
    batch = _batch(data)
    for encrypted in (False, True):
        st = _get(encrypted)
        conn = st["s"]
        acc = _native.get(encrypted)
        if acc is None or acc.conn is not conn:  # the target's pair was made afresh
            acc = _native[encrypted] = PeerAcceptor(conn, server=True)  # type: ignore[arg-type]
            acc.raw = RAW_PEER
        _loop(acc, batch, float(st["now"]))  # type: ignore[arg-type]
    for pi in (False, True):
        racc = _raw.get(pi)
        if racc is None:
            racc = _raw[pi] = PeerAcceptor(
                RawConnection(server=True, max_frame=1500, packet_info=pi), server=True)
        _loop(racc, [(d, r) for d, r in batch if type(d) is not FragmentRun], 1.0)
