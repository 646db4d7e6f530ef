"""Split one native super-message into MTU-sized FRAGMENT messages, and put it back.

A super-packet (up to 64 KiB from a TUN/TAP device with offload) travels on UDP as one
*inner* native message (``FLAG_GSO``, sealed with one AEAD operation when encrypted),
cut into fragments. Every fragment is a native message of type ``FRAGMENT``::

    native header (16 bytes): type=FRAGMENT, flags=0, path, session, counter=message id
    sub-header    (8 bytes):  u16 index | u16 count | u32 total length of the inner message
    chunk:        bytes [index*chunk, ...) of the inner message

All fragments but the last carry the same chunk size, so the datagrams of one message
have one stride and go out with a single UDP GSO ``sendmsg``. The fragment wrapper is not
authenticated: integrity and replay protection come from the inner message (its AEAD tag
and counter), so a forged or replayed fragment can at worst waste one reassembly slot,
which is bounded in number, bytes and time. A lost fragment loses only its message.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import overload

from ..errors import LocalProtocolError, RemoteProtocolError
from .framing import HEADER, HEADER_LEN, VERSION, MsgType

FRAG_SUB = struct.Struct("!HHI")
FRAG_SUB_LEN = FRAG_SUB.size  # 8
FRAG_OVERHEAD = HEADER_LEN + FRAG_SUB_LEN  # 24
MAX_FRAGMENTS = 1024
#: an inner message never exceeds this (64 KiB super-packet + vnet hdr + header + tag)
MAX_INNER_MESSAGE = 70_000

_HDR_SUB = struct.Struct("!BBBBIQHHI")  # native header + sub-header in one pack


def chunk_size(max_datagram: int) -> int:
    """Inner-message bytes carried per fragment for a given UDP payload size."""
    c = max_datagram - FRAG_OVERHEAD
    if c < 64:
        raise LocalProtocolError(f"datagram size {max_datagram} too small to fragment")
    return c


def split(message: bytes | bytearray | memoryview, msg_id: int, max_datagram: int, *,
          session: int = 0, path: int = 0) -> tuple[bytes, int, int]:
    """Cut ``message`` into FRAGMENT datagrams laid end to end in one buffer.

    Returns ``(buf, stride, count)``: datagram ``i`` is ``buf[i*stride:(i+1)*stride]``
    (the last may be shorter), ready for one ``sendmsg`` with ``UDP_SEGMENT=stride``.
    """
    total = len(message)
    chunk = chunk_size(max_datagram)
    count = -(-total // chunk)
    if total == 0 or total > MAX_INNER_MESSAGE or count > MAX_FRAGMENTS:
        raise LocalProtocolError(f"cannot fragment a message of {total} bytes")
    src = memoryview(message)
    mtype = int(MsgType.FRAGMENT)
    msg_id &= 0xFFFFFFFFFFFFFFFF
    pack = _HDR_SUB.pack
    parts: list[bytes | memoryview] = []
    for i in range(count):
        a = i * chunk
        parts.append(pack(VERSION, mtype, 0, path, session, msg_id, i, count, total))
        parts.append(src[a:a + chunk])
    return b"".join(parts), chunk + FRAG_OVERHEAD, count


def iter_datagrams(buf: bytes | bytearray | memoryview, stride: int) -> Iterator[memoryview]:
    """Datagrams of a GSO buffer (send side) or of a GRO buffer (``gso_size`` = stride)."""
    mv = memoryview(buf)
    for off in range(0, len(mv), stride):
        yield mv[off:off + stride]


def parse_fragment(body: bytes | bytearray | memoryview) -> tuple[int, int, int]:
    """``(index, count, total)`` from the bytes after the native header."""
    if len(body) < FRAG_SUB_LEN:
        raise RemoteProtocolError("truncated", "fragment sub-header")
    index, count, total = FRAG_SUB.unpack_from(body, 0)
    if count == 0 or index >= count or count > MAX_FRAGMENTS:
        raise RemoteProtocolError("bad_fragment", f"fragment {index}/{count}")
    if total == 0 or total > MAX_INNER_MESSAGE:
        raise RemoteProtocolError("bad_fragment", f"fragmented message of {total} bytes")
    return index, count, total


class FragmentRun:
    """FRAGMENT datagrams of one stride laid end to end, as one UDP GRO read returns them.

    Handed around as one item so a whole super-message is put back with one join
    (:meth:`Reassembler.receive_run`) instead of one Python step per datagram.
    ``len()`` and indexing look at the underlying buffer, like a datagram would.
    """

    __slots__ = ("buf", "stride")

    def __init__(self, buf: memoryview, stride: int) -> None:
        self.buf = buf
        self.stride = stride

    def __len__(self) -> int:
        return len(self.buf)

    @overload
    def __getitem__(self, i: int) -> int: ...

    @overload
    def __getitem__(self, i: slice) -> memoryview: ...

    def __getitem__(self, i: int | slice) -> int | memoryview:
        # a slice too, as a datagram would: NativeEndpoint.quick looks at data[:3] and
        # refuses a run untouched (a run holds FRAGMENTs: UdpEndpoint.add_received keeps a
        # GRO read whole only then), so an adapter's loop needs no type test before it
        return self.buf[i]


_ID_SUB = struct.Struct("!QHHI")  # counter (message id) + sub-header, at offset 8


@dataclass(slots=True)
class _Partial:
    created: float
    count: int
    total: int
    buf: bytearray
    seen: bytearray
    got: int = 0
    got_bytes: int = 0
    chunk: int = 0  # learned from the first non-last fragment


@dataclass(slots=True)
class ReassemblyStats:
    completed: int = 0
    expired: int = 0
    evicted: int = 0
    duplicate: int = 0
    inconsistent: int = 0
    drops: dict[str, int] = field(default_factory=dict)


class Reassembler:
    """Bounded reassembly of fragmented native messages (sans-I/O, time passed in).

    At most ``max_pending`` messages and ``max_bytes`` of buffers are held; a message
    not complete ``timeout`` seconds after its first fragment is dropped, and when a
    bound is hit the oldest partial message is evicted. Fragments of distinct messages
    never mix, so one loss costs one message.
    """

    def __init__(self, *, max_pending: int = 64, max_bytes: int = 4 << 20,
                 timeout: float = 1.0) -> None:
        self.max_pending = max_pending
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._pending: dict[tuple[int, int], _Partial] = {}
        self._bytes = 0
        self.stats = ReassemblyStats()

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def receive(self, datagram: bytes | bytearray | memoryview, now: float) -> bytearray | None:
        """Feed one FRAGMENT datagram (native header included).

        Returns the complete inner message when this fragment finishes it, else None.
        Raises :class:`RemoteProtocolError` for a malformed or inconsistent fragment.
        """
        mv = memoryview(datagram)
        if len(mv) < FRAG_OVERHEAD:
            raise RemoteProtocolError("truncated", "fragment")
        _ver, mtype, _fl, _path, session, msg_id = HEADER.unpack_from(mv, 0)
        if mtype != MsgType.FRAGMENT:
            raise RemoteProtocolError("bad_type", "not a fragment")
        index, count, total = parse_fragment(mv[HEADER_LEN:])
        data = mv[FRAG_OVERHEAD:]
        n = len(data)
        if n == 0:
            raise RemoteProtocolError("bad_fragment", "empty fragment")
        if count == 1:
            if n != total:
                raise RemoteProtocolError("bad_fragment", "single fragment length mismatch")
            self.stats.completed += 1
            return bytearray(data)
        key = (session, msg_id)
        p = self._pending.get(key)
        if p is None:
            self._expire(now)  # cheap: looks at the oldest entry only
            if len(self._pending) >= self.max_pending or self._bytes + total > self.max_bytes:
                while self._pending and (len(self._pending) >= self.max_pending
                                         or self._bytes + total > self.max_bytes):
                    self._drop_oldest()
                    self.stats.evicted += 1
                if self._bytes + total > self.max_bytes:
                    raise RemoteProtocolError("reassembly_full", f"{total} bytes")
            p = _Partial(now, count, total, bytearray(total), bytearray(count))
            self._pending[key] = p
            self._bytes += total
        elif p.count != count or p.total != total:
            self._discard(key, p)
            self.stats.inconsistent += 1
            raise RemoteProtocolError("bad_fragment", "fragments disagree on count/total")
        if p.seen[index]:
            self.stats.duplicate += 1
            return None
        if index == count - 1:
            off = total - n
            if off < 0 or (p.chunk and off != index * p.chunk):
                self._discard(key, p)
                self.stats.inconsistent += 1
                raise RemoteProtocolError("bad_fragment", "last fragment misplaced")
        else:
            if p.chunk == 0:
                p.chunk = n
            elif n != p.chunk:
                self._discard(key, p)
                self.stats.inconsistent += 1
                raise RemoteProtocolError("bad_fragment", "fragment sizes differ")
            off = index * n
            if off + n > total:
                self._discard(key, p)
                self.stats.inconsistent += 1
                raise RemoteProtocolError("bad_fragment", "fragment beyond total")
        p.buf[off:off + n] = data
        p.seen[index] = 1
        p.got += 1
        p.got_bytes += n
        if p.got < count:
            return None
        self._discard(key, p)
        if p.got_bytes != total:
            self.stats.inconsistent += 1
            raise RemoteProtocolError("bad_fragment", "fragment lengths do not add up")
        self.stats.completed += 1
        return p.buf

    def receive_run(self, buf: bytes | bytearray | memoryview, stride: int,
                    now: float) -> list[bytes | bytearray]:
        """Feed datagrams of ``stride`` bytes laid end to end (a UDP GRO read).

        A run holding every fragment of a message in order (the usual case when the
        sender's GSO batch and the receiver's GRO read match) is joined at once; anything
        else goes datagram by datagram through :meth:`receive`. Malformed datagrams are
        counted in ``stats.drops`` and skipped; never raises for remote input.
        """
        mv = memoryview(buf)
        n = len(mv)
        out: list[bytes | bytearray] = []
        off = 0
        if self._pending:
            self._expire(now)  # complete runs never reach receive(): expire here too
        frag = int(MsgType.FRAGMENT)
        chunk = stride - FRAG_OVERHEAD
        while off < n:
            if n - off >= FRAG_OVERHEAD and chunk > 0:
                ver, mtype, _f, _p, session, msg_id, index, count, total = \
                    _HDR_SUB.unpack_from(mv, off)
                last = total - (count - 1) * chunk
                end = off + (count - 1) * stride + FRAG_OVERHEAD + last
                if (index == 0 and count > 1 and ver == VERSION and mtype == frag
                        and 0 < last <= chunk and end <= n and total <= MAX_INNER_MESSAGE
                        and count <= MAX_FRAGMENTS
                        and (session, msg_id) not in self._pending):
                    parts = self._run_parts(mv, off, stride, count, total, end)
                    if parts is not None:
                        out.append(bytearray().join(parts))  # decrypted in place later
                        self.stats.completed += 1
                        off += count * stride
                        continue
            try:
                msg = self.receive(mv[off:off + stride], now)
            except RemoteProtocolError as exc:
                self.stats.drops[exc.reason] = self.stats.drops.get(exc.reason, 0) + 1
                msg = None
            if msg is not None:
                out.append(msg)
            off += stride
        return out

    @staticmethod
    def _run_parts(mv: memoryview, off: int, stride: int, count: int, total: int,
                   end: int) -> list[memoryview] | None:
        """The payloads of a run's ``count`` datagrams, in one pass that also checks that
        each carries the same message id, count and the next index (None if not: a lost
        datagram in the middle would otherwise splice two messages together)."""
        unpack = _ID_SUB.unpack_from
        msg_id = unpack(mv, off + 8)[0]
        parts = [mv[off + FRAG_OVERHEAD:off + stride]]
        append = parts.append
        o = off
        for i in range(1, count - 1):
            o += stride
            if unpack(mv, o + 8) != (msg_id, i, count, total):
                return None
            append(mv[o + FRAG_OVERHEAD:o + stride])
        o += stride
        if unpack(mv, o + 8) != (msg_id, count - 1, count, total):
            return None
        append(mv[o + FRAG_OVERHEAD:end])
        return parts

    def feed(self, datagram: bytes | bytearray | memoryview, now: float,
             drops: Counter[str]) -> bytearray | None:
        """:meth:`receive` for a data path: a bad fragment is counted (``fragment_*``)."""
        try:
            return self.receive(datagram, now)
        except RemoteProtocolError as exc:
            drops["fragment_" + exc.reason] += 1
            return None

    def handle_timer(self, now: float) -> None:
        """Drop partial messages older than ``timeout``. The owner must call this at
        :meth:`get_timer`: fragments alone expire others only when a new message starts,
        so after a burst of losses the partials would otherwise stay until more arrive."""
        self._expire(now)

    def get_timer(self) -> float | None:
        """When the oldest partial message expires, or None when nothing is pending."""
        for p in self._pending.values():
            return p.created + self.timeout
        return None

    def clear(self) -> None:
        self._pending.clear()
        self._bytes = 0

    def _expire(self, now: float) -> None:
        limit = now - self.timeout
        while self._pending:
            key, p = next(iter(self._pending.items()))
            if p.created > limit:
                break
            self._discard(key, p)
            self.stats.expired += 1

    def _drop_oldest(self) -> None:
        key, p = next(iter(self._pending.items()))
        self._discard(key, p)

    def _discard(self, key: tuple[int, int], p: _Partial) -> None:
        if self._pending.pop(key, None) is not None:
            self._bytes -= p.total
