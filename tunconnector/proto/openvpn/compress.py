"""Compression framing of the data channel, without compression.

openvpn puts a compression header on every data-channel payload (pings and OCC
messages included) when ``comp-lzo`` or ``compress`` is configured, even when nothing is
compressed; a client must frame as the server does or every packet is garbage to it.

- ``comp-lzo [no|yes|adaptive]``: one byte before the payload, 0xFA (not compressed).
- ``compress`` / ``compress stub``: the payload's first byte moves to its end and 0xFB
  takes its place.
- ``compress stub-v2``: nothing, unless the payload starts with 0x50; then 0x50 0x00
  goes before it.

We never compress (as openvpn 2.6 with its default ``allow-compression no``); a received
packet that is compressed is refused (counted ``compressed``): decompressing needs LZO or
LZ4, which tunconnector does not carry. ``compress lz4``/``lz4-v2``/``lzo`` with
``allow-compression yes`` are refused by the config reader.
"""

from __future__ import annotations

from ...errors import RemoteProtocolError

NO_COMPRESS = 0xFA
NO_COMPRESS_SWAP = 0xFB
V2_INDICATOR = 0x50
V2_UNCOMPRESSED = 0x00

#: framings (config and push values -> kind)
KINDS = ("lzo", "stub", "stub-v2")


class Framing:
    """Adds and removes one framing's header (``kind`` in :data:`KINDS`)."""

    __slots__ = ("kind",)

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown compression framing {kind!r}")
        self.kind = kind

    def wrap(self, payload: bytes | memoryview) -> bytes | memoryview:
        if self.kind == "lzo":
            return bytes((NO_COMPRESS,)) + payload
        if self.kind == "stub":
            if not payload:
                return payload
            return bytes((NO_COMPRESS_SWAP,)) + payload[1:] + payload[:1]
        if payload[:1] == bytes((V2_INDICATOR,)):
            return bytes((V2_INDICATOR, V2_UNCOMPRESSED)) + payload
        return payload

    def unwrap(self, payload: bytes) -> bytes:
        """The payload without its header; RemoteProtocolError if it was compressed."""
        if not payload:
            return payload
        head = payload[0]
        if self.kind == "stub-v2":
            if head != V2_INDICATOR:
                return payload
            if payload[1:2] == bytes((V2_UNCOMPRESSED,)):
                return payload[2:]
            raise RemoteProtocolError("compressed", "compressed packet (stub-v2): "
                                      "tunconnector does not decompress")
        if head == NO_COMPRESS:
            return payload[1:]
        if head == NO_COMPRESS_SWAP:
            if len(payload) < 2:
                return b""
            return payload[-1:] + payload[1:-1]
        raise RemoteProtocolError("compressed", f"compressed packet (header 0x{head:02x}): "
                                  "tunconnector does not decompress")


def from_option(words: list[str]) -> str | None:
    """The framing of a ``comp-lzo``/``compress`` option (config or pushed), or None
    when it switches framing off. ValueError for real compression."""
    name, args = words[0], words[1:]
    if name == "comp-lzo":
        return "lzo"  # yes/adaptive frame as 'no': we never compress (allow-compression no)
    if name == "compress":
        alg = args[0] if args else "stub"
        if alg == "stub":
            return "stub"
        if alg == "stub-v2":
            return "stub-v2"
        raise ValueError(f"compress {alg}: real compression is not supported (use "
                         "'compress stub-v2' or 'comp-lzo no' on the server, as openvpn "
                         "2.6's default allow-compression no does)")
    raise ValueError(f"not a compression option: {name}")
