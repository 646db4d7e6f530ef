"""One native peer as a sans-I/O connection: every decision of the native data path, no I/O.

This composes the native pieces behind the :class:`~.connection.Connection` contract:
the :class:`~.native.NativeEndpoint` (framing, keepalives, the secure channel), the
peer's address and when to follow it, screening of strangers, fragmentation of
super-packets and their reassembly with the loss-adaptive size cap, and the TCP stream
framing (the one length-prefix encoder of :mod:`.framing`). Datagrams, stream bytes and
device frames go in with ``now``; datagrams, stream bytes, frames and events come out.
It is what a tunnel adapter or a hub router drives, and what two instances wired to each
other in a test exercise without a device, a socket or a sleep.

Rules it owns (the README's "Liveness and roaming"):

- UDP: a client only listens to the address it talks to. A server follows a peer whose
  address changes only on *authentic* input from the new address (a well-formed
  keepalive in plaintext, anything that authenticates when encrypted), as
  :func:`.roaming.follow_peer` decides for every connection. Other
  datagrams from strangers are counted as ``unknown_peer``; plaintext DATA from one gets
  a rate-limited hello, so a client re-introduces itself after a server restart.
- TCP: one connection object per stream. A client's stream is proven at once (it dialled
  the server); a server's stream is proven by its first authentic message. Until then
  nothing it sends reaches the device and no event but the proof leaves it: the adapter
  keeps such streams in :class:`~.admission.Admission` and replaces the live connection
  only on :class:`~.connection.Connected`. A bad length is counted once and ends the
  stream (:class:`~.connection.Disconnected`); the stream cannot be resynchronised.
- Garbage is counted in :attr:`drops` (merged with the endpoint's, the channel's and the
  reassembler's by :meth:`all_drops`), never raised.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from ..errors import LocalProtocolError, RemoteProtocolError
from . import fragment
from .connection import Addr, Connected, ConnectionEvent, Disconnected, Rekeyed
from .framing import (
    HEADER_LEN,
    TAG_LEN,
    MsgType,
    NativeStreamDecoder,
    encode_native_stream,
)
from .liveness import PeerDown, PeerUp
from .losscap import LossAdaptiveCap
from .native import NativeEndpoint
from .offload import GSO_TCPV4, GSO_TCPV6, VNET_HDR_LEN
from .roaming import follow_peer
from .secure import Rekeyed as SessionRekeyed

_FRAGMENT = int(MsgType.FRAGMENT)

#: a UDP payload on a 1500-byte IPv4 underlay
DEFAULT_MAX_DATAGRAM = 1500 - 20 - 8


def _host(addr: Addr) -> Any:
    return addr[0] if isinstance(addr, tuple) else addr


class NativeConnection:
    """The native protocol with one peer, over UDP datagrams or one TCP stream.

    ``make_endpoint`` builds a fresh :class:`NativeEndpoint` (with its secure channel when
    encrypted); a TCP client gets a new one for every new stream (a reconnect starts
    afresh, as the session of the old stream is gone with it).
    """

    def __init__(
        self,
        make_endpoint: Callable[[], NativeEndpoint],
        *,
        server: bool,
        stream: bool = False,
        peer: Addr = None,
        max_datagram: int = DEFAULT_MAX_DATAGRAM,
        reassembler: fragment.Reassembler | None = None,
        loss_cap: LossAdaptiveCap | None = None,
        tap: bool = False,
    ) -> None:
        self._make_endpoint = make_endpoint
        self.endpoint = make_endpoint()
        self.server = server
        self.stream = stream
        self.peer: Addr = peer
        self.max_datagram = max_datagram
        self.reasm = reassembler if reassembler is not None else fragment.Reassembler()
        self.loss = loss_cap if loss_cap is not None else LossAdaptiveCap()
        self.tap = tap
        self.drops: collections.Counter[str] = collections.Counter()
        #: a TCP stream is ours once proven (a client's at once, a server's by its first
        #: authentic message); UDP: a peer address is known
        self.proven = stream and not server
        self.failed = False  # the stream broke: it decodes nothing more
        self.super_tx = 0
        self.super_rx = 0
        self._decoder = NativeStreamDecoder() if stream else None
        self._frag_id = 0
        self._datagrams: list[tuple[bytes, Addr]] = []
        self._stream_out: list[bytes] = []
        self._frames: list[bytes] = []
        self._events: collections.deque[ConnectionEvent] = collections.deque()
        self._started = False
        self._ever_alive = False  # drops before that are no_peer_yet
        self._alive = False  # the endpoint saw its peer alive ...
        self._announced = False  # ... and Connected was emitted (once proven)

    # ------------------------------------------------------------------ lifecycle
    def start(self, now: float) -> None:
        """A client says hello (starts its handshake when encrypted); a server waits."""
        self._started = True
        self.endpoint.start(now, initiator=not self.server)
        self._pump(now)

    def close(self, now: float) -> None:
        """Native peers notice a departure by silence: nothing to send."""

    def connection_made(self, now: float) -> None:
        """A new TCP stream replaced the old one: fresh decoder and session, hello again."""
        if not self.stream:
            return
        self._decoder = NativeStreamDecoder()
        self.failed = False
        self.proven = not self.server
        self._stream_out.clear()
        self.endpoint = self._make_endpoint()
        self._alive = self._announced = False
        if self._started:
            self.start(now)

    # ------------------------------------------------------------------ wire -> device
    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        """One UDP datagram from ``addr``."""
        if len(data) > 1 and data[1] == _FRAGMENT:
            inner = self.reasm.feed(data, now, self.drops)
            if inner is None:
                return
            self.super_rx += 1
            data = inner  # type: ignore[assignment]  # bytearray: decoded in place
        endpoint = self.endpoint
        from_peer = self.peer is not None and addr == self.peer
        if not from_peer:
            if not self.server:
                self.drops["unknown_peer"] += 1
                return
            admit, hello = endpoint.screen_stranger(data, now)
            if not admit:
                self.drops["unknown_peer"] += 1
                if hello is not None:
                    self._datagrams.append((hello, addr))
                return
        decoded = endpoint.decode(data, now, _host(addr))
        if not from_peer:
            moved = follow_peer(self.peer, addr, authentic=decoded.authentic,
                                may_move=self.server, now=now)
            if moved is None:
                return
            self.peer = moved.addr
            self._events.append(moved)
        self._frames.extend(decoded.frames)
        self._pump(now)

    def receive_stream(self, data: bytes, now: float) -> None:
        """Bytes of this connection's TCP stream; ``b""`` is its end."""
        decoder = self._decoder
        if decoder is None or self.failed:
            return
        try:
            decoder.receive_data(data)
            messages = decoder.frames()
        except RemoteProtocolError as exc:
            self.failed = True
            self.drops[exc.reason] += 1
            self._events.append(Disconnected(now, exc.reason, restart=not self.server))
            return
        except LocalProtocolError:  # data after our own end of stream: nothing to decode
            return
        endpoint = self.endpoint
        for msg in messages:
            decoded = endpoint.decode(msg, now, self.peer and _host(self.peer))
            if decoded.authentic and not self.proven:
                self.proven = True
            if self.proven:
                self._frames.extend(decoded.frames)
            elif decoded.frames:
                self.drops["unknown_peer"] += len(decoded.frames)
        if not data and decoder.buffered == 0:
            self._events.append(Disconnected(now, "closed", restart=not self.server))
        self._pump(now)

    @property
    def buffered(self) -> int:
        """Stream bytes held for an incomplete message (the adapter caps unproven ones)."""
        return 0 if self._decoder is None else self._decoder.buffered

    # ------------------------------------------------------------------ device -> wire
    def send_frames(self, frames: list[bytes], now: float) -> None:
        """Device frames (no virtio_net_hdr) for the peer."""
        if not self._can_send():
            self.drops["no_peer" if self._ever_alive else "no_peer_yet"] += len(frames)
            return
        self._emit(self.endpoint.encode_batch(frames, now))
        self._pump(now)

    def send_super(self, packet: bytes, now: float) -> None:
        """One super-packet as the device gives it (virtio_net_hdr + up to 64 KiB).

        Under loss (TCP retransmissions seen in what we send) it is cut to the current
        cap first; on UDP a message larger than a datagram leaves as FRAGMENTs.
        """
        if not self._can_send():
            self.drops["no_peer" if self._ever_alive else "no_peer_yet"] += 1
            return
        if len(packet) <= VNET_HDR_LEN:
            self.drops["short_vnet_frame"] += 1
            return
        parts = [packet]
        if not self.stream and packet[1] & 0x7F in (GSO_TCPV4, GSO_TCPV6):
            parts = self.loss.shape(parts, now, tap=self.tap)
        for part in parts:
            msg = self.endpoint.encode_gso(part, now)
            if msg is None:
                continue  # queued until the session is up
            self.super_tx += 1
            if self.stream or len(msg) <= self.max_datagram:
                self._emit([msg])
                continue
            self._frag_id += 1
            buf, stride, count = fragment.split(msg, self._frag_id, self.max_datagram,
                                                path=self.endpoint.path)
            mv = memoryview(buf)
            self._datagrams.extend((bytes(mv[i * stride:(i + 1) * stride]), self.peer)
                                   for i in range(count))
        self._pump(now)

    def max_payload(self) -> int:
        """The largest device frame that fits one datagram unfragmented."""
        return self.max_datagram - HEADER_LEN - (TAG_LEN if self.endpoint.secure else 0)

    # ------------------------------------------------------------------ timers
    def get_timer(self) -> float | None:
        times = [t for t in (self.endpoint.get_timer(), self.reasm.get_timer())
                 if t is not None]
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        before = self.reasm.stats.expired
        self.reasm.handle_timer(now)
        if self.reasm.stats.expired != before:
            self.drops["fragment_expired"] += self.reasm.stats.expired - before
        self.endpoint.handle_timer(now)
        self._pump(now)

    # ------------------------------------------------------------------ outputs
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        out, self._datagrams = self._datagrams, []
        return out

    def stream_to_send(self, now: float) -> list[bytes]:
        out, self._stream_out = self._stream_out, []
        return out

    def frames_to_deliver(self) -> list[bytes]:
        out, self._frames = self._frames, []
        return out

    def next_event(self) -> ConnectionEvent | None:
        return self._events.popleft() if self._events else None

    def all_drops(self) -> dict[str, int]:
        drops = collections.Counter(self.drops)
        drops.update(self.endpoint.drops)
        if self.endpoint.secure is not None:
            drops.update(self.endpoint.secure.drops)
        return {k: v for k, v in sorted(drops.items()) if v}

    def status(self, now: float) -> dict[str, Any]:
        liveness = self.endpoint.liveness
        stats = getattr(self.endpoint.secure, "stats", None)
        return {
            "peer": self.peer,
            "alive": liveness.alive,
            "last_rx_age": None if liveness.last_rx is None else now - liveness.last_rx,
            "proven": self.proven if self.stream else self.peer is not None,
            "drops": self.all_drops(),
            "super_tx": self.super_tx,
            "super_rx": self.super_rx,
            "gso_cap": self.loss.cap,
            "reassembly_pending": self.reasm.pending,
            "crypto": dict(stats(now)) if stats is not None else None,
        }

    # ------------------------------------------------------------------ internals
    def _can_send(self) -> bool:
        if self.stream:
            return not self.failed
        return self.peer is not None

    def _emit(self, messages: list[bytes]) -> None:
        if not messages:
            return
        if self.stream:
            self._stream_out.extend(encode_native_stream(m) for m in messages)
        elif self.peer is not None:
            peer = self.peer
            self._datagrams.extend((m, peer) for m in messages)

    def _pump(self, now: float) -> None:
        """Move the endpoint's control messages and events to this connection's outputs."""
        endpoint = self.endpoint
        msgs = endpoint.messages_to_send()
        if msgs and (self.stream or self.peer is not None):
            self._emit(msgs)
        while (ev := endpoint.next_event()) is not None:
            if isinstance(ev, PeerUp):
                self._alive = True
                self._ever_alive = True
            elif isinstance(ev, PeerDown):
                if self._announced:
                    self._events.append(Disconnected(now, "dead_peer",
                                                     restart=not self.server))
                self._alive = self._announced = False
        if self._alive and not self._announced and (self.proven or not self.stream):
            self._announced = True
            self._events.append(Connected(now, self.peer))
        secure = endpoint.secure
        if secure is not None:
            while (sev := secure.next_event()) is not None:
                if isinstance(sev, SessionRekeyed):
                    self._events.append(Rekeyed(now))


__all__ = ["DEFAULT_MAX_DATAGRAM", "NativeConnection"]
