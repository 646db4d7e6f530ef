"""Framings without a protocol of their own, as sans-I/O connections.

:class:`SimpletunConnection` is ``framing = "simpletun"`` over TCP (simpletun.c's 2-byte
length, then the frame), one object per stream; see its docstring for its rules.

:class:`RawConnection` is ``framing = "raw"`` over UDP: one device frame per datagram,
nothing added (QEMU ``-netdev dgram``, libvirt's UDP interface, socat), optionally
behind the kernel's 4-byte packet-information header (``packet_info``). Nothing proves
who sends, so the documented raw rules are:

- a server takes any datagram's source as its peer (:func:`.roaming.follow_peer` with
  ``authentic=True``): the first datagram names the peer, a datagram from a new source
  moves it;
- a client listens only to the address it talks to (``unknown_peer`` for the rest);
- a datagram larger than a device frame is ``oversize``, an empty one ``empty``, a bad
  packet-information header ``truncated`` / ``pi_strip``; all counted, none raised.

There is no liveness: the adapter calls a client up at once, a server up once it has a
peer. Frames leave as ONE list batch per device read (``takes_super`` False: the device
has no virtio_net_hdr), which ``UdpEndpoint.send_batch`` sends with UDP GSO runs.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, Literal

from ..errors import LocalProtocolError, RemoteProtocolError
from .connection import (
    Addr,
    Connected,
    ConnectionEvent,
    DatagramBatch,
    Disconnected,
    FastConnection,
    Outbox,
    stream_broken,
)
from .framing import (
    SIMPLETUN_PREFIX,
    SimpletunDecoder,
    add_packet_info,
    encode_simpletun,
    simpletun_stream,
    strip_packet_info,
)
from .offload import GsoFrame
from .roaming import follow_peer


class RawConnection(Outbox):
    """One raw UDP peer (see the module docstring for its rules)."""

    lane = True

    #: plain device frames only (the adapter opens the device without virtio_net_hdr)
    takes_super = False

    def __init__(self, *, server: bool, max_frame: int, peer: Addr = None,
                 packet_info: bool = False, tap: bool = False) -> None:
        self.server = server
        self.peer: Addr = peer
        self.max_frame = max_frame
        self.packet_info = packet_info
        self.lane = not packet_info  # packet info: the batch path's only
        self.tap = tap
        self.drops: collections.Counter[str] = collections.Counter()
        self._datagrams: list[tuple[bytes, Addr]] = []
        self._batches: list[tuple[DatagramBatch, Addr]] = []
        self._frames: list[bytes] = []
        self._events: collections.deque[ConnectionEvent] = collections.deque()

    # ------------------------------------------------------------------ lifecycle
    def start(self, now: float) -> None:
        """Nothing to say: raw has no hello."""

    def close(self, now: float) -> None:
        """Nothing to say: raw has no goodbye."""

    def connection_made(self, now: float) -> None:
        """UDP only: there is no stream to replace."""

    # ------------------------------------------------------------------ wire -> device
    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        if self.packet_info:
            try:
                data = strip_packet_info(data)
            except RemoteProtocolError as exc:
                self.drops[exc.reason] += 1
                return
        if addr != self.peer:
            moved = follow_peer(self.peer, addr, authentic=True, may_move=self.server, now=now)
            if moved is None:
                self.drops["unknown_peer"] += 1
                return
            self.peer = moved.addr
            self._events.append(moved)
        if len(data) > self.max_frame:
            self.drops["oversize"] += 1
        elif not data:
            self.drops["empty"] += 1
        else:
            self._frames.append(data)

    def receive_stream(self, data: bytes, now: float) -> None:
        """UDP only: raw over TCP is ``simpletun``."""

    def receive_run(self, run: Any, addr: Addr, now: float) -> None:
        """Raw datagrams are never kept as runs (``UdpEndpoint.runs`` is native only)."""
        self.drops["unexpected_run"] += 1

    def quick(self, data: bytes | memoryview, now: float
              ) -> bytes | GsoFrame | None | Literal[False]:
        """A datagram from the peer's raw address: its frame, or False (untouched) for
        anything :meth:`receive_datagram` must count."""
        return self._quick(data, now, None)

    def quick_parts(self) -> tuple[Callable[[Any, float, Any], Any], Any]:
        return self._quick, None

    def _quick(self, data: Any, now: float, source: Any) -> Any:
        if self.packet_info:
            try:
                data = strip_packet_info(data)
            except RemoteProtocolError:
                return False
        if not data or len(data) > self.max_frame:
            return False
        return data

    # ------------------------------------------------------------------ device -> wire
    def send_frames(self, frames: list[bytes], now: float, offset: int = 0) -> None:
        self.send_device([f[offset:] for f in frames] if offset else frames, now,
                         vnet_hdr=False)

    def send_device(self, frames: list[bytes], now: float, *, vnet_hdr: bool = True) -> None:
        """Device frames as one batch for the peer (the list itself: no copy without
        packet information). ``vnet_hdr`` must be False: raw carries plain frames."""
        if self.peer is None:
            self.drops["no_peer_yet"] += len(frames)
            return
        if self.packet_info:
            tap = self.tap
            frames = [add_packet_info(f, tap) for f in frames]
        if frames:
            self._batches.append((frames, self.peer))

    def send_one(self, frame: bytes | memoryview, now: float, *, vnet_hdr: bool
                 ) -> bytes | None | Literal[False]:
        """The latency lane: the frame itself is the datagram (False with packet
        information, which the batch path adds, and for nothing to send)."""
        if self.peer is None or self.packet_info or vnet_hdr or not frame:
            return False
        return frame  # type: ignore[return-value]  # bytes from os.read

    def has_work(self) -> bool:
        return self.has_output()

    def has_output(self) -> bool:
        return bool(self._datagrams or self._batches or self._events)

    # ------------------------------------------------------------------ timers
    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        """No timers: raw has no liveness."""

    # ------------------------------------------------------------------ outputs
    def batches_to_send(self, now: float) -> list[tuple[DatagramBatch, Addr]]:
        out, self._batches = self._batches, []
        return out

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        out, self._datagrams = self._datagrams, []
        return out

    def stream_to_send(self, now: float) -> list[bytes]:
        return []

    def status(self, now: float) -> dict[str, Any]:
        return {"peer": self.peer, "proven": self.peer is not None, "drops": self.all_drops()}


class SimpletunConnection(Outbox):
    """One simpletun TCP stream. Nothing proves who is on the other end, so a stream is
    proven by its first valid frame (one no larger than a device frame), or at once when
    the adapter says so (``proven``: a client's stream, or a server's while it has none):
    :class:`Connected` says it, once. Until then no frame leaves it. A frame larger than
    a device frame is ``oversize``; a bad length is counted once and ends the stream (a
    :class:`Notice`, then :class:`Disconnected`): it cannot be resynchronised."""

    lane = True

    #: plain device frames only (simpletun carries one frame per message)
    takes_super = False
    stream_lane = True

    def __init__(self, *, server: bool, max_frame: int, peer: Addr = None,
                 proven: bool = False) -> None:
        self.server = server
        self.max_frame = max_frame
        self.peer: Addr = peer
        self.proven = proven
        self.failed = False  # the stream broke: it decodes nothing more
        self.drops: collections.Counter[str] = collections.Counter()
        self._decoder = SimpletunDecoder()
        self._stream_out: list[bytes] = []
        self._frames: list[bytes] = []
        self._events: collections.deque[ConnectionEvent] = collections.deque()

    def start(self, now: float) -> None:
        if self.proven:
            self._events.append(Connected(now, self.peer))

    def close(self, now: float) -> None:
        """Nothing to say: the stream's end says it."""

    def connection_made(self, now: float) -> None:
        """One object per stream: nothing to reset."""

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        """TCP only: simpletun over UDP is ``raw``."""

    def receive_stream(self, data: bytes, now: float) -> None:
        """Bytes of the stream; ``b""`` is its end (a frame cut short is counted)."""
        if self.failed:
            return
        try:
            self._decoder.receive_data(data)
            frames = self._decoder.frames()
        except RemoteProtocolError as exc:
            self.failed = True
            self.drops[exc.reason] += 1
            self._events.extend(stream_broken(exc, now, at_end=not data))
            return
        except LocalProtocolError:  # data after the end of the stream
            return
        if not data:
            self._events.append(Disconnected(now, "closed"))
        max_frame = self.max_frame
        for f in frames:
            if len(f) > max_frame:
                self.drops["oversize"] += 1
                continue
            if not self.proven:
                self.proven = True
                self._events.append(Connected(now, self.peer))
            self._frames.append(f)

    def quick_read(self, data: bytes, now: float) -> bytes | Literal[False]:
        """The latency lane: a read that is exactly one whole frame of a proven stream,
        with nothing buffered before it: the frame; False (untouched) for anything else."""
        plen = SIMPLETUN_PREFIX.size
        if (not self.proven or self.failed or self._decoder.buffered or len(data) <= plen
                or SIMPLETUN_PREFIX.unpack_from(data)[0] != len(data) - plen
                or len(data) - plen > self.max_frame):
            return False
        return data[plen:]

    @property
    def buffered(self) -> int:
        """Stream bytes held for an incomplete frame (the adapter caps unproven ones)."""
        return self._decoder.buffered

    def send_frames(self, frames: list[bytes], now: float, offset: int = 0) -> None:
        if frames and not self.failed:
            self._stream_out.append(simpletun_stream(
                [f[offset:] for f in frames] if offset else frames))

    def send_device(self, frames: list[bytes], now: float, *, vnet_hdr: bool = False) -> None:
        """Plain device frames (simpletun is never opened with virtio_net_hdr)."""
        self.send_frames(frames, now)

    def send_one(self, frame: bytes | memoryview, now: float, *, vnet_hdr: bool
                 ) -> bytes | None | Literal[False]:
        """The latency lane: the frame as stream bytes (False for nothing to send)."""
        if self.failed or vnet_hdr or not frame:
            return False
        return encode_simpletun(frame)

    def has_work(self) -> bool:
        return self.has_output()

    def has_output(self) -> bool:
        return bool(self._stream_out or self._events)

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        """No timers: TCP says when the peer is gone."""

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        return []

    def stream_to_send(self, now: float) -> list[bytes]:
        out, self._stream_out = self._stream_out, []
        return out

    def status(self, now: float) -> dict[str, Any]:
        return {"peer": self.peer, "proven": self.proven, "drops": self.all_drops()}


#: checked by mypy: RawConnection keeps the fast-path contract
_CONFORMS: type[FastConnection] = RawConnection


__all__ = ["RawConnection", "SimpletunConnection"]
