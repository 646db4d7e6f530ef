"""Framing decoders fed whole and byte by byte; only RemoteProtocolError may come out."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunconnector.errors import RemoteProtocolError
from tunconnector.proto.framing import (
    HEADER_LEN,
    NEED_DATA,
    Header,
    MsgType,
    NativeStreamDecoder,
    SimpletunDecoder,
    encode_keepalive,
    encode_native,
    encode_native_stream,
    encode_simpletun,
    parse_header,
    parse_keepalive,
)

FRAMES = [bytes([i]) * n for i, n in enumerate([1, 2, 60, 1400, 1500, 9000, 65535])]


def feed_whole(dec, data: bytes) -> list[bytes]:  # type: ignore[no-untyped-def]
    dec.receive_data(data)
    return dec.frames()


def feed_bytewise(dec, data: bytes) -> list[bytes]:  # type: ignore[no-untyped-def]
    out = []
    for i in range(len(data)):
        dec.receive_data(data[i:i + 1])
        out += dec.frames()
    return out


@pytest.mark.parametrize("feed", [feed_whole, feed_bytewise])
def test_simpletun_roundtrip(feed) -> None:  # type: ignore[no-untyped-def]
    frames = FRAMES[:5]
    wire = b"".join(encode_simpletun(f) for f in frames)
    assert feed(SimpletunDecoder(), wire) == frames


@pytest.mark.parametrize("feed", [feed_whole, feed_bytewise])
def test_native_stream_roundtrip(feed) -> None:  # type: ignore[no-untyped-def]
    msgs = [encode_native(MsgType.DATA, f, counter=i) for i, f in enumerate(FRAMES[:5])]
    wire = b"".join(encode_native_stream(m) for m in msgs)
    got = feed(NativeStreamDecoder(), wire)
    assert got == msgs
    assert [parse_header(m).counter for m in got] == list(range(5))


def test_simpletun_zero_length_poisons() -> None:
    dec = SimpletunDecoder()
    dec.receive_data(b"\x00\x00abc")
    with pytest.raises(RemoteProtocolError) as ei:
        dec.next_frame()
    assert ei.value.reason == "bad_length"
    with pytest.raises(RemoteProtocolError):  # stays poisoned: the stream is lost
        dec.next_frame()


def test_native_stream_oversize_rejected_before_buffering() -> None:
    dec = NativeStreamDecoder(max_frame=70_000)
    dec.receive_data((10_000_000).to_bytes(4, "big"))
    with pytest.raises(RemoteProtocolError) as ei:
        dec.next_frame()
    assert ei.value.reason == "bad_length"


def test_native_stream_too_short_for_header() -> None:
    dec = NativeStreamDecoder()
    dec.receive_data((3).to_bytes(4, "big") + b"abc")
    with pytest.raises(RemoteProtocolError):
        dec.next_frame()


def test_truncated_at_eof() -> None:
    dec = SimpletunDecoder()
    dec.receive_data(encode_simpletun(b"x" * 100)[:50])
    assert dec.next_frame() is NEED_DATA
    dec.receive_data(b"")
    with pytest.raises(RemoteProtocolError) as ei:
        dec.next_frame()
    assert ei.value.reason == "truncated"


def test_clean_eof() -> None:
    dec = SimpletunDecoder()
    dec.receive_data(encode_simpletun(b"abc"))
    dec.receive_data(b"")
    assert dec.frames() == [b"abc"]


def test_header_roundtrip_and_errors() -> None:
    h = Header(MsgType.DATA, flags=1, path=3, session=0xDEADBEEF, counter=2**64 - 1)
    assert parse_header(h.pack() + b"x") == h
    assert len(h.pack()) == HEADER_LEN
    for bad, reason in [
        (b"\x01\x01", "truncated"),
        (b"\x02" + h.pack()[1:], "bad_version"),
        (b"\x01\x99" + h.pack()[2:], "bad_type"),
        (b"\x01\x01\x80" + h.pack()[3:], "bad_flags"),
    ]:
        with pytest.raises(RemoteProtocolError) as ei:
            parse_header(bad)
        assert ei.value.reason == reason


def test_keepalive_body() -> None:
    msg = encode_keepalive(5, 123, 456)
    assert parse_header(msg).type == MsgType.KEEPALIVE
    assert parse_keepalive(msg[HEADER_LEN:]) == (123, 456)
    with pytest.raises(RemoteProtocolError):
        parse_keepalive(b"short")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64))
def test_fuzz_stream_decoders(data: bytes, chunk: int) -> None:
    """Any input parses or raises RemoteProtocolError, whole or in chunks."""
    for cls in (SimpletunDecoder, NativeStreamDecoder):
        dec = cls()
        try:
            for i in range(0, len(data), chunk):
                dec.receive_data(data[i:i + chunk])
                dec.frames()
            dec.receive_data(b"")
            dec.frames()
        except RemoteProtocolError:
            pass


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=100))
def test_fuzz_header(data: bytes) -> None:
    try:
        parse_header(data)
    except RemoteProtocolError:
        pass


def test_random_split_points() -> None:
    rng = random.Random(1)
    frames = [rng.randbytes(rng.randint(1, 3000)) for _ in range(200)]
    wire = b"".join(encode_simpletun(f) for f in frames)
    dec = SimpletunDecoder()
    out: list[bytes] = []
    i = 0
    while i < len(wire):
        n = rng.randint(1, 5000)
        dec.receive_data(wire[i:i + n])
        out += dec.frames()
        i += n
    assert out == frames


def test_packet_info_round_trip_and_refusals() -> None:
    from tunconnector.proto.framing import add_packet_info, strip_packet_info

    v4 = bytes([0x45]) + bytes(19)
    v6 = bytes([0x60]) + bytes(39)
    assert add_packet_info(v4) == b"\x00\x00\x08\x00" + v4  # what a TUN without IFF_NO_PI
    assert add_packet_info(v6) == b"\x00\x00\x86\xdd" + v6  # reads for IPv4 / IPv6
    eth = bytes(12) + b"\x08\x06" + bytes(28)  # an ARP frame on a TAP
    assert add_packet_info(eth, tap=True)[:4] == b"\x00\x00\x08\x06"
    for frame in (v4, v6, b"\x00garbage"):
        assert strip_packet_info(add_packet_info(frame)) == frame
    for bad, reason in ((b"", "truncated"), (b"\x00\x00\x08\x00", "truncated"),
                        (b"\x00\x01\x08\x00" + v4, "pi_strip")):
        with pytest.raises(RemoteProtocolError) as ei:
            strip_packet_info(bad)
        assert ei.value.reason == reason
