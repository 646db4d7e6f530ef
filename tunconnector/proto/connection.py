"""What a per-peer connection is: the sans-I/O contract every wire protocol implements.

A connection is to one peer what aioquic's ``QuicConnection`` is to a QUIC peer: it owns
every protocol decision (framing, crypto, replay, the peer's address and when to follow
it, liveness, counters) and does no I/O. The tunnel adapter feeds it what the device and
the transport produced, with ``now``, and writes out what it returns; a router sits
between one device and several connections in hub mode. Implementations: the native
protocol, OpenVPN static-key, the OpenVPN TLS client.

Two connections can be tested by handing each one's output to the other: no socket, no
device, no sleep.

The fast path is part of the contract (:class:`FastConnection`): a connection that takes
whole super-packets from a device opened with virtio_net_hdr returns runs of datagrams the
adapter sends with one UDP GSO ``sendmsg`` (:class:`GsoRun`), takes GRO reads whole as
runs, and has a one-packet lane (:meth:`FastConnection.send_one`,
:meth:`FastConnection.quick`) for an idle tunnel's latency.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from ..errors import RemoteProtocolError
    from .fragment import FragmentRun
    from .offload import GsoFrame

#: a transport address as the adapter sees it (host, port[, flowinfo, scope]) or None on TCP
Addr = Hashable


@dataclass(frozen=True, slots=True)
class Connected:
    """The peer proved itself (handshake done, first authentic message): traffic may flow."""

    at: float
    addr: Addr = None


@dataclass(frozen=True, slots=True)
class Disconnected:
    """The peer is gone: dead-peer timeout, its explicit exit, or a fatal protocol state.

    ``restart`` says the adapter should reconnect (a client after ping-restart).
    """

    at: float
    reason: str
    restart: bool = False


@dataclass(frozen=True, slots=True)
class AddressChanged:
    """The peer now sends from ``addr`` (followed only on authentic input)."""

    at: float
    addr: Addr


@dataclass(frozen=True, slots=True)
class Rekeyed:
    at: float
    key_id: int = 0


@dataclass(frozen=True, slots=True)
class ConfigAssigned:
    """The far end assigned our tunnel configuration (hub pool, OpenVPN PUSH_REPLY).

    ``addresses`` are interface addresses with prefix (``10.8.0.2/24``); ``routes`` are
    (destination network, gateway or None) to install via the device; the adapter removes
    them on exit.
    """

    at: float
    addresses: tuple[str, ...] = ()
    routes: tuple[tuple[str, str | None], ...] = ()
    mtu: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """A peer's credentials await a decision made outside proto/ (a script, a plugin, the
    management interface); the adapter answers the connection that emitted it."""

    at: float
    username: str | None
    password: str | None
    common_name: str | None
    peer_info: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClientConnect:
    """A server chose a client's addresses and now waits for its client-connect hook
    (script, plugin) run outside proto/ with ``env``, openvpn's environment; the
    adapter answers with the hook's verdict and output file."""

    at: float
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ClientDisconnect:
    """A client whose client-connect chain had succeeded is gone: the adapter runs its
    client-disconnect hook with ``env`` (traffic and duration included). No answer."""

    at: float
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Notice:
    """Something the operator should read, once per state change (a crypto failure, a
    session lost by the peer): the adapter logs ``message`` at ``level``, rate-limited per
    ``kind`` (a drop-counter-like key, ``auth_bad_mac``), so proto/ never logs itself."""

    at: float
    level: int
    kind: str
    message: str


ConnectionEvent = (Connected | Disconnected | AddressChanged | Rekeyed | ConfigAssigned
                   | AuthRequest | ClientConnect | ClientDisconnect | Notice)


@dataclass(frozen=True, slots=True)
class GsoRun:
    """Datagrams of ``stride`` bytes laid end to end in ``buf`` (the last may be shorter),
    for ONE address: the adapter sends them with one UDP GSO ``sendmsg`` (one ``send``
    each where the kernel refuses GSO). A fragmented super-packet leaves this way
    without being sliced into per-datagram objects."""

    buf: bytes | bytearray | memoryview
    stride: int


#: datagrams for one address, in order: a :class:`GsoRun`, or a list the adapter hands to
#: ``UdpEndpoint.send_batch`` (each run of equal sizes leaves in one GSO ``sendmsg``)
DatagramBatch = GsoRun | list[bytes]


def each_datagram(batch: DatagramBatch) -> list[bytes | bytearray | memoryview]:
    """The single datagrams of ``batch`` (for a transport without batches, and tests)."""
    if isinstance(batch, GsoRun):
        mv = memoryview(batch.buf)
        stride = batch.stride
        return [mv[off:off + stride] for off in range(0, len(mv), stride)]
    return list(batch)


