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
  stream (a :class:`~.connection.Notice` to log, then :class:`~.connection.Disconnected`):
  the stream cannot be resynchronised. The bulk of a proven stream takes the quick
  decoder, and one whole small message in one read the latency lane (:meth:`quick_read`).
- Multi-path (``peer`` :data:`PATHS`): the transport's paths screen strangers and follow
  the peer, each on its own socket, and hand messages in with :meth:`receive_path`;
  liveness, the session, events and counters are this connection's as over one socket.
- Garbage is counted in :attr:`drops` (merged with the endpoint's, the channel's and the
  reassembler's by :meth:`all_drops`), never raised.

The fast path (:class:`~.connection.FastConnection`) is the product's native data path as
sans-I/O logic (a UDP point-to-point Tunnel runs on it): device frames with
virtio_net_hdr go in whole, a super-packet becomes one FLAG_GSO message (one AEAD call),
cut into FRAGMENTs that leave as one :class:`~.connection.GsoRun`; small partial-checksum
packets are sealed in one call; GRO reads come back in as runs; one small packet of an
idle tunnel takes the latency lane (:meth:`NativeConnection.send_one`,
:meth:`NativeConnection.quick`).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable
from typing import Any, Literal

from ..errors import LocalProtocolError, RemoteProtocolError
from . import fragment
from .connection import (
    Addr,
    Connected,
    ConnectionEvent,
    DatagramBatch,
    Disconnected,
    FastConnection,
    GsoRun,
    Notice,
    Outbox,
    Rekeyed,
    each_datagram,
    stream_broken,
)
from .framing import (
    FLAG_GSO,
    HEADER_LEN,
    TAG_LEN,
    TCP_NATIVE_PREFIX,
    MsgType,
    NativeStreamDecoder,
    encode_native_stream,
    native_stream_prefix,
)
from .liveness import PeerDown, PeerUp
from .losscap import LossAdaptiveCap
from .native import Decoded, NativeEndpoint
from .offload import F_NEEDS_CSUM, VNET_HDR_LEN, GsoFrame, completed_packet
from .roaming import follow_peer
from .secure import AuthFailure, SessionExpired, SessionReset
from .secure import Rekeyed as SessionRekeyed

_FRAGMENT = int(MsgType.FRAGMENT)
#: partial-checksum packets up to this size are small (ACKs, a 64-byte flood): a batch of
#: only those is sealed in one call, one of them alone takes the latency lane; larger ones
#: are data segments the loss watcher reads
SMALL_BATCH = 300

#: a UDP payload on a 1500-byte IPv4 underlay
DEFAULT_MAX_DATAGRAM = 1500 - 20 - 8

#: the ``peer`` of a multi-path connection: its transport's paths learn and follow the
#: peer's addresses, each its own; the connection neither screens nor follows, and what
#: it sends goes to "the paths" (data on those the policy picks, control on all in use)
PATHS = "paths"


def _host(addr: Addr) -> Any:
    return addr[0] if isinstance(addr, tuple) else addr


class NativeConnection(Outbox):
    """The native protocol with one peer, over UDP datagrams or one TCP stream.

    ``make_endpoint`` builds a fresh :class:`NativeEndpoint` (with its secure channel when
    encrypted); a TCP client gets a new one for every new stream (a reconnect starts
    afresh, as the session of the old stream is gone with it). ``reassembler`` and
    ``loss_cap`` may be the adapter's shared ones (a hub peer then costs no reassembler).
    """

    lane = True

    #: device frames with virtio_net_hdr, super-packets included (see FastConnection)
    takes_super = True
    stream_lane = True

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
        #: a UDP server's authenticated peer: no stranger can move it (without keys any
        #: source takes the peer, so its own socket would keep nothing out)
        self.peer_socket = server and not stream and self.endpoint.secure is not None
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
        self._batches: list[tuple[DatagramBatch, Addr]] = []
        self._timer_moved = False  # the lane's first unanswered send started a timer
        self._source: Any = None  # the peer's host, as the crypto layer keys sources ...
        self._source_of: Addr = None  # ... computed for this peer
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
        """A UDP client leaving tells its server with an EXIT (encrypted sessions only), so
        a hub marks it down at once instead of after ``dead_after`` of silence. A server
        and a TCP client (its stream's end says it) send nothing."""
        if self.server or self.stream or self.peer is None:
            return
        msg = self.endpoint.exit_message(now)
        if msg is not None:
            self._datagrams.append((msg, self.peer))

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
        if self._receive_message(data, addr, now):
            self._pump(now)

    def receive_run(self, run: fragment.FragmentRun, addr: Addr, now: float) -> None:
        """FRAGMENT datagrams of one GRO read: whole messages are put back with one join
        each (:meth:`~.fragment.Reassembler.receive_run`), then decoded as datagrams from
        ``addr`` are; malformed fragments are counted as ``fragment_bad``."""
        rdrops = self.reasm.stats.drops
        before = sum(rdrops.values())
        messages = self.reasm.receive_run(run.buf, run.stride, now)
        bad = sum(rdrops.values()) - before
        if bad:
            self.drops["fragment_bad"] += bad
        self.super_rx += len(messages)
        # the peer's super-messages (the bulk) take the quick decoder, as its datagrams do
        quick, source = self.quick_parts() if addr == self.peer else (None, None)
        self._take(messages, now, source, quick,
                   lambda msg, now, _source: self._receive_message(msg, addr, now))
        self._pump(now)

    def receive_path(self, data: bytes, addr: Addr, now: float) -> Decoded:
        """Multi-path (``peer`` :data:`PATHS`): one message a path's socket took from
        ``addr`` (the path screened it); what it carried, for the transport to order its
        frames and learn ``addr`` when it was authentic."""
        return self.endpoint.decode(data, now, _host(addr))

    def quick(self, data: bytes | memoryview, now: float
              ) -> bytes | GsoFrame | None | Literal[False]:
        """:meth:`NativeEndpoint.quick` for a datagram the adapter matched to the peer by its
        raw address (one dict get or compare, nothing normalised): the frame; None when
        consumed; False: untouched, :meth:`receive_datagram` decides. Per datagram, so
        nothing is pumped here: :meth:`has_work` says when the adapter must flush."""
        peer = self.peer
        if peer is not self._source_of:
            self._source_of = peer
            self._source = _host(peer)
        return self.endpoint.quick(data, now, self._source)

    def quick_parts(self) -> tuple[Callable[[Any, float, Any], Any], Any]:
        """``(decode, source)`` with ``decode(data, now, source)`` == :meth:`quick`: for an
        adapter's loop over one batch, which then makes no extra call per datagram. Valid
        until the peer moves (:class:`AddressChanged`); the endpoint of a UDP connection
        never changes."""
        peer = self.peer
        if peer is not self._source_of:
            self._source_of = peer
            self._source = _host(peer)
        return self.endpoint.quick, self._source

    def _receive_message(self, data: bytes, addr: Addr, now: float) -> bool:
        """One whole native message from ``addr`` (reassembled when it was fragmented).
        False: a stranger's, dropped before any decoding (nothing to pump)."""
        endpoint = self.endpoint
        from_peer = self.peer is not None and addr == self.peer
        if not from_peer:
            if not self.server:
                self.drops["unknown_peer"] += 1
                return False
            admit, hello = endpoint.screen_stranger(data, now)
            if not admit:
                self.drops["unknown_peer"] += 1
                if hello is not None:
                    self._datagrams.append((hello, addr))
                return False
        decoded = endpoint.decode(data, now, _host(addr))
        secure = endpoint.secure
        if secure is not None and secure.cookie_out:
            # cookie replies under load: bound to the host, sent to the whole address
            self._datagrams.extend((reply, addr) for reply, _host_only in secure.cookie_out)
            secure.cookie_out.clear()
        if not from_peer:
            moved = follow_peer(self.peer, addr, authentic=decoded.authentic,
                                may_move=self.server, now=now)
            if moved is None:
                return True
            self.peer = moved.addr
            self._events.append(moved)
        self._frames.extend(decoded.frames)
        return True

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
            self._events.extend(stream_broken(exc, now, at_end=not data,
                                              restart=not self.server))
            return
        except LocalProtocolError:  # data after our own end of stream: nothing to decode
            return
        source = self.peer and _host(self.peer)
        # DATA of a proven stream (the bulk) takes the quick decoder, as datagrams do
        self._take(messages, now, source, self.endpoint.quick if self.proven else None,
                   self._stream_message)
        if not data and decoder.buffered == 0:
            self._events.append(Disconnected(now, "closed", restart=not self.server))
        self._pump(now)

    def _stream_message(self, msg: bytes, now: float, source: Any) -> None:
        """One whole message of the stream, fully decoded: it may prove the stream."""
        decoded = self.endpoint.decode(msg, now, source)
        if decoded.authentic and not self.proven:
            self.proven = True
        if self.proven:
            self._frames.extend(decoded.frames)
        elif decoded.frames:
            self.drops["unknown_peer"] += len(decoded.frames)

    def _take(self, messages: list[Any], now: float, source: Any,
              quick: Callable[[Any, float, Any], Any] | None,
              decode: Callable[[Any, float, Any], Any]) -> None:
        """Whole messages, in order: each through ``quick`` (the bulk: its frame, or None
        when consumed) unless it leaves one untouched (False), then through ``decode``."""
        frames = self._frames
        for msg in messages:
            if quick is not None:
                frame = quick(msg, now, source)
                if frame is not False:
                    if frame is not None:
                        frames.append(frame)
                    continue
            decode(msg, now, source)

    def quick_read(self, data: bytes, now: float) -> bytes | GsoFrame | None | Literal[False]:
        """The latency lane of a TCP stream: a read that is exactly one whole plain message
        of the proven stream, with nothing buffered before it: :meth:`quick` of it;
        False (untouched) for anything else (a super-packet is the batch path's, which
        writes GsoFrames)."""
        decoder = self._decoder
        plen = TCP_NATIVE_PREFIX.size
        if (decoder is None or not self.proven or self.failed or decoder.buffered
                or len(data) <= plen + HEADER_LEN or data[plen + 2] & FLAG_GSO
                or TCP_NATIVE_PREFIX.unpack_from(data)[0] != len(data) - plen):
            return False
        return self.endpoint.quick(data[plen:], now, self.peer and _host(self.peer))

    @property
    def buffered(self) -> int:
        """Stream bytes held for an incomplete message (the adapter caps unproven ones)."""
        return 0 if self._decoder is None else self._decoder.buffered

    # ------------------------------------------------------------------ device -> wire
    def send_frames(self, frames: list[bytes], now: float, offset: int = 0) -> None:
        """Device frames (``offset`` bytes of header skipped) for the peer."""
        if not self._can_send():
            self.drops["no_peer" if self._ever_alive else "no_peer_yet"] += len(frames)
            return
        if offset:
            frames = [f[offset:] for f in frames]
        self._emit(self.endpoint.encode_batch(frames, now))
        self._pump(now)

    def send_device(self, frames: list[bytes], now: float, *, vnet_hdr: bool = True) -> None:
        """Frames read from a device opened with virtio_net_hdr, sent in order.

        - a super-packet (GSO) -> one FLAG_GSO message (one AEAD call; cut smaller under
          loss, :class:`LossAdaptiveCap`); on UDP a message larger than a datagram leaves
          as FRAGMENTs in ONE :class:`GsoRun`; on TCP header and payload are gathered in
          :meth:`stream_to_send` (no 64 KiB join);
        - a batch of only small partial-checksum packets (ACKs, a small-packet flood) ->
          sealed in one call, one batch;
        - a partial-checksum packet that fits a datagram with its header -> FLAG_GSO too
          (the receiver's kernel finishes the checksum); a larger one -> checksum
          completed here, plain DATA; anything else -> plain DATA.
        On UDP the messages that fit one datagram leave together as one list batch.

        ``vnet_hdr`` False: plain frames of a device without the header, encoded in one
        call (:meth:`NativeEndpoint.encode_batch`) and, on UDP, left as one list batch
        (:meth:`send_frames` leaves single datagrams, for a transport without batches).
        """
        if not self._can_send():
            self.drops["no_peer" if self._ever_alive else "no_peer_yet"] += len(frames)
            return
        endpoint = self.endpoint
        if not vnet_hdr:
            encoded = endpoint.encode_batch(frames, now)
            if self.stream:
                self._emit(encoded)
            elif encoded:
                self._batches.append((encoded, self.peer))
            self._pump(now)
            return
        stream, peer, tap = self.stream, self.peer, self.tap
        limit = 1 << 30 if stream else self.max_datagram
        small_max = limit - HEADER_LEN - (TAG_LEN if endpoint.secure is not None else 0)
        if not stream and frames and all(
                VNET_HDR_LEN < len(f) <= SMALL_BATCH and f[1] == 0 and f[0] & F_NEEDS_CSUM
                for f in frames):
            sealed = endpoint.encode_gso_batch(frames, now)
            if sealed:
                self._batches.append((sealed, peer))
            self._pump(now)
            return
        encode_gso, encode_data = endpoint.encode_gso, endpoint.encode_data
        small: list[bytes] = []  # UDP: messages that fit one datagram, in order
        out = self._stream_out  # TCP: prefixed stream frames
        pack = native_stream_prefix
        loss = self.loss
        for f in frames:
            if len(f) <= VNET_HDR_LEN:
                self.drops["short_vnet_frame"] += 1
                continue
            msgs: list[bytes | None]
            if f[1] == 0:  # gso_type NONE
                if f[0] & F_NEEDS_CSUM:
                    if not stream and len(f) > SMALL_BATCH:  # a data segment, maybe resent
                        loss.observe(f, now, tap)
                    if len(f) <= small_max:
                        msgs = [encode_gso(f, now)]
                    else:
                        try:
                            b = completed_packet(f)
                        except RemoteProtocolError:
                            self.drops["bad_vnet_csum"] += 1
                            continue
                        msgs = [encode_data(b, now)]  # type: ignore[arg-type]
                else:
                    msgs = [encode_data(memoryview(f)[VNET_HDR_LEN:], now)]  # type: ignore[arg-type]
            else:
                self.super_tx += 1
                if stream:  # header and super-packet written gathered, not joined
                    parts = endpoint.gso_parts(f, now)
                    if parts:
                        out.append(pack(sum(map(len, parts))))
                        out.extend(parts)
                    continue
                msgs = [encode_gso(p, now) for p in loss.shape([f], now, tap=tap)]
            for msg in msgs:
                if msg is None:
                    continue  # queued until the session is up
                if stream:
                    out.append(pack(len(msg)))
                    out.append(msg)
                elif len(msg) <= limit:
                    small.append(msg)
                else:
                    if small:
                        self._batches.append((small, peer))
                        small = []
                    self._frag_id += 1
                    buf, stride, _n = fragment.split(msg, self._frag_id, limit,
                                                     path=endpoint.path)
                    self._batches.append((GsoRun(buf, stride), peer))
        if small:
            self._batches.append((small, peer))
        self._pump(now)

    def send_super(self, packet: bytes, now: float) -> None:
        """One super-packet (virtio_net_hdr + up to 64 KiB), its FRAGMENTs as single
        datagrams in :meth:`datagrams_to_send`: for a transport without batches."""
        self.send_device([packet], now)
        batches, self._batches = self._batches, []
        for batch, addr in batches:
            self._datagrams.extend((d, addr) for d in each_datagram(batch))  # type: ignore[misc]

    def send_one(self, frame: bytes | memoryview, now: float, *, vnet_hdr: bool
                 ) -> bytes | None | Literal[False]:
        """The latency lane: one frame read from an idle tunnel's device, encoded at once.

        Taken: a plain packet, or a small partial-checksum one (``vnet_hdr``: the frame
        starts with the header; the receiver finishes the checksum); returns the datagram
        for the peer, or the stream bytes on TCP; None when consumed (queued for the
        handshake). False, untouched, for the batch path's cases: a super-packet, a data
        segment the loss watcher must see, no peer, a broken stream, nonsense.
        """
        if not self._can_send():
            return False
        n = len(frame)
        payload: Any
        if vnet_hdr:
            if n <= VNET_HDR_LEN or frame[1] != 0:
                return False  # a super-packet (or nonsense): send_device's job
            if frame[0] & F_NEEDS_CSUM:
                if n > SMALL_BATCH:
                    return False
                payload, gso = frame, True
            else:
                payload, gso = memoryview(frame)[VNET_HDR_LEN:], False
        else:
            if n == 0:
                return False
            payload, gso = frame, False
        endpoint = self.endpoint
        secure = endpoint.secure
        quiet = secure is None or secure.unanswered_since is not None
        msg = endpoint.encode_gso(payload, now) if gso else endpoint.encode_data(payload, now)
        if msg is None or not quiet:  # queued for a handshake, or the first unanswered
            self._timer_moved = True  # send starts the stale-session timer: re-arm
        if msg is None:
            return None
        return encode_native_stream(msg) if self.stream else msg

    def has_work(self) -> bool:
        """Something waits after :meth:`quick` / :meth:`send_one` (an opened message may
        start a rekey, a send may queue a handshake or start a timer): flush."""
        # has_output() inlined: the latency lane asks this once per packet
        return (self._timer_moved or bool(self._datagrams or self._batches
                                          or self._stream_out or self._events)
                or self.endpoint.has_work())

    def has_output(self) -> bool:
        """:meth:`has_work` but for a timer that only moved: output or events wait. The
        latency lane asks it to re-arm its timer, not drain everything, after a send
        that only started the stale-session timer (each send of a ping-pong does)."""
        return (bool(self._datagrams or self._batches or self._stream_out or self._events)
                or self.endpoint.has_work())

    def max_payload(self) -> int:
        """The largest device frame that fits one datagram unfragmented."""
        return self.max_datagram - HEADER_LEN - (TAG_LEN if self.endpoint.secure else 0)

    # ------------------------------------------------------------------ timers
    def get_timer(self) -> float | None:
        self._timer_moved = False
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
    def batches_to_send(self, now: float) -> list[tuple[DatagramBatch, Addr]]:
        """Bulk UDP output of :meth:`send_device` (drain it before :meth:`datagrams_to_send`)."""
        out, self._batches = self._batches, []
        return out

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        """Single datagrams, with what :meth:`quick` / :meth:`send_one` left for the
        endpoint to say (handshake, rekey) moved here first."""
        self._pump(now)
        out, self._datagrams = self._datagrams, []
        return out

    def stream_to_send(self, now: float) -> list[bytes]:
        self._pump(now)
        out, self._stream_out = self._stream_out, []
        return out

    @property
    def last_heard(self) -> float | None:
        return self.endpoint.liveness.last_rx

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
            "gso_cap_decreases": self.loss.decreases,
            "retransmits_seen": self.loss.retransmits,
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
                if self._announced:  # silence, or the peer's own EXIT (it said it stops)
                    reason = "exit" if ev.reason == "exit" else "dead_peer"
                    self._events.append(Disconnected(now, reason, restart=not self.server))
                self._alive = self._announced = False
        if self._alive and not self._announced and (self.proven or not self.stream):
            self._announced = True
            self._events.append(Connected(now, self.peer))
        secure = endpoint.secure
        if secure is not None:
            while (sev := secure.next_event()) is not None:
                notice = _notice(sev, now)
                if notice is not None:
                    self._events.append(notice)
                elif isinstance(sev, SessionRekeyed):
                    self._events.append(Rekeyed(now))


def _notice(ev: object, now: float) -> Notice | None:
    """The operator's line for a secure-channel event.

    A completed handshake is no notice: :class:`Connected` (or :class:`Rekeyed`) says it.
    """
    if isinstance(ev, AuthFailure):
        return Notice(now, logging.WARNING, "auth_" + ev.reason,
                      f"authentication failure ({ev.reason}): {ev.message}")
    if isinstance(ev, SessionExpired):
        return Notice(now, logging.WARNING, "session_expired",
                      "session keys expired without a rekey")
    if isinstance(ev, SessionReset):
        return Notice(now, logging.INFO, "session_reset",
                      "the peer lost our session (restarted): handshaking again")
    return None


#: checked by mypy: NativeConnection keeps the fast-path contract
_CONFORMS: type[FastConnection] = NativeConnection


__all__ = ["DEFAULT_MAX_DATAGRAM", "PATHS", "SMALL_BATCH", "NativeConnection"]
