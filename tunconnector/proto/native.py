"""The native protocol endpoint: framing + keepalives (+ encryption when configured).

Sans-I/O: the tunnel adapter hands it device frames and wire messages with ``now``, and
transmits what it returns. It knows nothing about addresses; it only says whether a
received message proves the sender is our peer (``Decoded.authentic``), so the adapter can
let a UDP server follow a client whose address changed (float).

Plaintext: only a well-formed KEEPALIVE (exact size) is authentic, so random garbage
cannot steal the peer address. Encrypted: every message that authenticates is.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import RemoteProtocolError
from .framing import (
    FLAG_ENCRYPTED,
    FLAG_GSO,
    HEADER,
    HEADER_LEN,
    KEEPALIVE_BODY,
    TAG_LEN,
    VERSION,
    Header,
    MsgType,
    encode_keepalive,
    parse_header,
)
from .liveness import Liveness, LivenessEvent
from .offload import MAX_GSO_PAYLOAD, GsoFrame

KEEPALIVE_LEN = HEADER_LEN + KEEPALIVE_BODY.size
_DATA = int(MsgType.DATA)
_PLAIN_DATA = bytes((VERSION, _DATA, 0))  # version, type, flags of a plain DATA message
_PLAIN_GSO = bytes((VERSION, _DATA, FLAG_GSO))  # ... of a plain super-packet message
_SEALED_DATA = bytes((VERSION, _DATA, FLAG_ENCRYPTED))  # ... of an encrypted DATA message
_SEALED_GSO = bytes((VERSION, _DATA, FLAG_ENCRYPTED | FLAG_GSO))  # ... of a sealed super-packet


class SecureChannelLike(Protocol):
    """What the native endpoint needs from the crypto layer (tunconnector.proto.secure)."""

    drops: collections.Counter[str]
    #: cookie replies owed under load, ``(packet, source)`` (the connection sends each
    #: to the full address of the initiation it answers)
    cookie_out: list[tuple[bytes, Hashable]]

    def seal(self, frame: bytes, now: float, *, flags: int = 0) -> bytes | None: ...

    def seal_many(self, frames: list[bytes], now: float, *, flags: int = 0
                  ) -> list[bytearray] | None: ...

    def seal_into(self, buf: bytearray, length: int, now: float, *,
                  flags: int = 0) -> int: ...

    def open_into(self, message: bytearray, header: Header, now: float, *,
                  source: Hashable = None) -> Any: ...

    def open(
        self, message: bytes, header: Header, now: float, source: Hashable = None
    ) -> bytes | None: ...

    def datagrams_to_send(self) -> list[bytes]: ...

    def has_output(self) -> bool: ...

    def open_data(self, message: bytes, now: float, source: Hashable = None) -> Any: ...

    def stats(self, now: float) -> dict[str, object]: ...

    @property
    def unanswered_since(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def get_timer(self) -> float | None: ...

    def next_event(self) -> Any: ...


@dataclass(slots=True)
class Decoded:
    """Result of one received wire message."""

    frames: list[bytes] = field(default_factory=list)
    authentic: bool = False


class NativeEndpoint:
    def __init__(
        self,
        *,
        keepalive: float,
        dead_after: float,
        max_frame: int,
        secure: SecureChannelLike | None = None,
        path: int = 0,
    ) -> None:
        self.liveness = Liveness(keepalive, dead_after)
        self.max_frame = max_frame
        self.secure = secure
        self.path = path
        self.tx_counter = 0
        self.drops: collections.Counter[str] = collections.Counter()
        self._out: list[bytes] = []
        self._last_peer_ts = 0
        self._last_hello_reply = float("-inf")
        self._last_probe_unknown = float("-inf")

    # -- sending -------------------------------------------------------------------
    def start(self, now: float, *, initiator: bool) -> None:
        self.liveness.start(now, send_first=initiator)
        start_secure = getattr(self.secure, "start", None)
        if start_secure is not None and initiator:
            start_secure(now)  # the initiator keeps an encrypted session up from now on
        self.handle_timer(now)

    def encode_data(self, frame: bytes, now: float) -> bytes | None:
        """One DATA message for ``frame`` (None while an encrypted session is pending)."""
        self.liveness.on_send(now)
        if self.secure is not None:
            return self.secure.seal(frame, now)
        self.tx_counter += 1
        return HEADER.pack(VERSION, MsgType.DATA, 0, self.path, 0, self.tx_counter) + frame

    def encode_batch(self, frames: list[bytes], now: float) -> list[bytes]:
        """:meth:`encode_data` for many frames (plaintext: one loop, no call per frame)."""
        return self._encode_many(frames, now, 0)

    def encode_gso_batch(self, payloads: list[bytes], now: float) -> list[bytes]:
        """:meth:`encode_gso` for many small partial-checksum packets (vnet hdr + packet)."""
        return self._encode_many(payloads, now, FLAG_GSO)

    def _encode_many(self, frames: list[bytes], now: float, flags: int) -> list[bytes]:
        if self.secure is not None:
            self.liveness.on_send(now)
            sealed = self.secure.seal_many(frames, now, flags=flags)
            if sealed is not None:
                return sealed  # type: ignore[return-value]  # bytearrays, used as bytes
            one = self.encode_gso if flags else self.encode_data
            return [m for f in frames if (m := one(f, now)) is not None]
        self.liveness.on_send(now)
        pack, path, c = HEADER.pack, self.path, self.tx_counter
        out = []
        for f in frames:
            c += 1
            out.append(pack(VERSION, _DATA, flags, path, 0, c) + f)
        self.tx_counter = c
        return out

    def quick(self, data: Any, now: float, source: Hashable = None) -> Any:
        """:meth:`decode` for the bulk of a live tunnel's traffic, without its machinery.

        A DATA message from the known peer while it is alive (plain, or sealed under a
        current session; with or without FLAG_GSO) becomes its frame (a
        :class:`GsoFrame` for a super-packet). Returns the frame; None when the message
        was consumed (an encrypted keepalive, a counted drop: replay, forgery,
        oversize); False when it is anything else, or over a plain limit: untouched,
        :meth:`decode` decides. The caller has checked that ``data`` comes from the
        peer (address or connection).
        """
        if len(data) <= HEADER_LEN or not self.liveness.alive:
            return False
        head = data[:3]
        secure = self.secure
        if secure is None:
            if head == _PLAIN_DATA:
                if len(data) - HEADER_LEN > self.max_frame:
                    return False
                frame: Any = data[HEADER_LEN:]
            elif head == _PLAIN_GSO:
                if len(data) - HEADER_LEN > MAX_GSO_PAYLOAD:
                    return False
                frame = GsoFrame(memoryview(data)[HEADER_LEN:])
            else:
                return False
            self.liveness.last_rx = now  # on_receive() of a peer that is alive
            return frame
        gso = head == _SEALED_GSO
        if not gso and head != _SEALED_DATA:
            return False
        plain = secure.open_data(data, now, source)
        if plain is False or plain is None:
            return plain  # not a current session's (decode decides), or counted
        self.liveness.last_rx = now
        if not plain:
            return None  # an encrypted keepalive
        if len(plain) > (MAX_GSO_PAYLOAD if gso else self.max_frame):
            self.drops["oversize"] += 1
            return None
        return GsoFrame(plain) if gso else bytes(plain)  # bytes, as decode() gives

    def encode_gso(self, payload: bytes | memoryview, now: float) -> bytes | None:
        """One DATA message with FLAG_GSO: ``payload`` is virtio_net_hdr + super-packet.

        Encrypted, the whole super-packet is one AEAD operation under one counter; the
        flag is in the header, which is the associated data, so it cannot be flipped.
        """
        self.liveness.on_send(now)
        if self.secure is not None:
            n = len(payload)
            buf = bytearray(HEADER_LEN + n + TAG_LEN)  # one copy; sealed in place
            buf[HEADER_LEN:HEADER_LEN + n] = payload
            size = self.secure.seal_into(buf, n, now, flags=FLAG_GSO)
            return buf if size else None  # type: ignore[return-value]
        self.tx_counter += 1
        return HEADER.pack(VERSION, MsgType.DATA, FLAG_GSO, self.path, 0,
                           self.tx_counter) + payload

    def gso_parts(self, payload: bytes | memoryview, now: float) -> list[Any]:
        """:meth:`encode_gso` as pieces to write gathered: ``[header, payload]`` in
        plaintext (no copy of the super-packet), ``[sealed]`` or ``[]`` encrypted."""
        if self.secure is not None:
            msg = self.encode_gso(payload, now)
            return [] if msg is None else [msg]
        self.liveness.on_send(now)
        self.tx_counter += 1
        return [HEADER.pack(VERSION, MsgType.DATA, FLAG_GSO, self.path, 0, self.tx_counter),
                payload]

    def messages_to_send(self) -> list[bytes]:
        """Control messages (keepalives, handshake) to transmit now."""
        out, self._out = self._out, []
        if self.secure is not None:
            out.extend(self.secure.datagrams_to_send())
        return out

    def has_work(self) -> bool:
        """Control messages or events are waiting (the adapter must flush)."""
        secure = self.secure
        return bool(self._out) or self.liveness.has_events() or (
            secure is not None and secure.has_output())

    def exit_message(self, now: float) -> bytes | None:
        """An EXIT for the peer (encrypted sessions only; None without a session)."""
        seal_exit = getattr(self.secure, "seal_exit", None)
        return None if seal_exit is None else seal_exit(now)

    def hello_for_unknown(self, now: float) -> bytes | None:
        """A keepalive with echo 0 for a source we do not know (at most one per second).

        After a restart we have forgotten the client; its data arrives from an unknown
        address. This asks it to prove itself with a keepalive, which lets us follow it.
        32 bytes for a bigger datagram: no amplification; rate-limited globally.
        """
        if self.secure is not None or now - self._last_probe_unknown < 1.0:
            return None
        self._last_probe_unknown = now
        self.tx_counter += 1
        return encode_keepalive(self.tx_counter, int(now * 1e6) or 1, 0, path=self.path)

    def screen_stranger(self, data: bytes, now: float) -> tuple[bool, bytes | None]:
        """Whether a message from an unknown source may be decoded, and a reply to it.

        Encrypted: anything may (authentication decides). Plaintext: only a keepalive,
        so garbage cannot steal the peer address; plaintext DATA from a stranger gets a
        rate-limited hello back (see :meth:`hello_for_unknown`).
        """
        if self.secure is not None or (len(data) >= 2 and data[1] == MsgType.KEEPALIVE):
            return True, None
        if len(data) >= 2 and data[0] == VERSION and data[1] == MsgType.DATA:
            return False, self.hello_for_unknown(now)
        return False, None

    # -- receiving -----------------------------------------------------------------
    def decode(self, data: bytes, now: float, source: Hashable = None) -> Decoded:
        """Parse one message; bad input is counted in ``drops`` and yields nothing.

        ``source`` (the sender's address) keys the crypto layer's handshake rate limit.
        """
        result = Decoded()
        try:
            header = parse_header(data)
        except RemoteProtocolError as exc:
            self.drops[exc.reason] += 1
            return result
        mtype = header.type
        if self.secure is not None:
            if mtype == MsgType.KEEPALIVE or (
                mtype == MsgType.DATA and not header.flags & 1
            ):
                self.drops["plaintext_refused"] += 1
                return result
            before = sum(self.secure.drops.values())
            try:
                if header.flags & FLAG_GSO and type(data) is bytearray:
                    # a reassembled super-packet: decrypt in place, no 64 KiB copies
                    frame = self.secure.open_into(data, header, now, source=source)
                else:
                    frame = self.secure.open(data, header, now, source)
            except RemoteProtocolError as exc:
                self.drops[exc.reason] += 1
                return result
            if sum(self.secure.drops.values()) != before:
                return result  # counted by the secure channel
            result.authentic = True
            if mtype == MsgType.EXIT:
                self.liveness.on_exit(now)
                return result
            self.liveness.on_receive(now)
            if frame is not None and mtype == MsgType.DATA:
                if len(frame) == 0:
                    return result  # encrypted keepalive
                if header.flags & FLAG_GSO:
                    if len(frame) > MAX_GSO_PAYLOAD:
                        self.drops["oversize"] += 1
                        return result
                    result.frames.append(GsoFrame(frame))  # type: ignore[arg-type]
                    return result
                if len(frame) > self.max_frame:
                    self.drops["oversize"] += 1
                    return result
                result.frames.append(frame)
            return result
        if mtype == MsgType.DATA:
            if header.flags & ~FLAG_GSO:
                self.drops["unexpected_flags"] += 1
                return result
            # a super-packet is not copied again (64 KiB); small frames are sliced as before
            frame = (memoryview(data)[HEADER_LEN:]  # type: ignore[assignment]
                     if header.flags else data[HEADER_LEN:])
            if not frame:
                self.drops["empty"] += 1
                return result
            if len(frame) > (MAX_GSO_PAYLOAD if header.flags else self.max_frame):
                self.drops["oversize"] += 1
                return result
            self.liveness.on_receive(now)
            result.frames.append(GsoFrame(frame) if header.flags else frame)  # type: ignore[arg-type]
            return result
        if mtype == MsgType.KEEPALIVE:
            if len(data) != KEEPALIVE_LEN:
                self.drops["bad_keepalive"] += 1
                return result
            sent_us, echo = KEEPALIVE_BODY.unpack_from(data, HEADER_LEN)
            self._last_peer_ts = sent_us
            self.liveness.on_receive(now)
            result.authentic = True
            if echo == 0 and now - self._last_hello_reply >= 0.5:
                # the peer has not heard from us yet (hello, or we restarted): answer now
                self._last_hello_reply = now
                self._send_keepalive(now)
            return result
        self.drops["unexpected_type"] += 1
        return result

    # -- timers --------------------------------------------------------------------
    def get_timer(self) -> float | None:
        times = [t for t in (self.liveness.get_timer(),) if t is not None]
        if self.secure is not None:
            st = self.secure.get_timer()
            if st is not None:
                times.append(st)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        self.liveness.handle_timer(now)
        if self.secure is not None:
            self.secure.handle_timer(now)
        if self.liveness.keepalive_due():
            if self.secure is not None:
                self.liveness.on_keepalive_sent(now)
                msg = self.secure.seal(b"", now)  # encrypted keepalive: empty DATA
                if msg is not None:
                    self._out.append(msg)
            else:
                self._send_keepalive(now)

    def _send_keepalive(self, now: float) -> None:
        self.liveness.on_keepalive_sent(now)
        self.tx_counter += 1
        self._out.append(
            encode_keepalive(self.tx_counter, int(now * 1e6) or 1, self._last_peer_ts,
                             path=self.path)
        )

    def next_event(self) -> LivenessEvent | None:
        return self.liveness.next_event()