def stream_broken(exc: RemoteProtocolError, now: float, *, at_end: bool,
                  restart: bool = False) -> list[ConnectionEvent]:
    """What a connection says when its TCP stream broke (a bad length: a byte stream cannot
    be resynchronised): a :class:`Notice` to log, unless the stream's end cut a frame
    short (``at_end``: only counted), then :class:`Disconnected`."""
    gone = Disconnected(now, exc.reason, restart=restart)
    if at_end:
        return [gone]
    return [Notice(now, logging.WARNING, exc.reason, f"closing connection: {exc}"), gone]


class ConnectionDefaults:
    """The optional members of :class:`Connection`, with their defaults, for
    implementations to subclass (a plain class: ``isinstance`` against a subclass of a
    Protocol runs Python code on every call)."""

    drops: collections.Counter[str]
    #: it has the latency lane's calls (:meth:`send_one`, a quick decoder)
    lane = False
    #: a client restarting after ping-restart wants a fresh source port (openvpn's
    #: client does so: a server may still hold state for the old address)
    new_port_on_restart = False
    #: the device may hand it TSO super-packets (:meth:`FastConnection.send_device`); a
    #: class member, read before any connection exists, when the device opens
    takes_super = False
    #: over TCP it has the latency lane's stream call (``quick_read``); a class member,
    #: read when a server starts listening
    stream_lane = False
    #: its :class:`Connected` carries the address the peer answered from, which the
    #: adapter follows (an OpenVPN server may answer from another of its addresses, a
    #: client moves along its remote list): a client's UDP socket then stays
    #: unconnected. A class member, read before the connection exists
    follows_answer = False
    #: the connection is the session, a TCP stream only its carrier (openvpn's): a
    #: client keeps it across streams and tells it of each new one
    #: (:meth:`Connection.connection_made`), a server's live one is the last proven
    #: stream's, a stream's end goes to it (it restarts), and its
    #: :class:`Disconnected` reason is a sentence for the log; False: one connection
    #: per stream, which ends with it, and Disconnected means the peer is gone
    outlives_stream = False
    #: the peer gets a UDP socket of its own, connected to it (the adapter's
    #: ``_follow_peer``): where a stranger cannot move the peer (an authenticated
    #: server) or where the peer answers from elsewhere than the shared socket dialled
    peer_socket = False
    #: its :meth:`Connection.status` says its cipher and :attr:`last_heard` its last
    #: authentic packet: the tunnel's status shows those (else the native crypto
    #: layer's statistics and the fast path's counters)
    reports_crypto = False

    @property
    def buffered(self) -> int | None:
        """TCP: bytes of an incomplete message held. None: not known (messages are taken
        before they prove anything), so the adapter judges an unproven stream by all it
        sent (``UNPROVEN_RECEIVED``) instead."""
        return None

    @property
    def last_heard(self) -> float | None:
        """Loop time of the peer's last authentic message (keepalives included); None:
        nothing yet, or the adapter's own count is as good."""
        return None

    def all_drops(self) -> dict[str, int]:
        """Every drop counter by reason, an inner layer's (endpoint, channel) included."""
        return {k: v for k, v in sorted(self.drops.items()) if v}

    def send_one(self, frame: bytes | memoryview, now: float, *, vnet_hdr: bool
                 ) -> bytes | None | Literal[False]:
        """The latency lane: one small device frame of an idle tunnel. Returns what to
        write (a datagram for the peer, or stream bytes on TCP); None when consumed
        (queued for a handshake); False (the default) when not the lane's: untouched,
        batch path."""
        return False

    def has_work(self) -> bool:
        """Output, events or an earlier timer wait after a quick decode or
        :meth:`send_one`: the adapter flushes (drains the outputs, re-arms its timer)."""
        return True

    def has_output(self) -> bool:
        """Output or events wait (:meth:`has_work` without a timer that only moved)."""
        return True

    def batches_to_send(self, now: float) -> list[tuple[DatagramBatch, Addr]]:
        """Bulk UDP output (runs for one address each), sent before
        :meth:`datagrams_to_send`; none by default."""
        return []

    def persist_state(self) -> dict[str, Any] | None:
        """Replay state the adapter saves (openvpn_replay_persist); None: nothing to save."""
        return None

    def quick_parts(self) -> tuple[Callable[[Any, float, Any], Any], Any] | None:
        """The adapter's per-datagram loop keyed by the peer's raw address
        (:meth:`FastConnection.quick_parts`, with a ``PeerAcceptor``); None (the
        default): every datagram goes to :meth:`quick_datagram` with its address."""
        return None

    def quick_datagram(self, data: bytes, addr: Addr, now: float
                       ) -> bytes | None | Literal[False]:
        """A data datagram decoded at once: the frame for the device, None when consumed
        (keepalive, counted drop), False (the default) when untouched: the adapter passes
        it to :meth:`receive_datagram`. Events and output it queued are drained after
        the batch as for any input."""
        return False


class Outbox(ConnectionDefaults):
    """The two queues a connection fills for its adapter: frames for the device and
    events. A base class for implementations (not part of the contract)."""

    _frames: list[bytes]
    _events: collections.deque[ConnectionEvent]

    def frames_to_deliver(self) -> list[bytes]:
        out, self._frames = self._frames, []
        return out

    def next_event(self) -> ConnectionEvent | None:
        return self._events.popleft() if self._events else None


