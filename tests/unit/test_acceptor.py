"""PeerAcceptor: a point-to-point server's connection driven as the tunnel adapter drives it
(raw recvfrom addresses, the quick decoder for the known peer, everything else through
the acceptor), in memory."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from test_native_conn import CLIENT, SERVER, endpoint_factory, events, udp_pair, up

from tunconnector.keys import decode_key, generate_keypair
from tunconnector.proto import fragment
from tunconnector.proto.acceptor import PeerAcceptor
from tunconnector.proto.connection import AddressChanged, Connected, each_datagram
from tunconnector.proto.cookie import REPLY_LEN, CookieChecker
from tunconnector.proto.framing import MsgType
from tunconnector.proto.native import NativeEndpoint
from tunconnector.proto.native_conn import NativeConnection
from tunconnector.proto.secure import HandshakeGuard, SecureChannel

#: how a dual-stack socket spells an IPv4 peer
RAW_CLIENT = ("::ffff:" + CLIENT[0], CLIENT[1], 0, 0)
RAW_MOVED = ("::ffff:198.51.100.7", 41000, 0, 0)
MOVED = ("198.51.100.7", 41000)


def normalize(raw: Any) -> Any:
    host = raw[0][7:] if raw[0].startswith("::ffff:") else raw[0]
    return (host, raw[1])


def adapter_loop(acc: PeerAcceptor, batch: list[tuple[Any, Any]], now: float) -> list[Any]:
    """Tunnel._on_udp_batch's shape: one compare and one quick call per known datagram."""
    conn = acc.conn
    quick, source = conn.quick_parts()
    peer_raw = acc.raw
    frames: list[Any] = []
    for data, raw in batch:
        if raw == peer_raw:
            frame = quick(data, now, source)
            if frame is not False:
                if frame is not None:
                    frames.append(frame)
                continue
        if type(data) is fragment.FragmentRun:
            acc.receive_run(data, raw, normalize(raw), now)
        else:
            acc.receive(data, raw, normalize(raw), now)
        frames.extend(conn.frames_to_deliver())
        peer_raw = acc.raw
        quick, source = conn.quick_parts()
    return frames


def client_batch(c: NativeConnection, now: float, raw: Any = RAW_CLIENT) -> list[tuple[Any, Any]]:
    out: list[tuple[Any, Any]] = []
    for batch, addr in c.batches_to_send(now):
        assert addr == SERVER
        out.extend((bytes(d), raw) for d in each_datagram(batch))
    out.extend((d, raw) for d, addr in c.datagrams_to_send(now) if addr == SERVER)
    return out


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_first_datagram_teaches_the_raw_address_then_quick(encrypted: bool) -> None:
    c = NativeConnection(endpoint_factory(encrypted, True), server=False, peer=SERVER)
    s = NativeConnection(endpoint_factory(encrypted, False), server=True)
    acc = PeerAcceptor(s, server=True)
    assert acc.lookup(RAW_CLIENT) is None and acc.connections() == [s]
    c.start(0.0)
    for _ in range(5):  # handshake / hello both ways through the acceptor
        adapter_loop(acc, client_batch(c, 0.0), 0.0)
        for d, addr in s.datagrams_to_send(0.0):
            assert addr == CLIENT
            c.receive_datagram(d, SERVER, 0.0)
    assert acc.raw == RAW_CLIENT and acc.lookup(RAW_CLIENT) is s and s.peer == CLIENT
    assert AddressChanged(0.0, CLIENT) in events(s)
    frames = [os.urandom(n) for n in (1, 100, 1400)]
    c.send_device(frames, 0.1, vnet_hdr=False)
    got = adapter_loop(acc, client_batch(c, 0.1), 0.1)
    assert [bytes(f) for f in got] == frames


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_peer_moves_and_its_new_raw_address_is_learnt(encrypted: bool) -> None:
    c, s = udp_pair(encrypted)
    up(c, s)
    acc = PeerAcceptor(s, server=True)
    c.send_device([b"one"], 0.5, vnet_hdr=False)
    assert adapter_loop(acc, client_batch(c, 0.5), 0.5) == [b"one"]
    assert acc.raw == RAW_CLIENT
    # a stranger's garbage from the new address moves nothing
    assert adapter_loop(acc, [(b"\x01\x01" + bytes(30), RAW_MOVED)], 0.6) == []
    assert acc.raw == RAW_CLIENT and s.peer == CLIENT
    # the client's NAT rebinds: its authentic keepalive / data moves the peer
    c.handle_timer(2.0)
    moved = client_batch(c, 2.0, raw=RAW_MOVED)
    c.send_device([b"two"], 2.0, vnet_hdr=False)
    moved += client_batch(c, 2.0, raw=RAW_MOVED)
    got = adapter_loop(acc, moved, 2.0)
    assert b"two" in [bytes(f) for f in got]
    assert s.peer == MOVED and acc.raw == RAW_MOVED
    assert AddressChanged(2.0, MOVED) in events(s)


