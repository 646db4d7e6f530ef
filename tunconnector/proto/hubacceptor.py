"""Which peer of a hub a datagram belongs to, and what a stranger gets back. Sans-I/O.

A hub serves many peers on one UDP socket. :class:`NativeHubAcceptor` takes the datagrams
of one read (bytes or GRO memoryview slices, with the raw address ``recvfrom`` gave and
``now``) and returns the frames each peer's session opened, the peers to flush, and the
datagrams the hub owes a sender that is no peer yet (cookie replies, session resets):

- A known source address is the fast path: one dict get, then the peer endpoint's
  ``quick`` decode (a DATA message of a live session), nothing else.
- Otherwise the receiver's session index in the header names the peer (fragments are
  reassembled first, with the hub's one shared reassembler, keyed by session and message
  id). Data for a session the hub does not have (it restarted, or the session ended) is
  answered with an authenticated SESSION_RESET (:mod:`.reset`), rate-limited per source
  and in total, so the client handshakes again at once.
- An initiation is read once, by the acceptor: the :class:`~.cookie.InitiationScreen`
  (length, mac1 under the hub's key or a peer PSK's, load, cookie, rate limit) before
  any Diffie-Hellman, then the Noise message, which reveals the initiator's static key;
  the :class:`~.hubtable.PeerTable` names the peer, whose responder channel accepts it
  (one DH pass for the handshake). Initiations are taken after a read's data, and a
  read holding many of them is a queue: cookies before any DH at once.
- A peer follows its client on any authenticated message from a new address
  (:func:`.roaming.follow_peer`: a hub may always move, the message proved it); the
  acceptor re-indexes the peer by its new raw address once and reports the move
  (:meth:`NativeHubAcceptor.moves`), so the hub closes a receive queue bound to the old
  address and logs it.
- An EXIT from the client ends the session (:meth:`NativeHubAcceptor.drain`): its
  indices are forgotten, its next handshake starts anew.

Each peer keeps its own :class:`~.native.NativeEndpoint` and responder
:class:`~.secure.SecureChannel` (made at its first accepted initiation), not a whole
:class:`~.native_conn.NativeConnection`: a hub peer needs neither the connection's
fragmentation nor its output lists (the hub sends per peer with one batched write), and
the receive loop calls the endpoint's ``quick`` directly, with no layer in between.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..errors import RemoteProtocolError
from . import fragment
from .assign import Assignment
from .cookie import Accept, CookieChecker, InitiationScreen, Reply, cookie_key
from .framing import HEADER_LEN, MsgType
from .hubtable import HubPeer, PeerTable
from .liveness import PeerDown
from .native import NativeEndpoint
from .noise import public_bytes
from .reset import encode_reset, reset_key, reset_token, wants_reset
from .roaming import follow_peer, normalize
from .secure import (
    IK_INIT_LEN,
    SecureChannel,
    TokenBucketLimiter,
    mac1_key,
    read_initiation,
)

#: an initiation on the wire (IKpsk2, mac1 included, mac2 not)
INIT_LEN = IK_INIT_LEN
#: frames a peer's channel holds while its session renews (bounded memory per peer)
PEER_QUEUE = 16
#: initiations in one read that mean a queue of them: under load (cookies) at once
INIT_BACKLOG = 16

_FRAGMENT = int(MsgType.FRAGMENT)
_INIT = int(MsgType.HANDSHAKE_INIT)


class NativeHubAcceptor:
    """The hub's "which peer": see the module docstring.

    ``drops`` is the hub's own counter (strangers' datagrams are counted there; a
    peer's in its endpoint, channel or stats). :meth:`set_static` gives it the hub's
    private key before the first datagram.
    """

    def __init__(self, table: PeerTable, *, cipher: str, cipher_auto: bool,
                 keepalive: float, dead_after: float, rekey_after_time: float,
                 rekey_after_bytes: int, max_frame: int, reassembler: fragment.Reassembler,
                 drops: collections.Counter[str], cookies: CookieChecker | None = None,
                 queue_limit: int = PEER_QUEUE) -> None:
        self.table = table
        #: what every peer's responder channel and endpoint are made with
        self._channel_args: dict[str, Any] = {
            "cipher": cipher, "cipher_auto": cipher_auto,
            "rekey_after_time": rekey_after_time, "rekey_after_bytes": rekey_after_bytes,
            "stale_after": keepalive + 5.0, "queue_limit": queue_limit}
        self._endpoint_args: dict[str, Any] = {
            "keepalive": keepalive, "dead_after": dead_after, "max_frame": max_frame}
        #: the adapter's reassembler (replaced when the adapter makes a new one)
        self.reasm = reassembler
        self.drops = drops
        #: wall clock minus the monotonic ``now`` (initiation timestamps are wall clock)
        self.clock_offset = 0.0
        #: peers by the raw address their datagrams come from (the fast-path key), and
        #: by the session indices their channels answer to
        self.by_raw: dict[Any, HubPeer] = {}
        self.by_index: dict[int, HubPeer] = {}
        self.cookies = cookies if cookies is not None else CookieChecker()
        #: mac1, load, cookie and rate-limit checks before an initiation's DH; under
        #: load and out of reply budget a datagram costs a length check, not a MAC;
        #: the per-source limit applies only under load
        self.screen = InitiationScreen(init_len=INIT_LEN, mac_keys=(), cookies=self.cookies,
                                       limiter=TokenBucketLimiter(), cookie_key=b"",
                                       throttle_before_mac=True, limit_always=False)
        #: initiations that reached the Diffie-Hellman (status: initiations_processed)
        self.dh = 0
        #: SESSION_RESET replies: per source address, and in total
        self.reset_per_source = TokenBucketLimiter(rate=2.0, burst=2.0)
        self.reset_total = TokenBucketLimiter(rate=500.0, burst=100.0)
        self._static: X25519PrivateKey | None = None
        self._public = b""
        self._reset_key = b""
        self._out: list[tuple[bytes, Any]] = []
        self._moves: list[tuple[HubPeer, Any]] = []

    # ------------------------------------------------------------------ keys
    def set_static(self, private: bytes) -> None:
        """The hub's static private key: the initiations' responder, the cookies' and
        resets' keys."""
        self._static = X25519PrivateKey.from_private_bytes(private)
        self._public = public_bytes(self._static)
        self.screen.cookie_key = cookie_key(mac1_key(self._public))
        self._reset_key = reset_key(private)
        self.refresh_mac_keys()

    def refresh_mac_keys(self) -> None:
        """mac1 keys: the hub's, and one per peer PSK (a peer with a PSK keys mac1 with
        it too); after each change of the table."""
        if not self._public:
            return
        keys = {mac1_key(self._public)}
        keys.update(mac1_key(self._public, p.psk) for p in self.table.peers.values()
                    if p.psk is not None)
        self.screen.set_mac_keys(keys)

    # ------------------------------------------------------------------ wire in
    def lookup(self, raw: Any) -> HubPeer | None:
        """The peer whose datagrams come from ``raw`` (as recvfrom gave it)."""
        return self.by_raw.get(raw)

    def receive_batch(self, batch: Iterable[tuple[Any, Any]], now: float, *,
                      runs: bool = False) -> tuple[list[tuple[HubPeer, Any]], list[HubPeer]]:
        """The datagrams of one read, as ``(data, raw address)``: the frames the peers'
        sessions opened, in order, each with its peer, and the peers that have something
        to flush (:meth:`drain`) besides. ``runs``: the read may hold GRO fragment runs
        (:class:`~.fragment.FragmentRun`), put back into messages first."""
        if runs:
            batch = self._expand_runs(batch, now)
        drops = self.drops
        by_raw = self.by_raw
        by_index = self.by_index
        reasm = self.reasm
        touched: dict[int, HubPeer] = {}
        inbound: list[tuple[HubPeer, Any]] = []
        inits: list[tuple[bytes, Any, Any]] = []
        for data, raw in batch:
            p = by_raw.get(raw)
            if p is not None and p.native is not None:
                frame = p.native.quick(data, now, raw)
                if frame is not False:
                    if frame is not None:
                        inbound.append((p, frame))
                    continue
            if len(data) < HEADER_LEN:
                drops["truncated"] += 1
                continue
            if type(data) is memoryview:  # a UDP GRO slice: the slow path wants bytes
                data = bytes(data)
            mtype = data[1]
            if mtype == _FRAGMENT:
                try:
                    inner = reasm.receive(data, now)
                except RemoteProtocolError as exc:
                    drops["fragment_" + exc.reason] += 1
                    continue
                if inner is None:
                    continue
                data = bytes(inner)
                mtype = data[1]
            addr = normalize(raw)
            if mtype == _INIT:
                inits.append((data, addr, raw))  # after the read's data: see below
                continue
            session = int.from_bytes(data[4:8], "big")
            p = by_index.get(session)
            if p is None or p.native is None:
                drops["unknown_session"] += 1
                if wants_reset(data):
                    self._reset(session, addr, now)
                continue
            decoded = p.native.decode(data, now, raw)
            if p.raw != raw and follow_peer(p.raw, raw, authentic=decoded.authentic,
                                            may_move=True, now=now) is not None:
                self._follow(p, addr, raw)
            for f in decoded.frames:
                inbound.append((p, f))
            touched[id(p)] = p
        if inits:
            if len(inits) >= INIT_BACKLOG:
                self.cookies.note_backlog(now)  # a queue of them: cookies before any DH
            for data, addr, raw in inits:
                q = self._on_initiation(data, addr, raw, now)
                if q is not None:
                    touched[id(q)] = q
        return inbound, list(touched.values())

    def _expand_runs(self, batch: Iterable[tuple[Any, Any]], now: float
                     ) -> Iterable[tuple[Any, Any]]:
        """Each FragmentRun of a read replaced by the messages it completes."""
        run_type = fragment.FragmentRun
        for item, _raw in batch:
            if type(item) is run_type:
                break
        else:
            return batch
        out: list[tuple[Any, Any]] = []
        reasm = self.reasm
        rstats = reasm.stats.drops
        before = sum(rstats.values())
        for item, raw in batch:
            if type(item) is run_type:
                out.extend((m, raw) for m in reasm.receive_run(item.buf, item.stride, now))
            else:
                out.append((item, raw))
        bad = sum(rstats.values()) - before
        if bad:
            self.drops["fragment_bad"] += bad
        return out

    def _on_initiation(self, data: bytes, addr: Any, raw: Any, now: float
                       ) -> HubPeer | None:
        """A HANDSHAKE_INIT: screened, read, handed to the peer its static key names."""
        drops = self.drops
        verdict = self.screen.check(data, addr[0], now)
        if not isinstance(verdict, Accept):
            drops[verdict.reason] += 1
            if isinstance(verdict, Reply):
                self._out.append((verdict.packet, addr))
            return None
        static = self._static
        if static is None:  # no key yet: nothing can be answered
            drops["handshake_failed"] += 1
            return None
        self.dh += 1
        try:
            hs, payload = read_initiation(static, verdict.body)
        except RemoteProtocolError:
            drops["handshake_failed"] += 1
            return None
        p = self.table.by_key(hs.rs or b"")
        if p is None:
            drops["unknown_peer"] += 1
            return None
        secure = self.channel(p)
        secure.accept_initiation(hs, payload, int.from_bytes(data[4:8], "big"), now, raw)
        if secure.last_authenticated == now and secure.authenticated_source == raw:
            if p.raw != raw or p.addr != addr:
                self._follow(p, addr, raw)
            if not p.started and p.native is not None:
                p.started = True
                p.native.start(now, initiator=False)
            self.index(p)
        return p

    def _reset(self, session: int, addr: Any, now: float) -> None:
        """Data for a session we do not have (we restarted, or it ended): tell the
        sender with an authenticated SESSION_RESET, so it handshakes again at once."""
        if not self._reset_key:
            return
        if not (self.reset_per_source.allow(addr, now) and self.reset_total.allow(None, now)):
            return
        self.drops["reset_sent"] += 1
        self._out.append((encode_reset(self._reset_key, session), addr))

    def _follow(self, p: HubPeer, addr: Any, raw: Any) -> None:
        """The peer is at ``raw`` now: re-indexed, and the move reported."""
        old = p.addr
        if p.raw is not None and self.by_raw.get(p.raw) is p:
            del self.by_raw[p.raw]
        p.addr = addr
        p.raw = raw
        self.by_raw[raw] = p
        self._moves.append((p, old))

    # ------------------------------------------------------------------ peers
    def channel(self, p: HubPeer) -> SecureChannel:
        """The peer's responder channel (and endpoint), made at its first handshake."""
        if p.secure is None:
            static = self._static
            if static is None:
                raise RuntimeError("the hub's static key is not set")
            p.secure = SecureChannel(
                initiator=False, psk=p.psk, private_key=static.private_bytes_raw(),
                peer_public_key=p.public, clock_offset=self.clock_offset, guard=p.guard,
                **self._channel_args)
            if p.assignment is not None:
                p.secure.response_extra = p.assignment.encode()
            key = self._reset_key

            def extra_for(index: int, p: HubPeer = p) -> bytes:
                """The assignment, with the new session's reset token."""
                return (p.assignment or Assignment()).encode(reset_token(key, index))

            p.secure.response_extra_for = extra_for
            p.native = NativeEndpoint(secure=p.secure, **self._endpoint_args)
        return p.secure

    def index(self, p: HubPeer) -> None:
        """Map the session indices the peer's channel answers to (after its events)."""
        if p.secure is None:
            return
        now_idx = set(p.secure.local_indices())
        if now_idx == p.indices:
            return
        by_index = self.by_index
        for i in p.indices - now_idx:
            if by_index.get(i) is p:
                del by_index[i]
        for i in now_idx - p.indices:
            by_index[i] = p
        p.indices = now_idx

    def drain(self, p: HubPeer) -> tuple[list[bytes], list[Any]]:
        """What the peer's session has to send and say (liveness events, then the
        channel's), after re-indexing it; an EXIT from the client ended the session."""
        native = p.native
        if native is None:
            return [], []
        msgs = native.messages_to_send()
        events: list[Any] = []
        exited = False
        while (ev := native.next_event()) is not None:
            events.append(ev)
            if type(ev) is PeerDown and ev.reason == "exit":
                exited = True
        secure = p.secure
        if secure is not None:
            while (sev := secure.next_event()) is not None:
                events.append(sev)
            self.index(p)
        if exited:
            self.end_session(p)
        return msgs, events

    def end_session(self, p: HubPeer) -> None:
        """Forget a peer's session (it said it stops); its next handshake starts anew.
        Its address stays known (status, hooks) but no longer routes datagrams."""
        self._unindex(p)
        p.raw = None
        p.past_handshakes = p.handshakes
        p.native = None
        p.secure = None
        p.started = False

    def forget(self, p: HubPeer) -> None:
        """The peer left the table: its datagrams and sessions route nowhere."""
        self._unindex(p)
        p.native = None
        p.secure = None

    def clear(self) -> None:
        """Every peer without a session or an address (the hub stopped)."""
        for p in self.table.peers.values():
            p.native = None
            p.secure = None
            p.started = False
            p.addr = None
            p.raw = None
            p.indices = set()
        self.by_raw.clear()
        self.by_index.clear()
        self._moves.clear()
        self._out.clear()

    def _unindex(self, p: HubPeer) -> None:
        for i in p.indices:
            if self.by_index.get(i) is p:
                del self.by_index[i]
        p.indices = set()
        if p.raw is not None and self.by_raw.get(p.raw) is p:
            del self.by_raw[p.raw]

    def connections(self) -> list[HubPeer]:
        """The peers with a session."""
        return [p for p in self.table.peers.values() if p.native is not None]

    # ------------------------------------------------------------------ out
    def has_output(self) -> bool:
        return bool(self._out or self._moves)

    def datagrams_to_send(self) -> list[tuple[bytes, Any]]:
        """Cookie replies and session resets, each with the address it answers."""
        out, self._out = self._out, []
        return out

    def moves(self) -> list[tuple[HubPeer, Any]]:
        """Peers that moved since the last call, each with its previous address (None:
        its first); :attr:`HubPeer.raw` / ``addr`` are the new ones."""
        out, self._moves = self._moves, []
        return out


__all__ = ["INIT_BACKLOG", "INIT_LEN", "PEER_QUEUE", "NativeHubAcceptor"]