class Connection(Protocol):
    """One peer's protocol state; every method takes ``now`` (the loop's monotonic clock).

    Inputs: :meth:`receive_datagram` (UDP), :meth:`receive_stream` (TCP bytes, ``b""`` =
    EOF), :meth:`send_frames` (device frames bound for the peer), :meth:`handle_timer`.
    Outputs, drained by the adapter after every input: :meth:`datagrams_to_send`,
    :meth:`stream_to_send`, :meth:`frames_to_deliver`, :meth:`next_event`, and
    :meth:`get_timer` for the one timer. Garbage never raises: it is counted in
    :attr:`drops` by reason. The optional members have their defaults in
    :class:`ConnectionDefaults`.
    """

    drops: collections.Counter[str]
    lane: bool
    new_port_on_restart: bool
    takes_super: bool
    stream_lane: bool
    follows_answer: bool
    outlives_stream: bool
    peer_socket: bool
    reports_crypto: bool

    @property
    def last_heard(self) -> float | None: ...

    @property
    def buffered(self) -> int | None: ...

    def quick_parts(self) -> tuple[Callable[[Any, float, Any], Any], Any] | None: ...

    def all_drops(self) -> dict[str, int]: ...

    def send_one(self, frame: bytes | memoryview, now: float, *, vnet_hdr: bool
                 ) -> bytes | None | Literal[False]: ...

    def has_work(self) -> bool: ...

    def has_output(self) -> bool: ...

    def batches_to_send(self, now: float) -> list[tuple[DatagramBatch, Addr]]: ...

    def persist_state(self) -> dict[str, Any] | None: ...

    def quick_datagram(self, data: bytes, addr: Addr, now: float
                       ) -> bytes | None | Literal[False]: ...

    def start(self, now: float) -> None:
        """Begin: a client sends its hello / handshake, a server waits."""

    def close(self, now: float) -> None:
        """Clean shutdown: queue what tells the peer we leave (OCC EXIT, exit-notify)."""

    def connection_made(self, now: float) -> None:
        """A new TCP stream replaced the previous one (reset stream decoding state)."""

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None: ...

    def receive_stream(self, data: bytes, now: float) -> None: ...

    def send_frames(self, frames: list[bytes], now: float, offset: int = 0) -> None:
        """Device frames for the peer; each packet starts ``offset`` bytes in (the
        all-zero virtio_net_hdr of a device without TUNSETOFFLOAD, skipped without a
        copy by a connection that seals into a new buffer anyway)."""

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]: ...

    def stream_to_send(self, now: float) -> list[bytes]: ...

    def frames_to_deliver(self) -> list[bytes]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_event(self) -> ConnectionEvent | None: ...

    def status(self, now: float) -> dict[str, Any]:
        """JSON-able facts for ``tunconnector status`` (peer, cipher, key age ...)."""
        ...


class FastConnection(Connection, Protocol):
    """A connection with the offload fast path (the native protocol).

    What it can take: device frames WITH their virtio_net_hdr, up to 64 KiB super-packets
    (:meth:`send_device`); a connection without this contract (OpenVPN) gets plain frames
    through :meth:`Connection.send_frames`, segmented by the adapter with
    ``proto.offload.gso_split``. Its bulk UDP output is drained with
    :meth:`batches_to_send` BEFORE :meth:`Connection.datagrams_to_send` (control
    messages), as the product sends data before control today.

    Why a second drain and not a wider ``datagrams_to_send``: every consumer of
    ``Connection.datagrams_to_send`` (the OpenVPN adapter) writes single ``bytes``; a wider
    item type would break their typing (list is invariant) before the one adapter exists.
    """

    #: True: :meth:`send_device` takes vnet_hdr frames including super-packets
    takes_super: bool

    def send_device(self, frames: list[bytes], now: float, *, vnet_hdr: bool = True) -> None:
        """Frames as a device opened with IFF_VNET_HDR reads them (header + packet);
        ``vnet_hdr`` False: plain frames, left as one batch all the same."""

    def quick_parts(self) -> tuple[Callable[[Any, float, Any], Any], Any]:
        """``(decode, source)``: ``decode(data, now, source)`` is :meth:`quick` without a
        call of its own, for an adapter's per-datagram loop (valid until the peer moves)."""
        ...

    def quick(self, data: bytes | memoryview, now: float
              ) -> bytes | GsoFrame | None | Literal[False]:
        """Decode a datagram the adapter knows comes from the peer (its raw address is the
        peer's): the frame for the device; None when consumed (keepalive, counted drop);
        False when it is anything else: untouched, pass it to ``receive_datagram``.
        Afterwards :meth:`has_work` says whether the adapter must flush."""
        ...

    def receive_run(self, run: FragmentRun, addr: Addr, now: float) -> None:
        """FRAGMENT datagrams of one UDP GRO read, kept whole (``UdpEndpoint.runs``)."""


