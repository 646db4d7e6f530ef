"""Native header, keepalive/probe bodies, the TCP stream decoders, packet information."""

from __future__ import annotations

from tunconnector.proto.framing import (
    HEADER_LEN,
    MsgType,
    NativeStreamDecoder,
    NeedData,
    SimpletunDecoder,
    add_packet_info,
    encode_keepalive,
    encode_native,
    encode_native_stream,
    encode_probe,
    encode_simpletun,
    parse_header,
    parse_keepalive,
    parse_probe,
    strip_packet_info,
)

from ..registry import register

IPV4 = bytes.fromhex("450000540001400040010000" "0a000001" "0a000002") + bytes(64)


def native_seeds() -> list[bytes]:
    return [encode_keepalive(7, 123456, 654321), encode_probe(3, 999, ack=True, epoch=5),
            encode_native(MsgType.DATA, IPV4, counter=9),
            encode_native(MsgType.FRAGMENT, b"\x00\x01\x00\x00\x00\x00\x00\x40" + IPV4)]


@register("framing.parse_header", seeds=native_seeds)
def _header(data: bytes) -> None:
    h = parse_header(data)
    body = data[HEADER_LEN:]
    if h.type == MsgType.KEEPALIVE:
        parse_keepalive(body)
    elif h.type in (MsgType.PROBE, MsgType.PROBE_ACK):
        parse_probe(body)


def _drain(decoder: SimpletunDecoder | NativeStreamDecoder, chunks: list[bytes]) -> None:
    for chunk in chunks:
        decoder.receive_data(chunk)
        while not isinstance(decoder.next_frame(), NeedData):
            pass
    decoder.receive_data(b"")  # EOF: a frame cut short must be refused, not crash
    while not isinstance(decoder.next_frame(), NeedData):
        pass


@register("framing.simpletun_stream", stream=True,
          seeds=lambda: [encode_simpletun(IPV4) * 3, encode_simpletun(b"\x00" * 1500)])
def _simpletun(chunks: list[bytes]) -> None:
    _drain(SimpletunDecoder(max_frame=1518), chunks)


@register("framing.native_stream", stream=True,
          seeds=lambda: [b"".join(encode_native_stream(m) for m in native_seeds())])
def _native_stream(chunks: list[bytes]) -> None:
    _drain(NativeStreamDecoder(), chunks)


@register("framing.packet_info",
          seeds=lambda: [add_packet_info(IPV4), add_packet_info(bytes(12) + b"\x08\x06"
                                                                + bytes(28), tap=True)])
def _packet_info(data: bytes) -> None:
    strip_packet_info(data)
