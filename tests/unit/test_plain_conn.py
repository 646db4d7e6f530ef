"""RawConnection: raw UDP framing as a sans-I/O connection (the rules tunnel.py applied
inline before): packet information, oversize, empty, and who may move the peer.
SimpletunConnection: simpletun over TCP (proof by a first valid frame, oversize, a bad
length ends the stream)."""

from __future__ import annotations

from tunconnector.proto.acceptor import PeerAcceptor
from tunconnector.proto.connection import AddressChanged, Connected, Disconnected, Notice
from tunconnector.proto.framing import (
    PI_FLAG_STRIP,
    SimpletunDecoder,
    add_packet_info,
    encode_simpletun,
)
from tunconnector.proto.plain_conn import RawConnection, SimpletunConnection

A = ("192.0.2.2", 40000)
B = ("198.51.100.7", 41000)
PEER = ("192.0.2.1", 55556)
IP4 = bytes([0x45]) + bytes(39)


def events(conn: RawConnection | SimpletunConnection) -> list[object]:
    return list(iter(conn.next_event, None))


def test_server_takes_the_first_source_and_moves_on_any_datagram() -> None:
    s = RawConnection(server=True, max_frame=1500)
    s.send_device([IP4], 0.0, vnet_hdr=False)
    assert s.all_drops() == {"no_peer_yet": 1} and s.batches_to_send(0.0) == []
    s.receive_datagram(IP4, A, 0.1)
    assert s.peer == A and events(s) == [AddressChanged(0.1, A)]
    assert s.frames_to_deliver() == [IP4]
    s.receive_datagram(b"", B, 0.2)  # the raw server's documented rule: any source moves
    assert s.peer == B and events(s) == [AddressChanged(0.2, B)]
    assert s.frames_to_deliver() == [] and s.all_drops()["empty"] == 1
    s.receive_datagram(bytes(1501), B, 0.3)
    assert s.all_drops()["oversize"] == 1 and s.frames_to_deliver() == []


def test_client_listens_only_to_its_server() -> None:
    c = RawConnection(server=False, max_frame=1500, peer=PEER)
    c.receive_datagram(IP4, A, 0.1)
    assert c.peer == PEER and events(c) == [] and c.all_drops() == {"unknown_peer": 1}
    c.receive_datagram(IP4, PEER, 0.1)
    assert c.frames_to_deliver() == [IP4]


def test_device_frames_leave_as_one_batch_with_or_without_packet_info() -> None:
    c = RawConnection(server=False, max_frame=1500, peer=PEER)
    frames = [IP4, IP4 + b"x"]
    c.send_device(frames, 0.0, vnet_hdr=False)
    (batch, addr), = c.batches_to_send(0.0)
    assert batch is frames and addr == PEER  # the list itself: no copy
    pi = RawConnection(server=False, max_frame=1500, peer=PEER, packet_info=True)
    pi.send_device(frames, 0.0, vnet_hdr=False)
    (batch, _), = pi.batches_to_send(0.0)
    assert batch == [add_packet_info(f) for f in frames]


def test_packet_info_stripped_and_bad_headers_counted() -> None:
    s = RawConnection(server=True, max_frame=1500, packet_info=True)
    s.receive_datagram(add_packet_info(IP4), A, 0.0)
    assert s.frames_to_deliver() == [IP4]
    s.receive_datagram(b"\x00\x00\x08", A, 0.0)
    cut = bytearray(add_packet_info(IP4))
    cut[0:2] = PI_FLAG_STRIP.to_bytes(2, "big")
    s.receive_datagram(bytes(cut), A, 0.0)
    assert s.all_drops() == {"pi_strip": 1, "truncated": 1}
    quick, source = s.quick_parts()
    assert quick(add_packet_info(IP4), 0.0, source) == IP4
    assert quick(bytes(cut), 0.0, source) is False  # untouched: receive_datagram counts it


def test_quick_and_lane_take_only_what_needs_no_counting() -> None:
    c = RawConnection(server=False, max_frame=100, peer=PEER)
    assert c.quick(IP4, 0.0) == IP4
    assert c.quick(b"", 0.0) is False and c.quick(bytes(101), 0.0) is False
    assert c.send_one(IP4, 0.0, vnet_hdr=False) == IP4
    assert c.send_one(b"", 0.0, vnet_hdr=False) is False
    assert RawConnection(server=True, max_frame=100).send_one(IP4, 0.0, vnet_hdr=False) is False
    assert not c.has_work() and c.get_timer() is None


def test_acceptor_learns_the_raw_address_of_a_raw_peer() -> None:
    s = RawConnection(server=True, max_frame=1500)
    acc = PeerAcceptor(s, server=True)
    raw = ("::ffff:192.0.2.2", 40000, 0, 0)
    acc.receive(IP4, raw, A, 0.0)
    assert acc.lookup(raw) is s and s.frames_to_deliver() == [IP4]


def test_simpletun_stream_proven_by_its_first_valid_frame() -> None:
    s = SimpletunConnection(server=True, max_frame=1500, peer=A)
    s.start(0.0)
    assert events(s) == [] and not s.proven
    s.receive_stream(encode_simpletun(bytes(1501)), 0.1)  # oversize proves nothing
    assert not s.proven and s.frames_to_deliver() == [] and s.all_drops() == {"oversize": 1}
    wire = encode_simpletun(IP4) * 2
    for i in range(len(wire)):  # cut at every byte
        s.receive_stream(wire[i:i + 1], 0.2)
    assert s.proven and events(s) == [Connected(0.2, A)]
    assert s.frames_to_deliver() == [IP4, IP4]
    s.send_device([IP4, IP4], 0.3)
    d = SimpletunDecoder()
    d.receive_data(b"".join(s.stream_to_send(0.3)))
    assert d.frames() == [IP4, IP4]


def test_simpletun_proven_at_once_and_the_lane() -> None:
    c = SimpletunConnection(server=False, max_frame=1500, peer=PEER, proven=True)
    c.start(0.0)
    assert events(c) == [Connected(0.0, PEER)]
    msg = c.send_one(IP4, 0.1, vnet_hdr=False)
    assert msg == encode_simpletun(IP4) and c.quick_read(msg, 0.1) == IP4
    assert c.send_one(b"", 0.1, vnet_hdr=False) is False
    assert c.quick_read(msg + msg, 0.1) is False and c.quick_read(msg[:-1], 0.1) is False
    assert c.quick_read(encode_simpletun(bytes(1501)), 0.1) is False  # the batch path counts
    unproven = SimpletunConnection(server=True, max_frame=1500)
    assert unproven.quick_read(msg, 0.1) is False


def test_simpletun_bad_length_ends_the_stream_once() -> None:
    s = SimpletunConnection(server=True, max_frame=1500, peer=A)
    s.receive_stream(b"\x00\x00", 1.0)  # a zero length: simpletun has no empty frames
    got = events(s)
    assert [type(e) for e in got] == [Notice, Disconnected], got
    assert isinstance(got[0], Notice) and "closing connection" in got[0].message
    s.receive_stream(encode_simpletun(IP4), 1.1)  # nothing more is decoded
    assert s.failed and s.frames_to_deliver() == [] and s.all_drops() == {"bad_length": 1}
    cut = SimpletunConnection(server=True, max_frame=1500, peer=A)
    cut.receive_stream(encode_simpletun(IP4)[:-1], 2.0)
    cut.receive_stream(b"", 2.1)  # a frame cut short by the end: counted, no notice
    assert cut.all_drops() == {"truncated": 1} and events(cut) == [Disconnected(2.1, "truncated")]
