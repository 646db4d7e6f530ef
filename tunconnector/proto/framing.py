"""Wire framings: ``raw`` (UDP), ``simpletun`` (TCP) and ``native`` (UDP or TCP).

Native message layout (all integers big-endian), 16 bytes of header::

    0        1        2        3        4            8                 16
    +--------+--------+--------+--------+------------+-----------------+------
    | ver=1  | type   | flags  | path   | session    | counter         | payload
    +--------+--------+--------+--------+------------+-----------------+------

- ``type``: see :class:`MsgType`.
- ``flags``: bit 0 ``ENCRYPTED`` (payload is AEAD ciphertext + 16-byte tag, the header
  is the associated data); bit 1 ``GSO`` (payload starts with a virtio_net_hdr).
- ``path``: index of the underlay path the message was sent on (multi-link), 0 otherwise.
- ``session``: receiver's session index when encrypted, 0 in plaintext.
- ``counter``: per-sender 64-bit message counter (AEAD nonce when encrypted; sequence
  number for duplicate suppression and loss estimates otherwise).

On UDP every datagram carries one native message. On TCP every native message is
prefixed by a 4-byte big-endian length (super-packets exceed 64 KiB); ``simpletun``
is a 2-byte big-endian length followed by the frame, as in simpletun.c.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ..errors import LocalProtocolError, RemoteProtocolError
from .offload import ETH_P_IP, ETH_P_IPV6

VERSION = 1
HEADER = struct.Struct("!BBBBIQ")
HEADER_LEN = HEADER.size  # 16
TCP_NATIVE_PREFIX = struct.Struct("!I")
SIMPLETUN_PREFIX = struct.Struct("!H")

#: bytes of AEAD tag after an encrypted payload (both ciphers)
TAG_LEN = 16

FLAG_ENCRYPTED = 0x01
FLAG_GSO = 0x02
KNOWN_FLAGS = FLAG_ENCRYPTED | FLAG_GSO

#: upper bound of one native message body on TCP (a 64 KiB super-packet + headers)
MAX_NATIVE_MESSAGE = 70_000
#: simpletun frames carry a device frame; the 2-byte prefix caps them anyway
MAX_SIMPLETUN_FRAME = 65_535


class MsgType(enum.IntEnum):
    DATA = 0x01
    KEEPALIVE = 0x02
    PROBE = 0x06
    PROBE_ACK = 0x07
    HANDSHAKE_INIT = 0x10
    HANDSHAKE_RESP = 0x11
    COOKIE_REPLY = 0x12
    SESSION_RESET = 0x13  # a hub lost the session: handshake again (proto/reset.py)
    EXIT = 0x14  # sealed: the sender stops (explicit exit notification)
    FRAGMENT = 0x20


_KNOWN_TYPES = frozenset(int(t) for t in MsgType)


@dataclass(frozen=True, slots=True)
class Header:
    type: int
    flags: int = 0
    path: int = 0
    session: int = 0
    counter: int = 0

    def pack(self) -> bytes:
        return HEADER.pack(VERSION, self.type, self.flags, self.path, self.session, self.counter)

    def pack_into(self, buf: bytearray | memoryview, offset: int = 0) -> None:
        HEADER.pack_into(
            buf, offset, VERSION, self.type, self.flags, self.path, self.session, self.counter
        )


def pack_header_into(
    buf: bytearray | memoryview,
    offset: int,
    mtype: int,
    flags: int = 0,
    path: int = 0,
    session: int = 0,
    counter: int = 0,
) -> None:
    """Write a header in place (the per-packet path avoids building a Header object)."""
    HEADER.pack_into(buf, offset, VERSION, mtype, flags, path, session, counter)


def parse_header(data: bytes | bytearray | memoryview) -> Header:
    """Parse and validate the header of one native message."""
    if len(data) < HEADER_LEN:
        raise RemoteProtocolError("truncated", f"native message of {len(data)} bytes")
    ver, mtype, flags, path, session, counter = HEADER.unpack_from(data, 0)
    if ver != VERSION:
        raise RemoteProtocolError("bad_version", f"native version {ver}")
    if mtype not in _KNOWN_TYPES:
        raise RemoteProtocolError("bad_type", f"native type {mtype:#x}")
    if flags & ~KNOWN_FLAGS:
        raise RemoteProtocolError("bad_flags", f"native flags {flags:#x}")
    return Header(mtype, flags, path, session, counter)


def encode_native(
    mtype: int, payload: bytes | memoryview = b"", *, flags: int = 0, path: int = 0,
    session: int = 0, counter: int = 0,
) -> bytes:
    """One native message (convenience; the data path writes headers in place)."""
    return HEADER.pack(VERSION, mtype, flags, path, session, counter) + bytes(payload)


# Keepalive / probe payload: sender timestamp in microseconds (u64) and an echo of the
# peer's last timestamp (u64), so either side can measure RTT without clock sync.
KEEPALIVE_BODY = struct.Struct("!QQ")


def encode_keepalive(counter: int, sent_us: int, echo_us: int = 0, *, path: int = 0,
                     mtype: int = MsgType.KEEPALIVE) -> bytes:
    return HEADER.pack(VERSION, mtype, 0, path, 0, counter) + KEEPALIVE_BODY.pack(
        sent_us, echo_us
    )


def parse_keepalive(payload: bytes | memoryview) -> tuple[int, int]:
    if len(payload) < KEEPALIVE_BODY.size:
        raise RemoteProtocolError("truncated", "keepalive body")
    sent, echo = KEEPALIVE_BODY.unpack_from(payload, 0)
    return int(sent), int(echo)


# Path probe / probe-ack payload (multi-path health): the probe's own sequence number
# (u64, independent of the header counter, which belongs to the data/AEAD stream), the
# prober's timestamp in microseconds (u64) and the prober's random epoch (u32, new at
# every start, so the peer sees a restart and resets its duplicate filter); a PROBE_ACK
# echoes all three, so the prober measures RTT on its own clock and knows which probe
# of which run was answered.
PROBE_BODY = struct.Struct("!QQI")


def encode_probe(seq: int, sent_us: int, *, path: int = 0, ack: bool = False,
                 epoch: int = 0) -> bytes:
    """A PROBE (or, with ``ack``, a PROBE_ACK echoing ``seq``, ``sent_us``, ``epoch``)."""
    mtype = MsgType.PROBE_ACK if ack else MsgType.PROBE
    return HEADER.pack(VERSION, mtype, 0, path, 0, 0) + PROBE_BODY.pack(
        seq & 0xFFFFFFFFFFFFFFFF, sent_us & 0xFFFFFFFFFFFFFFFF, epoch & 0xFFFFFFFF
    )


def parse_probe(payload: bytes | memoryview) -> tuple[int, int, int]:
    """``(seq, sent_us, epoch)`` of a PROBE or PROBE_ACK body."""
    if len(payload) < PROBE_BODY.size:
        raise RemoteProtocolError("truncated", "probe body")
    return PROBE_BODY.unpack_from(payload, 0)


class NeedData:
    """Sentinel returned by stream decoders when a frame is incomplete."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


