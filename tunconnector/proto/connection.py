"""What a per-peer connection is: the sans-I/O contract every wire protocol implements.

A connection is to one peer what aioquic's ``QuicConnection`` is to a QUIC peer: it owns
every protocol decision (framing, crypto, replay, the peer's address and when to follow
it, liveness, counters) and does no I/O. The tunnel adapter feeds it what the device and
the transport produced, with ``now``, and writes out what it returns; a router sits
between one device and several connections in hub mode. Implementations: the native
protocol, OpenVPN static-key, the OpenVPN TLS client.

Two connections can be tested by handing each one's output to the other: no socket, no
device, no sleep.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

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


ConnectionEvent = (Connected | Disconnected | AddressChanged | Rekeyed | ConfigAssigned
                   | AuthRequest | ClientConnect | ClientDisconnect)


class Connection(Protocol):
    """One peer's protocol state; every method takes ``now`` (the loop's monotonic clock).

    Inputs: :meth:`receive_datagram` (UDP), :meth:`receive_stream` (TCP bytes, ``b""`` =
    EOF), :meth:`send_frames` (device frames bound for the peer), :meth:`handle_timer`.
    Outputs, drained by the adapter after every input: :meth:`datagrams_to_send`,
    :meth:`stream_to_send`, :meth:`frames_to_deliver`, :meth:`next_event`, and
    :meth:`get_timer` for the one timer. Garbage never raises: it is counted in
    :attr:`drops` by reason.
    """

    drops: collections.Counter[str]

    def start(self, now: float) -> None:
        """Begin: a client sends its hello / handshake, a server waits."""

    def close(self, now: float) -> None:
        """Clean shutdown: queue what tells the peer we leave (OCC EXIT, exit-notify)."""

    def connection_made(self, now: float) -> None:
        """A new TCP stream replaced the previous one (reset stream decoding state)."""

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None: ...

    def receive_stream(self, data: bytes, now: float) -> None: ...

    def send_frames(self, frames: list[bytes], now: float) -> None: ...

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]: ...

    def stream_to_send(self, now: float) -> list[bytes]: ...

    def frames_to_deliver(self) -> list[bytes]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_event(self) -> ConnectionEvent | None: ...

    def status(self, now: float) -> dict[str, Any]:
        """JSON-able facts for ``tunconnector status`` (peer, cipher, key age ...)."""
        ...
