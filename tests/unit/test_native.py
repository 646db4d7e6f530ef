"""Native endpoint + liveness state machine with injected time (no sockets)."""

from __future__ import annotations

from tunconnector.proto.framing import MsgType, encode_native, parse_header
from tunconnector.proto.liveness import Liveness, PeerDown, PeerUp
from tunconnector.proto.native import NativeEndpoint
from tunconnector.proto.offload import GsoFrame


def pair() -> tuple[NativeEndpoint, NativeEndpoint]:
    c = NativeEndpoint(keepalive=10, dead_after=60, max_frame=1500)
    s = NativeEndpoint(keepalive=10, dead_after=60, max_frame=1500)
    return c, s


def test_hello_handshake_brings_both_up() -> None:
    c, s = pair()
    c.start(0.0, initiator=True)
    s.start(0.0, initiator=False)
    hello = c.messages_to_send()
    assert len(hello) == 1 and parse_header(hello[0]).type == MsgType.KEEPALIVE
    d = s.decode(hello[0], 0.01)
    assert d.authentic and isinstance(s.next_event(), PeerUp)
    reply = s.messages_to_send()
    assert len(reply) == 1  # the server answers a hello at once
    c.decode(reply[0], 0.02)
    assert isinstance(c.next_event(), PeerUp)


def test_data_roundtrip_and_counters() -> None:
    c, s = pair()
    msgs = [c.encode_data(bytes([i]) * 100, 1.0) for i in range(5)]
    assert [parse_header(m).counter for m in msgs if m] == [1, 2, 3, 4, 5]
    frames = [f for m in msgs if m for f in s.decode(m, 1.0).frames]
    assert frames == [bytes([i]) * 100 for i in range(5)]


def test_bad_messages_counted_not_raised() -> None:
    _, s = pair()
    for junk in [b"", b"\x01", b"\x07" * 40, encode_native(MsgType.DATA, b""),
                 encode_native(MsgType.DATA, b"x" * 2000),
                 encode_native(MsgType.KEEPALIVE, b"short"),
                 encode_native(MsgType.HANDSHAKE_INIT, b"x" * 10)]:
        assert s.decode(junk, 0).frames == []
    assert s.drops == {"truncated": 2, "bad_version": 1, "empty": 1, "oversize": 1,
                       "bad_keepalive": 1, "unexpected_type": 1}
    assert s.next_event() is None  # nothing bad made the peer "alive"


def test_keepalive_timing_and_dead_peer() -> None:
    lv = Liveness(keepalive=10, dead_after=60)
    lv.start(0.0, send_first=False)
    lv.on_receive(1.0)
    assert isinstance(lv.next_event(), PeerUp)
    lv.on_send(5.0)
    lv.handle_timer(14.9)
    assert not lv.keepalive_due()
    lv.handle_timer(15.0)
    assert lv.keepalive_due()
    lv.on_keepalive_sent(15.0)
    assert lv.get_timer() == 25.0
    lv.handle_timer(60.9)
    assert lv.next_event() is None
    lv.handle_timer(61.0)
    ev = lv.next_event()
    assert isinstance(ev, PeerDown) and ev.silent_for == 60.0


def test_initiator_says_hello_every_second_even_while_sending() -> None:
    lv = Liveness(keepalive=10, dead_after=60)
    lv.start(0.0, send_first=True)
    lv.handle_timer(0.0)
    assert lv.keepalive_due()
    lv.on_keepalive_sent(0.0)
    for t in (0.3, 0.6, 0.9):
        lv.on_send(t)  # data does not postpone a hello
    lv.handle_timer(1.0)
    assert lv.keepalive_due()


def test_unknown_source_hello_rate_limited() -> None:
    _, s = pair()
    assert s.hello_for_unknown(0.0) is not None
    assert s.hello_for_unknown(0.5) is None
    assert s.hello_for_unknown(1.0) is not None


def test_strangers_plaintext_only_keepalive_admitted() -> None:
    c, s = pair()
    c.start(0.0, initiator=True)
    hello = c.messages_to_send()[0]
    assert s.screen_stranger(hello, 0.0) == (True, None)
    data = encode_native(MsgType.DATA, b"x" * 60)
    admit, reply = s.screen_stranger(data, 0.0)
    assert not admit and reply is not None and parse_header(reply).type == MsgType.KEEPALIVE
    assert s.screen_stranger(data, 0.5) == (False, None)  # rate-limited
    assert s.screen_stranger(b"\x07garbage", 2.0) == (False, None)  # no reply to junk


def test_encode_batch_equals_encode_data_and_fast_prefix_only_when_alive() -> None:
    a, _ = pair()
    b, _ = pair()
    frames = [b"one", b"two" * 100, b"\x00"]
    assert a.encode_batch(frames, 1.0) == [b.encode_data(f, 1.0) for f in frames]
    assert a.tx_counter == b.tx_counter == 3 and a.liveness.last_tx == 1.0
    c, s = pair()
    early = c.encode_data(b"payload", 0.0)
    assert s.quick(early, 0.0) is False  # peer not alive yet: decode() decides
    c.start(0.0, initiator=True)
    s.start(0.0, initiator=False)
    s.decode(c.messages_to_send()[0], 0.01)
    msg = c.encode_data(b"payload", 0.02)
    assert msg is not None and s.decode(msg, 0.02).frames == [b"payload"]
    assert s.quick(msg, 5.0) == b"payload"  # what decode() delivers
    assert s.liveness.last_rx == 5.0
    big = c.encode_data(b"x" * 1501, 6.0)  # over max_frame: decode() counts it
    assert big is not None and s.quick(big, 6.0) is False and s.liveness.last_rx == 5.0


def test_gso_prefix_matches_encode_gso() -> None:
    c, s = pair()
    c.start(0.0, initiator=True)
    s.start(0.0, initiator=False)
    msg = c.encode_gso(b"\x01" + bytes(9) + b"packet", 0.02)
    assert msg is not None and s.quick(msg, 0.02) is False  # not alive yet
    s.decode(c.messages_to_send()[0], 0.01)
    frame = s.quick(msg, 0.02)
    assert isinstance(frame, GsoFrame) and bytes(frame.data) == b"\x01" + bytes(9) + b"packet"