class _LengthPrefixedDecoder:
    """Length-prefixed stream decoder in the h11 style.

    Feed bytes with :meth:`receive_data` (``b""`` means EOF), pull frames with
    :meth:`next_frame` until it returns :data:`NEED_DATA`. A bad length raises
    :class:`RemoteProtocolError`; after that the decoder is poisoned and the connection
    must be closed, because a byte stream cannot be resynchronised.
    """

    _prefix: struct.Struct

    def __init__(self, max_frame: int, min_frame: int = 1) -> None:
        self.max_frame = max_frame
        self.min_frame = min_frame
        # Bytes not yet returned are src[pos:]. src is the last chunk received itself
        # while frames are taken straight out of it (one copy per frame, none for the
        # chunk), or a bytearray holding a partial frame and what followed it.
        self._src: bytes | bytearray = b""
        self._pos = 0
        self._eof = False
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._src) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof and data:
            raise LocalProtocolError("data after EOF")
        if not data:
            self._eof = True
            return
        src, pos = self._src, self._pos
        if pos == len(src):  # nothing pending: decode from the chunk itself
            self._src = data if type(data) is bytes else bytes(data)
            self._pos = 0
        elif type(src) is bytearray:
            src += data
            if pos > 262_144:  # compact now and then instead of on every frame
                del src[:pos]
                self._pos = 0
        else:  # a partial frame at the end of the last chunk: buffer it and the rest
            buf = bytearray(memoryview(src)[pos:])
            buf += data
            self._src = buf
            self._pos = 0

    def next_frame(self) -> bytes | NeedData:
        if self._error is not None:
            raise self._error
        src, pos = self._src, self._pos
        plen = self._prefix.size
        avail = len(src) - pos
        if avail < plen:
            return self._at_need_data(avail)
        (length,) = self._prefix.unpack_from(src, pos)
        if length < self.min_frame or length > self.max_frame:
            self._error = RemoteProtocolError(
                "bad_length", f"frame length {length} outside {self.min_frame}..{self.max_frame}"
            )
            raise self._error
        if avail < plen + length:
            return self._at_need_data(avail)
        start = pos + plen
        end = start + length
        if type(src) is bytes:
            frame = src[start:end]
        else:
            with memoryview(src) as mv:
                frame = bytes(mv[start:end])
        self._pos = end
        return frame

    def _at_need_data(self, avail: int) -> NeedData:
        if self._eof and avail:
            self._error = RemoteProtocolError("truncated", f"EOF inside a frame ({avail} bytes)")
            raise self._error
        return NEED_DATA

    def frames(self) -> list[bytes]:
        """All complete frames buffered now (raises on a bad length)."""
        out: list[bytes] = []
        while True:
            f = self.next_frame()
            if isinstance(f, NeedData):
                return out
            out.append(f)

    @classmethod
    def encode(cls, frame: bytes | bytearray | memoryview) -> bytes:
        return cls._prefix.pack(len(frame)) + bytes(frame)


