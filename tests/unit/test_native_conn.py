"""Two native connections wired to each other in memory: no socket, no device, no sleep.

Each test hands one connection's output to the other (``exchange``) and drives time from
timer to timer with a fake clock (``run``), as aioquic's connection tests do.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest
from test_fastpath_loss import superpkt

from tunconnector.proto.connection import (
    AddressChanged,
    Connected,
    ConnectionEvent,
    Disconnected,
)
from tunconnector.proto.framing import HEADER, VERSION, MsgType, encode_native_stream
from tunconnector.proto.native import NativeEndpoint
from tunconnector.proto.native_conn import NativeConnection
from tunconnector.proto.offload import GsoFrame
from tunconnector.proto.secure import SecureChannel

PSK = bytes(range(32))
CLIENT = ("192.0.2.2", 40000)
CLIENT_MOVED = ("198.51.100.7", 41000)
SERVER = ("192.0.2.1", 55556)
Drop = Callable[[bytes], bool]


def endpoint_factory(encrypted: bool, initiator: bool) -> Callable[[], NativeEndpoint]:
    def make() -> NativeEndpoint:
        secure = SecureChannel(initiator=initiator, psk=PSK) if encrypted else None
        return NativeEndpoint(keepalive=1.0, dead_after=4.0, max_frame=1500,
                              secure=secure)
    return make


def udp_pair(encrypted: bool) -> tuple[NativeConnection, NativeConnection]:
    c = NativeConnection(endpoint_factory(encrypted, True), server=False, peer=SERVER)
    s = NativeConnection(endpoint_factory(encrypted, False), server=True)
    return c, s


def tcp_pair(encrypted: bool) -> tuple[NativeConnection, NativeConnection]:
    c = NativeConnection(endpoint_factory(encrypted, True), server=False, stream=True)
    s = NativeConnection(endpoint_factory(encrypted, False), server=True, stream=True)
    return c, s


def exchange(c: NativeConnection, s: NativeConnection, now: float, *,
             client_addr: tuple[str, int] = CLIENT, drop: Drop | None = None) -> int:
    """Move everything each side has to send to the other until both are quiet."""
    moved = 0
    for _ in range(50):
        n = 0
        for data, addr in c.datagrams_to_send(now):
            n += 1
            if addr == SERVER and not (drop and drop(data)):
                s.receive_datagram(data, client_addr, now)
        for data, addr in s.datagrams_to_send(now):
            n += 1
            if addr == client_addr and not (drop and drop(data)):
                c.receive_datagram(data, SERVER, now)
        for chunk in c.stream_to_send(now):
            n += 1
            s.receive_stream(chunk, now)
        for chunk in s.stream_to_send(now):
            n += 1
            c.receive_stream(chunk, now)
        if not n:
            return moved
        moved += n
    raise AssertionError("the two connections never went quiet")


def run(c: NativeConnection, s: NativeConnection, start: float, end: float,
        drop: Drop | None = None) -> float:
    """Advance the fake clock from timer to timer until ``end``, moving output each step."""
    now = start
    exchange(c, s, now, drop=drop)
    for _ in range(10_000):
        due = min((t for t in (c.get_timer(), s.get_timer()) if t is not None), default=None)
        if due is None or due > end:
            return end
        now = max(now, due)
        for conn in (c, s):
            conn.handle_timer(now)
        exchange(c, s, now, drop=drop)
    raise AssertionError("timers never settled")


def events(conn: NativeConnection) -> list[ConnectionEvent]:
    return list(iter(conn.next_event, None))


def up(c: NativeConnection, s: NativeConnection, now: float = 0.0) -> None:
    c.start(now)
    s.start(now)
    exchange(c, s, now)
    assert any(isinstance(e, Connected) for e in events(c))
    assert any(isinstance(e, Connected) for e in events(s))


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_udp_data_both_ways(encrypted: bool) -> None:
    c, s = udp_pair(encrypted)
    c.start(0.0)
    s.start(0.0)
    exchange(c, s, 0.0)
    assert events(s)[:2] == [AddressChanged(0.0, CLIENT), Connected(0.0, CLIENT)]
    assert s.peer == CLIENT
    assert [type(e) for e in events(c)] == [Connected]
    frames = [os.urandom(n) for n in (1, 60, 1400, 1500)]
    for src, dst, now in ((c, s, 0.1), (s, c, 0.2)):  # both ways
        src.send_frames(frames, now)
        exchange(c, s, now)
        assert dst.frames_to_deliver() == frames
    assert not c.all_drops() and not s.all_drops()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_tcp_stream_split_at_every_byte_boundary(encrypted: bool) -> None:
    frames = [os.urandom(n) for n in (1, 2, 100, 1500, 7)]

    def client_stream() -> tuple[NativeConnection, list[bytes]]:
        c = NativeConnection(endpoint_factory(encrypted, True), server=False, stream=True)
        c.start(0.0)
        return c, c.stream_to_send(0.0)

    if not encrypted:
        c, hello = client_stream()
        c.send_frames(frames, 0.1)
        wire = b"".join(hello + c.stream_to_send(0.1))
        for cut in range(1, len(wire)):  # two pieces, cut at every byte (b"" is EOF)
            s = NativeConnection(endpoint_factory(False, False), server=True, stream=True)
            s.start(0.0)
            s.receive_stream(wire[:cut], 0.2)
            s.receive_stream(wire[cut:], 0.2)
            assert s.frames_to_deliver() == frames, cut
            assert s.proven and not s.all_drops()
    # every boundary at once: one byte per read, after a handshake when encrypted
    c, s = tcp_pair(encrypted)
    c.start(0.0)
    s.start(0.0)
    for chunk in c.stream_to_send(0.0):
        for i in range(len(chunk)):
            s.receive_stream(chunk[i:i + 1], 0.0)
    exchange(c, s, 0.0)
    c.send_frames(frames, 0.1)
    wire = b"".join(c.stream_to_send(0.1))
    for i in range(len(wire)):
        s.receive_stream(wire[i:i + 1], 0.1)
    assert s.frames_to_deliver() == frames
    assert s.proven and not s.all_drops()


def test_gso_super_packet_fragmented_and_one_fragment_lost() -> None:
    c, s = udp_pair(encrypted=True)
    up(c, s)
    first, second = superpkt(1, 20_000), superpkt(20_001, 20_000)
    c.send_super(first, 0.1)
    datagrams = c.datagrams_to_send(0.1)
    assert len(datagrams) > 10 and all(len(d) <= c.max_datagram for d, _ in datagrams)
    for i, (d, _) in enumerate(datagrams):
        if i != 3:  # one fragment lost on the way
            s.receive_datagram(d, CLIENT, 0.1)
    assert s.frames_to_deliver() == []
    timer = s.get_timer()
    assert timer is not None and timer <= 1.1 + 1e-9  # the partial message expires
    s.handle_timer(1.2)
    assert s.all_drops().get("fragment_expired") == 1
    c.send_super(second, 1.3)
    exchange(c, s, 1.3)
    got = s.frames_to_deliver()
    assert len(got) == 1 and isinstance(got[0], GsoFrame) and bytes(got[0].data) == second
    assert s.super_rx == 1 and c.super_tx == 2


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_address_change_followed_only_on_authentic_input(encrypted: bool) -> None:
    c, s = udp_pair(encrypted)
    up(c, s)
    rnd = random.Random(7)
    for _ in range(500):  # garbage and forged-looking messages from a new address
        n = rnd.randint(0, 200)
        data = bytearray(os.urandom(n))
        if n >= 16 and rnd.random() < 0.5:
            data[0] = VERSION
            data[1] = rnd.choice([int(t) for t in MsgType])
        s.receive_datagram(bytes(data), CLIENT_MOVED, 0.5)
    forged = HEADER.pack(VERSION, MsgType.DATA, 1 if encrypted else 0, 0, 0, 999) + b"x" * 40
    s.receive_datagram(forged, CLIENT_MOVED, 0.5)
    assert s.peer == CLIENT and s.frames_to_deliver() == []
    assert s.all_drops().get("unknown_peer", 0) + sum(s.all_drops().values()) > 0
    assert not any(isinstance(e, AddressChanged) for e in events(s))
    if not encrypted:  # plaintext DATA from a stranger got one hello back, not a move
        hellos = [d for d, a in s.datagrams_to_send(0.5) if a == CLIENT_MOVED]
        assert len(hellos) <= 1
    # the real client, now behind a new address (NAT rebinding): authentic, so followed
    c.send_frames([b"after the move"], 3.0)
    for moved, _ in c.datagrams_to_send(3.0):
        s.receive_datagram(moved, CLIENT_MOVED, 3.0)
    moved_at = 3.0
    if not encrypted:  # plaintext DATA is not proof: the keepalive that follows is
        assert s.peer == CLIENT
        moved_at = 5.0
        c.handle_timer(moved_at)
        for keepalive, _ in c.datagrams_to_send(moved_at):
            s.receive_datagram(keepalive, CLIENT_MOVED, moved_at)
    assert s.peer == CLIENT_MOVED
    assert AddressChanged(moved_at, CLIENT_MOVED) in events(s)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_tcp_reconnect_replaces_old_connection(encrypted: bool) -> None:
    c, s1 = tcp_pair(encrypted)
    up(c, s1)
    c.receive_stream(b"\x00\x00\x00\x40" + b"partial", 0.2)  # the old stream dies mid-message
    # the client reconnects: a new stream, a new session, a hello on it; the server side
    # of the new stream is a new connection object, proven by that hello
    c.connection_made(1.0)
    s2 = NativeConnection(endpoint_factory(encrypted, False), server=True, stream=True)
    s2.start(1.0)
    assert not s2.proven
    exchange(c, s2, 1.0)
    assert Connected(1.0, None) in events(s2) and s2.proven
    assert Connected(1.0, None) in events(c)  # the old partial message was forgotten
    c.send_frames([b"two"], 1.1)
    exchange(c, s2, 1.1)
    assert s2.frames_to_deliver() == [b"two"]
    assert not c.all_drops() and not s2.all_drops()
    # a stranger's stream with plaintext DATA and no proof: never proven, nothing delivered
    stranger = NativeConnection(endpoint_factory(encrypted, False), server=True, stream=True)
    stranger.start(1.2)
    msg = HEADER.pack(VERSION, MsgType.DATA, 0, 0, 0, 1) + b"let me in"
    stranger.receive_stream(encode_native_stream(msg) * 3, 1.2)
    assert not stranger.proven and stranger.frames_to_deliver() == []
    assert not any(isinstance(e, Connected) for e in events(stranger))


def test_keepalive_and_dead_peer_timers_on_a_fake_clock() -> None:
    c, s = udp_pair(encrypted=False)
    up(c, s)
    sent: list[float] = []
    now = 0.0
    for _ in range(200):  # idle for 10 s: keepalives keep both sides up
        t = min(x for x in (c.get_timer(), s.get_timer()) if x is not None)
        if t > 10.0:
            break
        now = t
        c.handle_timer(now)
        s.handle_timer(now)
        for d, _ in c.datagrams_to_send(now):
            sent.append(now)
            s.receive_datagram(d, CLIENT, now)
        for d, _ in s.datagrams_to_send(now):
            c.receive_datagram(d, SERVER, now)
    assert 8 <= len(sent) <= 12  # one a second
    assert not any(isinstance(e, Disconnected) for e in events(c) + events(s))
    # the path breaks: nothing gets through any more; dead after 4 s of silence
    end = run(c, s, now, now + 6.0, drop=lambda d: True)
    got = events(c)
    dead = [e for e in got if isinstance(e, Disconnected)]
    assert len(dead) == 1 and dead[0].reason == "dead_peer" and dead[0].restart
    assert now + 4.0 <= dead[0].at <= now + 5.0 + 1e-9, (now, dead[0])
    s_dead = [e for e in events(s) if isinstance(e, Disconnected)]
    assert len(s_dead) == 1 and not s_dead[0].restart
    assert end == now + 6.0


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("server", [False, True], ids=["client", "server"])
def test_garbage_counted_never_raised(encrypted: bool, server: bool) -> None:
    rnd = random.Random(11)
    make = endpoint_factory(encrypted, not server)
    dgram = NativeConnection(make, server=server, peer=None if server else SERVER)
    dgram.start(0.0)
    for i in range(2000):
        n = rnd.randint(0, 300)
        data = bytearray(rnd.randbytes(n))
        if n > 2 and i % 2:
            data[0] = VERSION
            data[1] = rnd.choice([int(t) for t in MsgType])
        dgram.receive_datagram(bytes(data), SERVER if i % 3 else CLIENT_MOVED, i * 1e-3)
        dgram.handle_timer(i * 1e-3)
    assert sum(dgram.all_drops().values()) > 0
    if encrypted:  # (plaintext DATA from the peer's address is the peer's: no proof exists)
        assert dgram.frames_to_deliver() == []
    # a stream: valid lengths with garbage inside (counted), then a bad length (ends it)
    stream = NativeConnection(make, server=server, stream=True)
    stream.start(0.0)
    body = b"".join(encode_native_stream(rnd.randbytes(rnd.randint(16, 100)))
                    for _ in range(50))
    for i in range(len(body)):
        stream.receive_stream(body[i:i + 1], 1.0)
    stream.receive_stream(b"\xff\xff\xff\xff", 1.0)
    stream.receive_stream(b"more after the end", 1.0)
    drops = stream.all_drops()
    assert drops.get("bad_length") == 1, drops
    assert [e.reason for e in events(stream) if isinstance(e, Disconnected)] == ["bad_length"]
    assert stream.failed and stream.frames_to_deliver() == []
