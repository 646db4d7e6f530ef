"""Two native connections wired to each other in memory: no socket, no device, no sleep.

Each test hands one connection's output to the other (``exchange``) and drives time from
timer to timer with a fake clock (``run``), as aioquic's connection tests do.
"""

from __future__ import annotations

import logging
import os
import random
import types
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from test_fastpath_loss import superpkt
from test_offload import ipv4, partial, tcp

from tunconnector.proto import fragment
from tunconnector.proto import offload as o
from tunconnector.proto.connection import (
    AddressChanged,
    Connected,
    ConnectionEvent,
    Disconnected,
    GsoRun,
    Notice,
    each_datagram,
)
from tunconnector.proto.framing import (
    FLAG_ENCRYPTED,
    FLAG_GSO,
    HEADER,
    VERSION,
    MsgType,
    encode_native_stream,
)
from tunconnector.proto.native import NativeEndpoint
from tunconnector.proto.native_conn import PATHS, SMALL_BATCH, NativeConnection
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


# ---------------------------------------------------------------------- the fast path
def csum_pkt(payload: int, seq: int = 1) -> bytes:
    """A TCP packet with a partial checksum, as a device with offload hands it over."""
    pkt, l4, off = partial(ipv4(o.IPPROTO_TCP, tcp(b"p" * payload, seq=seq)), 0, False,
                           o.IPPROTO_TCP)
    return o.build_vnet_hdr(o.VnetHdr(o.F_NEEDS_CSUM, o.GSO_NONE, 0, 0, l4, off)) + pkt


def plain_pkt(payload: int) -> bytes:
    """A packet with nothing for the checksum offload (an ICMP echo, say)."""
    return o.ZERO_VNET_HDR + ipv4(1, b"\x08\x00" + b"i" * payload)


def deliver(src: NativeConnection, dst: NativeConnection, now: float, *,
            addr: tuple[str, int] = CLIENT) -> None:
    """Hand ``src``'s bulk output to ``dst`` datagram by datagram (no GRO)."""
    for batch, to in src.batches_to_send(now):
        assert to in (SERVER, addr)
        for d in each_datagram(batch):
            dst.receive_datagram(bytes(d), addr if to == SERVER else SERVER, now)