class SimpletunDecoder(_LengthPrefixedDecoder):
    """simpletun.c framing: u16 big-endian length, then the device frame."""

    _prefix = SIMPLETUN_PREFIX

    def __init__(self, max_frame: int = MAX_SIMPLETUN_FRAME) -> None:
        super().__init__(max_frame=min(max_frame, MAX_SIMPLETUN_FRAME))


class NativeStreamDecoder(_LengthPrefixedDecoder):
    """Native messages on TCP: u32 big-endian length, then one native message."""

    _prefix = TCP_NATIVE_PREFIX

    def __init__(self, max_frame: int = MAX_NATIVE_MESSAGE) -> None:
        super().__init__(max_frame=max_frame, min_frame=HEADER_LEN)


def encode_simpletun(frame: bytes | bytearray | memoryview) -> bytes:
    if not 1 <= len(frame) <= MAX_SIMPLETUN_FRAME:
        raise LocalProtocolError(f"simpletun frame of {len(frame)} bytes")
    return SIMPLETUN_PREFIX.pack(len(frame)) + frame


def simpletun_stream(frames: list[bytes]) -> bytes:
    """Frames as simpletun's byte stream (no length check: the device MTU bounds them)."""
    pack = SIMPLETUN_PREFIX.pack
    return b"".join(pack(len(f)) + f for f in frames)


def native_stream_prefix(length: int) -> bytes:
    """The length prefix of one native message on TCP (for gathered writes)."""
    return TCP_NATIVE_PREFIX.pack(length)


def encode_native_stream(message: bytes | bytearray | memoryview) -> bytes:
    """One native message as TCP stream bytes: the one encoder of the length prefix."""
    return TCP_NATIVE_PREFIX.pack(len(message)) + message


def native_stream(messages: list[bytes]) -> bytes:
    """Native messages as one piece of TCP stream."""
    pack = TCP_NATIVE_PREFIX.pack
    return b"".join(pack(len(m)) + m for m in messages)


# -- packet information (a TUN/TAP device opened without IFF_NO_PI) -----------------------
# socat's TUN address (without ``iff-no-pi``) and other programs that open their device
# the kernel's default way read and write every frame behind ``struct tun_pi``: flags
# (u16, TUN_PKT_STRIP = 1 when the kernel cut the packet short) and the protocol (u16
# ethertype), both big-endian. ``raw`` framing with ``packet_info`` speaks that on the
# wire: the header is added to every frame sent and checked and removed on receipt.
PACKET_INFO = struct.Struct("!HH")
PACKET_INFO_LEN = PACKET_INFO.size  # 4
PI_FLAG_STRIP = 0x0001
_PI_IPV4 = PACKET_INFO.pack(0, ETH_P_IP)
_PI_IPV6 = PACKET_INFO.pack(0, ETH_P_IPV6)
_PI_NONE = PACKET_INFO.pack(0, 0)


def add_packet_info(frame: bytes | bytearray | memoryview, tap: bool = False) -> bytes:
    """``frame`` behind a packet-information header, as the kernel would write it: the
    ethertype is the IP version's for TUN, the frame's own (bytes 12-13) for TAP."""
    if tap:
        proto = PACKET_INFO.pack(0, (frame[12] << 8) | frame[13]) if len(frame) >= 14 \
            else _PI_NONE
    else:
        version = frame[0] >> 4 if frame else 0
        proto = _PI_IPV4 if version == 4 else _PI_IPV6 if version == 6 else _PI_NONE
    return proto + bytes(frame)


def strip_packet_info(data: bytes | bytearray | memoryview) -> bytes:
    """The frame behind a packet-information header; refuses a datagram without a frame
    behind it (``truncated``) and one its sender's kernel had cut short (``pi_strip``)."""
    if len(data) <= PACKET_INFO_LEN:
        raise RemoteProtocolError("truncated", f"packet info datagram of {len(data)} bytes")
    flags, _ = PACKET_INFO.unpack_from(data, 0)
    if flags & PI_FLAG_STRIP:
        raise RemoteProtocolError("pi_strip", "the sender's device truncated this packet")
    return bytes(memoryview(data)[PACKET_INFO_LEN:])