def test_gro_run_from_the_known_peer_goes_to_the_connection() -> None:
    c, s = udp_pair(encrypted=True)
    up(c, s)
    acc = PeerAcceptor(s, server=True)
    c.send_device([b"x"], 0.2, vnet_hdr=False)
    adapter_loop(acc, client_batch(c, 0.2), 0.2)  # learns the raw address
    from test_native_conn import superpkt
    c.send_device([superpkt(1, 20000)], 0.3)
    (batch, _), = c.batches_to_send(0.3)
    assert not isinstance(batch, list)
    run = fragment.FragmentRun(memoryview(bytes(batch.buf)), batch.stride)
    got = adapter_loop(acc, [(run, RAW_CLIENT)], 0.3)
    assert len(got) == 1 and s.super_rx == 1


def _keyed_pair(checker: CookieChecker) -> tuple[Callable[[], NativeEndpoint],
                                                 Callable[[], NativeEndpoint]]:
    cpriv, cpub = generate_keypair()
    spriv, spub = generate_keypair()
    guard = HandshakeGuard(cookies=checker)

    def client() -> NativeEndpoint:
        return NativeEndpoint(keepalive=1.0, dead_after=4.0, max_frame=1500, secure=SecureChannel(
            initiator=True, private_key=decode_key(cpriv), peer_public_key=decode_key(spub)))

    def server() -> NativeEndpoint:
        return NativeEndpoint(keepalive=1.0, dead_after=4.0, max_frame=1500, secure=SecureChannel(
            initiator=False, private_key=decode_key(spriv), peer_public_key=decode_key(cpub),
            guard=guard))
    return client, server


def test_server_under_initiation_flood_answers_cookies_to_the_full_address() -> None:
    """A p2p server with a cookie checker: a flood of valid-mac1 initiations gets cookie
    replies (no DH) sent to each initiation's whole source address; the real client
    takes its cookie, retries with mac2 and gets through."""
    checker = CookieChecker(threshold=0)  # every initiation counts as load
    make_client, make_server = _keyed_pair(checker)
    s = NativeConnection(make_server, server=True)
    c = NativeConnection(make_client, server=False, peer=SERVER)
    acc = PeerAcceptor(s, server=True)
    s.start(0.0)
    c.start(0.0)
    init = client_batch(c, 0.0)
    assert len(init) == 1 and init[0][0][1] == MsgType.HANDSHAKE_INIT
    adapter_loop(acc, init, 0.0)
    replies = s.datagrams_to_send(0.0)
    assert [(len(r), a) for r, a in replies] == [(REPLY_LEN, CLIENT)]
    assert s.all_drops() == {"cookie_sent": 1} and s.peer is None and acc.raw is None
    c.receive_datagram(replies[0][0], SERVER, 0.01)  # cookie taken: initiates again, mac2
    for _ in range(4):
        adapter_loop(acc, client_batch(c, 0.01), 0.01)
        for d, _addr in s.datagrams_to_send(0.01):
            c.receive_datagram(d, SERVER, 0.01)
    assert any(isinstance(e, Connected) for e in events(s))
    assert s.peer == CLIENT and acc.raw == RAW_CLIENT


def test_plaintext_strangers_cost_no_pump_and_get_one_hello() -> None:
    c, s = udp_pair(encrypted=False)
    up(c, s)
    acc = PeerAcceptor(s, server=True)
    data = [(bytes([1, MsgType.DATA]) + bytes(40), ("::ffff:203.0.113.9", 9, 0, 0))] * 50
    assert adapter_loop(acc, data, 1.0) == []
    hellos = s.datagrams_to_send(1.0)
    assert [a for _, a in hellos] == [("203.0.113.9", 9)]  # rate-limited: one per second
    assert s.all_drops()["unknown_peer"] == 50 and s.peer == CLIENT