def as_bytes(frames: list) -> list[bytes]:
    return [bytes(f.data) if isinstance(f, GsoFrame) else bytes(f) for f in frames]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_super_packet_leaves_as_one_gso_run_of_equal_strides(encrypted: bool) -> None:
    c, s = udp_pair(encrypted)
    up(c, s)
    packet = superpkt(1, 20_000)
    c.send_device([packet], 0.1)
    batches = c.batches_to_send(0.1)
    assert len(batches) == 1
    run, to = batches[0]
    assert isinstance(run, GsoRun) and to == SERVER
    datagrams = each_datagram(run)
    assert len(datagrams) > 10 and run.stride <= c.max_datagram
    assert {len(d) for d in datagrams[:-1]} == {run.stride} and len(datagrams[-1]) <= run.stride
    for d in datagrams:
        s.receive_datagram(bytes(d), CLIENT, 0.1)
    got = s.frames_to_deliver()
    assert len(got) == 1 and isinstance(got[0], GsoFrame) and bytes(got[0].data) == packet
    assert c.super_tx == 1 and s.super_rx == 1
    assert not c.all_drops() and not s.all_drops()
    status = c.status(0.1)
    assert {"super_tx", "super_rx", "gso_cap", "gso_cap_decreases",
            "retransmits_seen"} <= set(status)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_all_small_csum_batch_is_one_sealed_batch(encrypted: bool) -> None:
    c, s = udp_pair(encrypted)
    up(c, s)
    frames = [csum_pkt(n, seq=i) for i, n in enumerate((0, 10, 100, 200))]
    assert all(len(f) <= SMALL_BATCH for f in frames)
    c.send_device(frames, 0.1)
    batches = c.batches_to_send(0.1)
    assert len(batches) == 1 and type(batches[0][0]) is list
    sealed = batches[0][0]
    assert isinstance(sealed, list) and len(sealed) == len(frames)
    flags = FLAG_GSO | (FLAG_ENCRYPTED if encrypted else 0)
    assert all(m[1] == MsgType.DATA and m[2] == flags for m in sealed)
    for m in sealed:
        s.receive_datagram(bytes(m), CLIENT, 0.1)
    assert as_bytes(s.frames_to_deliver()) == frames  # the header travels: the far
    assert not s.all_drops()  # kernel (or its software path) finishes the checksum


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_mixed_batch_completes_checksums_of_large_packets(encrypted: bool) -> None:
    c, s = udp_pair(encrypted)
    up(c, s)
    small_max = c.max_payload()  # a vnet frame above this is completed and sent plain
    big = csum_pkt(small_max + 4 - 50)  # 10 + 20 + 20 + payload: just above small_max
    assert small_max < len(big) <= small_max + o.VNET_HDR_LEN
    frames = [csum_pkt(10), big, plain_pkt(64), b"\x00" * 4]  # the last is too short
    c.send_device(frames, 0.1)
    batches = c.batches_to_send(0.1)
    assert len(batches) == 1 and len(each_datagram(batches[0][0])) == 3  # in order, one batch
    for m in each_datagram(batches[0][0]):
        s.receive_datagram(bytes(m), CLIENT, 0.1)
    got = s.frames_to_deliver()
    assert as_bytes(got)[0::2] == [frames[0], frames[2][o.VNET_HDR_LEN:]]
    assert isinstance(got[0], GsoFrame) and not isinstance(got[1], GsoFrame)
    completed, partial_sum = bytes(got[1]), big[o.VNET_HDR_LEN:]
    assert o.verify_l4_checksum(completed) and not o.verify_l4_checksum(partial_sum)
    assert completed[:36] == partial_sum[:36] and completed[38:] == partial_sum[38:]
    assert c.all_drops() == {"short_vnet_frame": 1}


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_tcp_super_packet_gathered_not_joined(encrypted: bool) -> None:
    c, s = tcp_pair(encrypted)
    up(c, s)
    packet = superpkt(1, 40_000)
    c.send_device([packet, csum_pkt(10)], 0.1)
    chunks = c.stream_to_send(0.1)
    assert c.batches_to_send(0.1) == [] and c.datagrams_to_send(0.1) == []
    if encrypted:  # prefix, sealed super-packet (one AEAD call), prefix, small message
        assert len(chunks) == 4
    else:  # prefix, header, the device's own buffer (no 40 KiB copy), prefix, message
        assert len(chunks) == 5 and chunks[2] is packet
    for i in range(0, len(wire := b"".join(chunks)), 1000):  # cut anywhere
        s.receive_stream(wire[i:i + 1000], 0.1)
    got = s.frames_to_deliver()
    assert as_bytes(got) == [packet, csum_pkt(10)]
    assert c.super_tx == 1 and not s.all_drops()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_quick_decodes_as_receive_datagram(encrypted: bool,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Two identical servers (fixed ephemeral keys and session indexes) get the same
    datagrams: one the adapter's way (quick, then receive_datagram on False), one
    receive_datagram only. Same frames, same drops."""
    rnd = random.Random(5)
    monkeypatch.setattr("tunconnector.proto.secure.secrets",
                        types.SimpleNamespace(randbits=lambda n: 1234))

    def pair() -> tuple[NativeConnection, NativeConnection]:
        keys = random.Random(9)

        def make(initiator: bool) -> Callable[[], NativeEndpoint]:
            def endpoint() -> NativeEndpoint:
                secure = SecureChannel(
                    initiator=initiator, psk=PSK,
                    ephemeral_factory=lambda: X25519PrivateKey.from_private_bytes(
                        keys.randbytes(32))) if encrypted else None
                return NativeEndpoint(keepalive=1.0, dead_after=4.0, max_frame=1500,
                                      secure=secure)
            return endpoint
        c = NativeConnection(make(True), server=False, peer=SERVER)
        s = NativeConnection(make(False), server=True)
        up(c, s)
        return c, s

    c, s_quick = pair()
    c2, s_full = pair()
    inputs: list[bytes] = []
    c.send_frames([os.urandom(n) for n in (1, 64, 1400)], 0.1)
    c.send_device([csum_pkt(20), csum_pkt(40)], 0.1)
    c.send_device([superpkt(1, 1200)], 0.1)  # FLAG_GSO, one datagram
    for batch, _ in c.batches_to_send(0.1):
        inputs.extend(bytes(d) for d in each_datagram(batch))
    inputs.extend(d for d, _ in c.datagrams_to_send(0.1))
    c.handle_timer(1.5)  # a keepalive
    inputs.extend(d for d, _ in c.datagrams_to_send(1.5))
    data = inputs[0]
    inputs.append(data)  # a replay
    forged = bytearray(data)
    forged[-1] ^= 1
    inputs.append(bytes(forged))
    inputs.append(data[:16])  # header only
    inputs.append(HEADER.pack(VERSION, MsgType.DATA, 0, 0, 0, 99) + b"x" * 1501)  # oversize
    inputs.append(HEADER.pack(VERSION, MsgType.DATA, 4, 0, 0, 98) + b"flags")
    inputs.extend(rnd.randbytes(rnd.randint(0, 80)) for _ in range(50))
    frames: list = []
    for i, d in enumerate(inputs):
        now = 1.6 + i * 1e-3
        r = s_quick.quick(d, now)
        if r is False:
            s_quick.receive_datagram(d, CLIENT, now)
        elif r is not None:
            frames.append(r)
        frames.extend(s_quick.frames_to_deliver())
        s_full.receive_datagram(d, CLIENT, now)
    assert as_bytes(frames) == as_bytes(s_full.frames_to_deliver())
    assert len(frames) == (6 if encrypted else 8)  # plaintext takes a replay, a flipped byte
    assert s_quick.all_drops() == s_full.all_drops() and s_full.all_drops()
    assert s_quick.peer == s_full.peer == CLIENT


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_gro_run_with_one_lost_fragment(encrypted: bool) -> None:
    c, s = udp_pair(encrypted)
    up(c, s)
    first, second = superpkt(1, 20_000), superpkt(20_001, 20_000)
    c.send_device([first], 0.1)
    c.send_device([second], 0.1)
    (run1, _), (run2, _) = c.batches_to_send(0.1)
    assert isinstance(run1, GsoRun) and isinstance(run2, GsoRun)
    stride = run1.stride
    lost = bytes(run1.buf[:3 * stride]) + bytes(run1.buf[4 * stride:])  # fragment 3 lost
    # as GRO reads return them (a read ends after a shorter datagram)
    for read in (lost, run2.buf):
        s.receive_run(fragment.FragmentRun(memoryview(read), stride), CLIENT, 0.1)
    got = s.frames_to_deliver()
    assert as_bytes(got) == [second]
    assert s.super_rx == 1 and s.status(0.1)["reassembly_pending"] == 1
    timer = s.get_timer()
    assert timer is not None and timer <= 1.1 + 1e-9  # the partial message expires
    s.handle_timer(1.2)
    assert s.all_drops() == {"fragment_expired": 1}


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_client_close_tells_the_server(encrypted: bool) -> None:
    c, s = udp_pair(encrypted)
    up(c, s)
    s.close(1.0)
    assert s.datagrams_to_send(1.0) == []  # a server leaves silently
    c.close(1.0)
    out = c.datagrams_to_send(1.0)
    if not encrypted:  # a plaintext EXIT would let anyone end the session: none
        assert out == []
        return
    assert [a for _, a in out] == [SERVER]
    s.receive_datagram(out[0][0], CLIENT, 1.0)
    assert Disconnected(1.0, "exit", restart=False) in events(s)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_latency_lane_one_packet_each_way(encrypted: bool) -> None:
    c, s = udp_pair(encrypted)
    up(c, s)
    for frame, vnet in ((plain_pkt(56), True), (csum_pkt(20), True), (b"raw ip", False)):
        msg = c.send_one(frame, 0.1, vnet_hdr=vnet)
        assert isinstance(msg, (bytes, bytearray))
        got = s.quick(msg, 0.1)
        want = frame if vnet and frame[0] & o.F_NEEDS_CSUM else (
            frame[o.VNET_HDR_LEN:] if vnet else frame)
        assert got is not False and got is not None and as_bytes([got]) == [want]
    # the batch path's cases: untouched
    assert c.send_one(superpkt(1, 5000), 0.1, vnet_hdr=True) is False
    assert c.send_one(csum_pkt(SMALL_BATCH), 0.1, vnet_hdr=True) is False
    assert c.send_one(b"", 0.1, vnet_hdr=False) is False
    lonely = NativeConnection(endpoint_factory(encrypted, False), server=True)
    assert lonely.send_one(b"x", 0.1, vnet_hdr=False) is False  # no peer yet
    # TCP: the lane returns stream bytes, framed
    tc, ts = tcp_pair(encrypted)
    up(tc, ts)
    chunk = tc.send_one(b"over tcp", 0.2, vnet_hdr=False)
    assert isinstance(chunk, bytes)
    ts.receive_stream(chunk, 0.2)
    assert ts.frames_to_deliver() == [b"over tcp"]


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_tcp_lane_takes_one_whole_message_of_a_proven_stream(encrypted: bool) -> None:
    """quick_read: a read that is exactly one whole plain message, nothing buffered before
    it: its frame; anything else untouched (False) for receive_stream."""
    tc, ts = tcp_pair(encrypted)
    up(tc, ts)
    chunk = tc.send_one(b"over tcp", 0.2, vnet_hdr=False)
    assert isinstance(chunk, bytes)
    assert ts.quick_read(chunk, 0.2) == b"over tcp"
    two = chunk + chunk
    assert ts.quick_read(two, 0.2) is False and ts.quick_read(chunk[:-1], 0.2) is False
    more = tc.send_one(b"more", 0.2, vnet_hdr=False)  # (a sealed message opens once)
    assert isinstance(more, bytes)
    ts.receive_stream(more[:5], 0.2)  # part of a message buffered: the batch path's
    assert ts.quick_read(more, 0.2) is False
    ts.receive_stream(more[5:], 0.2)
    assert ts.frames_to_deliver() == [b"more"]
    tc.send_device([superpkt(1, 5000)], 0.3)
    sup = b"".join(tc.stream_to_send(0.3))
    assert ts.quick_read(sup, 0.3) is False  # a super-packet: written whole by the batch path
    stranger = NativeConnection(endpoint_factory(encrypted, False), server=True, stream=True)
    stranger.start(0.0)
    assert stranger.quick_read(chunk, 0.4) is False  # not proven


def test_lane_before_the_handshake_queues_and_asks_for_a_flush() -> None:
    c, s = udp_pair(encrypted=True)
    c.start(0.0)
    s.start(0.0)
    c.datagrams_to_send(0.0)  # the initiation is lost
    assert c.send_one(b"early", 0.1, vnet_hdr=False) is None  # queued for the session
    assert c.has_work()
    c.get_timer()  # the adapter re-arms its timer
    assert not c.has_work()
    run(c, s, 0.1, 8.0)
    assert b"early" in s.frames_to_deliver()


def test_crypto_failures_are_notices_for_the_operator() -> None:
    c, s = udp_pair(encrypted=True)
    up(c, s)
    stranger = NativeConnection(
        lambda: NativeEndpoint(keepalive=1.0, dead_after=4.0, max_frame=1500,
                               secure=SecureChannel(initiator=True, psk=bytes(32))),
        server=False, peer=SERVER)
    stranger.start(0.3)  # another key: its initiation fails the MAC check
    for m, _ in stranger.datagrams_to_send(0.3):
        s.receive_datagram(m, CLIENT_MOVED, 0.3)
    notices = [e for e in events(s) if isinstance(e, Notice)]
    assert [(n.kind, n.level) for n in notices] == [("auth_bad_mac", logging.WARNING)]
    assert s.peer == CLIENT and s.all_drops() == {"bad_mac": 1}


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_paths_mode_carries_the_session(encrypted: bool) -> None:
    """Multi-path: the paths pick the peer's addresses (each path its own), so the
    connection sends everything to PATHS, data as batches and control as datagrams, and
    takes what a path hands it with receive_path; liveness and events are its own."""
    c = NativeConnection(endpoint_factory(encrypted, True), server=False, peer=PATHS)
    s = NativeConnection(endpoint_factory(encrypted, False), server=True, peer=PATHS)
    got: dict[str, list[bytes]] = {"c": [], "s": []}

    def move(now: float) -> None:
        for _ in range(20):
            n = 0
            for src, dst, name, addr in ((c, s, "s", CLIENT), (s, c, "c", SERVER)):
                out = [(d, a) for b, a in src.batches_to_send(now) for d in each_datagram(b)]
                out += src.datagrams_to_send(now)
                for data, to in out:
                    assert to == PATHS
                    n += 1
                    got[name].extend(dst.receive_path(bytes(data), addr, now).frames)
            if not n:
                return
        raise AssertionError("never quiet")

    c.start(0.0)
    s.start(0.0)
    move(0.0)
    assert [type(e) for e in events(c)] == [Connected]
    assert [type(e) for e in events(s)] == [Connected]
    c.send_device([b"up-1", b"up-2"], 0.1, vnet_hdr=False)
    s.send_device([b"down"], 0.1, vnet_hdr=False)
    move(0.1)
    assert got == {"s": [b"up-1", b"up-2"], "c": [b"down"]}
    c.handle_timer(10.0)  # the server went silent
    assert [type(e) for e in events(c)] == [Disconnected]

