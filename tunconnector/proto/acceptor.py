"""Which connection does this datagram belong to? The acceptor answers, without I/O.

Point to point (:class:`PeerAcceptor`) there is one connection, and the question is only
whether a datagram comes from its peer as ``recvfrom()`` spelt it (the *raw* address:
an IPv4 peer on a dual-stack socket arrives as ``::ffff:a.b.c.d``, sometimes with flow
info and scope). That comparison is all the bulk of the traffic costs: the adapter's
loop reads :attr:`PeerAcceptor.raw` once per batch and compares each datagram's source
with it, then decodes with the connection's quick decoder
(:meth:`~.native_conn.NativeConnection.quick_parts`). Anything else (a stranger, the
peer's first datagram, a fragment, a run, a handshake) goes to :meth:`PeerAcceptor.receive`
with the normalized address, and the connection decides: whether to follow a new
source (:func:`.roaming.follow_peer`), whether to answer a stranger (a plaintext hello),
and, for an encrypted server under a flood of valid-mac1 initiations, the cookie replies
its secure channel's :class:`~.cookie.InitiationScreen` gives (with a
``HandshakeGuard(cookies=CookieChecker())``), addressed to each initiation's full source
address among the connection's datagrams.

After the connection took a datagram from the address its peer now has, that datagram's
raw address is the one to compare with: the peer's first datagram, and its first after a
move, teach it, so the peer's next datagrams take the quick way again.

The hub's acceptor (many connections, index lookup, new peers only after
authentication) is another implementation of the same questions.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from .connection import Addr, ConnectionEvent, FastConnection
from .fragment import FragmentRun


class PeerAcceptor:
    """The one connection of a point-to-point tunnel, and its peer's raw address."""

    __slots__ = ("conn", "server", "raw")

    #: one connection: the adapter reads no fairness policy for many peers
    many = False

    def __init__(self, conn: FastConnection, *, server: bool) -> None:
        self.conn = conn
        self.server = server
        #: the peer's address as recvfrom() returns it, once a datagram from the
        #: connection's peer was taken (None before: nothing matches)
        self.raw: Hashable = None

    def lookup(self, raw: Hashable) -> FastConnection | None:
        """The connection when ``raw`` is its peer's raw address (quick decode), else None."""
        return self.conn if raw is not None and raw == self.raw else None

    def receive(self, data: Any, raw: Hashable, addr: Addr, now: float) -> FastConnection:
        """A datagram not matched by :meth:`lookup` (``addr``: ``raw`` normalized)."""
        conn = self.conn
        conn.receive_datagram(data, addr, now)
        if addr == _peer_of(conn):
            self.raw = raw
        return conn

    def receive_run(self, run: FragmentRun, raw: Hashable, addr: Addr,
                    now: float) -> FastConnection:
        """FRAGMENTs of one GRO read, kept whole."""
        conn = self.conn
        conn.receive_run(run, addr, now)
        if addr == _peer_of(conn):
            self.raw = raw
        return conn

    def connection_event(self, conn: FastConnection, ev: ConnectionEvent) -> None:
        """Nothing to re-index point to point: :meth:`receive` learnt the moved peer's
        raw address from the datagram that moved it."""

    def connections(self) -> list[FastConnection]:
        return [self.conn]

    def forget(self) -> None:
        """The transport changed (closed, reopened): no raw address is known."""
        self.raw = None


def _peer_of(conn: Any) -> Addr:
    peer: Addr = conn.peer
    return peer


__all__ = ["PeerAcceptor"]
