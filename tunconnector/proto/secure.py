"""SecureChannel: handshake, keypair rotation and AEAD data for one tunnel, sans I/O.

One object per tunnel (not per path), driven by the caller's clock ``now``:

- :meth:`SecureChannel.seal` / :meth:`seal_into` turn a frame into an encrypted native
  message, or queue it (bounded) while a handshake runs;
- :meth:`SecureChannel.open` / :meth:`open_into` take any received native message: data
  comes back as plaintext, handshake messages are consumed (``None``), everything that
  fails a check is dropped silently and counted in :attr:`SecureChannel.drops`;
- :meth:`datagrams_to_send` returns handshake messages and frames flushed from the queue;
  :meth:`handle_timer` / :meth:`get_timer` drive retransmission, rekey and expiry;
  :meth:`next_event` reports state changes (one log line each).

Handshake (Noise ``NNpsk0`` with a PSK, ``IKpsk2`` with static keys), on the wire::

    HANDSHAKE_INIT  header(session = sender index) || noise msg 1 || mac1[16]
    HANDSHAKE_RESP  header(session = receiver index) || noise msg 2 || mac1[16]

``mac1`` is keyed BLAKE2s over everything before it, keyed from the PSK or the
receiver's static public key (WireGuard's mac1), so junk is dropped before any DH; valid
initiations are then rate-limited per source (token bucket). The initiation payload
carries a strictly increasing timestamp (replayed initiations are refused), the cipher
and whether the sender is the preferred initiator (the client), which breaks ties
between crossed initiations deterministically.

Cipher negotiation: a side configured with ``cipher = "auto"`` (``cipher_auto``) sends
its preference with the ``CIPHER_AUTO`` flag and accepts the other side's choice; an
explicit cipher is never overridden. The responder picks: an explicit responder its
own cipher (when the initiator is flexible), a flexible responder the initiator's; the
response carries the pick. Two explicit, different ciphers are a mismatch (reported,
not guessed). Both ciphers are 256-bit AEADs, so neither choice is a downgrade; the
cipher id travels inside the Noise payload (encrypted and authenticated).

Keypairs rotate as in WireGuard: ``previous`` (still accepted), ``current`` (used to
send), ``next`` (a responder's fresh keypair, used once the initiator sent on it), so a
rekey loses no packet in flight. Counter nonces are never reused; a keypair is not used
past ``reject_after_time`` or the counter limit.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..errors import CryptoError, RemoteProtocolError
from .assign import reset_token_of
from .cookie import (
    BAD_MAC,
    REPLY_LEN,
    Accept,
    CookieChecker,
    CookieJar,
    InitiationScreen,
    Reply,
    cookie_key,
    reply_session,
)
from .framing import FLAG_ENCRYPTED, HEADER, HEADER_LEN, VERSION, Header, MsgType
from .noise import DHLEN, TAGLEN, HandshakeState, blake2s, public_bytes
from .replay import REJECT_AFTER_MESSAGES
from .reset import reset_matches
from .session import CIPHER_NAMES, CIPHERS, REKEY_AFTER_MESSAGES, TAG_LEN, Keypair

PROLOGUE = b"tunconnector native v1"
MAC_LEN = 16
_INIT_PAYLOAD = struct.Struct("!QBB")  # timestamp ns, cipher id, flags
_RESP_PAYLOAD = struct.Struct("!IB")  # responder's index, cipher id
_FLAG_PREFERRED = 0x01
_FLAG_CIPHER_AUTO = 0x02  # the sender takes whichever cipher the peer picks

#: overhead of an encrypted native message over its plaintext
OVERHEAD = HEADER_LEN + TAG_LEN


# -- events ---------------------------------------------------------------------------

_INDEX_COUNTER = struct.Struct("!IQ")  # session index, counter (header bytes 4-16)


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """A session is up (first one, or again after the keys had expired)."""

    initiator: bool


@dataclass(frozen=True, slots=True)
class Rekeyed:
    """A new keypair replaced the current one; the old one still decrypts late packets."""

    initiator: bool


@dataclass(frozen=True, slots=True)
class AuthFailure:
    """Authentication failed (throttled per reason): ``reason`` is a drop-counter key."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class SessionExpired:
    """The current keypair aged past ``reject_after_time`` with no replacement."""


@dataclass(frozen=True, slots=True)
class SessionReset:
    """The responder says it lost our session (authenticated by its reset token): the
    keypair is gone and a new handshake has started."""


@dataclass(frozen=True, slots=True)
class Assigned:
    """The responder (a hub) sent configuration with its handshake response."""

    payload: bytes


Event = HandshakeComplete | Rekeyed | AuthFailure | SessionExpired | Assigned | SessionReset

#: longest extra payload a handshake response may carry (a hub's assignment)
MAX_RESPONSE_EXTRA = 8192


# -- rate limiter ---------------------------------------------------------------------

class TokenBucketLimiter:
    """Per-source token buckets for handshake initiations (source: any hashable)."""

    __slots__ = ("rate", "burst", "_buckets", "max_sources")

    def __init__(self, rate: float = 20.0, burst: float = 5.0, max_sources: int = 4096) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def allow(self, source: Hashable, now: float) -> bool:
        tokens, last = self._buckets.get(source, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[source] = (tokens, now)
            return False
        if len(self._buckets) >= self.max_sources and source not in self._buckets:
            self._gc(now)
        self._buckets[source] = (tokens - 1.0, now)
        return True

    def _gc(self, now: float) -> None:
        full = self.burst / self.rate
        for k in [k for k, (_, last) in self._buckets.items() if now - last > full]:
            del self._buckets[k]
        if len(self._buckets) >= self.max_sources:  # still full: forget everyone
            self._buckets.clear()


class HandshakeGuard:
    """Responder-side replay and flood state, shareable by the channels of one tunnel.

    A TCP server makes one channel per connection; sharing the guard means a captured
    initiation replayed over a new connection is still refused (its timestamp is old),
    and the per-source rate limit holds across connections.
    """

    __slots__ = ("limiter", "last_timestamp", "cookies")

    def __init__(self, limiter: TokenBucketLimiter | None = None,
                 cookies: CookieChecker | None = None) -> None:
        self.limiter = limiter if limiter is not None else TokenBucketLimiter()
        self.last_timestamp = 0
        #: cookie replies under load; only set by an adapter that sends
        #: :attr:`SecureChannel.cookie_out` to each reply's source address after every
        #: received datagram (a UDP server: nothing else drains that list)
        self.cookies = cookies


# -- the channel ----------------------------------------------------------------------

class _Pending:
    """An initiation we sent and wait a response for."""

    __slots__ = ("index", "hs", "sent", "mac1")

    def __init__(self, index: int, hs: HandshakeState, sent: float, mac1: bytes = b"") -> None:
        self.index = index
        self.hs = hs
        self.sent = sent
        self.mac1 = mac1

    def __repr__(self) -> str:
        return f"_Pending(index={self.index:#010x})"


class SecureChannel:
    """Encryption state of one tunnel: see the module docstring."""

    #: first retransmission delay; doubles per attempt up to ``max_retransmit``
    rekey_timeout = 1.0
    max_retransmit = 8.0
    #: attempts without a response before an AuthFailure("no_response") is reported
    unanswered_report_after = 2
    #: the keypair's responder rekeys this much later than its initiator would
    responder_rekey_factor = 1.2
    #: keypairs are refused after ``rekey_after_time * reject_factor``
    reject_factor = 1.5
    auth_failure_interval = 10.0

    def __init__(
        self,
        *,
        initiator: bool,
        psk: bytes | None = None,
        private_key: bytes | None = None,
        peer_public_key: bytes | None = None,
        cipher: str = "chacha20-poly1305",
        cipher_auto: bool = False,
        rekey_after_time: float = 120.0,
        rekey_after_bytes: int = 1 << 36,
        queue_limit: int = 256,
        stale_after: float = 15.0,
        clock_offset: float = 0.0,
        limiter: TokenBucketLimiter | None = None,
        guard: HandshakeGuard | None = None,
        ephemeral_factory: Callable[[], X25519PrivateKey] | None = None,
    ) -> None:
        if cipher not in CIPHERS:
            raise CryptoError(f"unknown cipher {cipher!r} (chacha20-poly1305 | aes-256-gcm)")
        if psk is not None and len(psk) != 32:
            raise CryptoError("the pre-shared key must be 32 bytes")
        if private_key is not None:
            if peer_public_key is None:
                raise CryptoError("public-key mode needs the peer's public key")
            if len(private_key) != 32 or len(peer_public_key) != 32:
                raise CryptoError("X25519 keys are 32 bytes")
            self._static: X25519PrivateKey | None = X25519PrivateKey.from_private_bytes(
                private_key
            )
            self._peer_static: bytes | None = bytes(peer_public_key)
            self.pattern = "IKpsk2"
            self._psk = bytes(psk) if psk is not None else bytes(32)
            own = public_bytes(self._static)
            self._mac_in = _mac_key(own, self._psk)
            self._mac_out = _mac_key(self._peer_static, self._psk)
        elif psk is not None:
            self._static = None
            self._peer_static = None
            self.pattern = "NNpsk0"
            self._psk = bytes(psk)
            self._mac_in = self._mac_out = _mac_key(b"psk", self._psk)
        else:
            raise CryptoError("encryption needs a pre-shared key or a private key")
        self.initiator = initiator
        #: the cipher of the newest session (before any: the configured or preferred one)
        self.cipher = cipher
        self._cipher_id = CIPHERS[cipher]
        self.cipher_auto = cipher_auto
        self.rekey_after_time = rekey_after_time
        self.reject_after_time = rekey_after_time * self.reject_factor
        self.rekey_after_bytes = rekey_after_bytes
        self.queue_limit = queue_limit
        #: data sent but nothing authenticated received for this long: handshake again
        #: (the peer restarted and lost its keys); the tunnel's keepalives guarantee
        #: traffic both ways, so such silence means trouble
        self.stale_after = stale_after
        self._unanswered_since: float | None = None
        self.clock_offset = clock_offset
        self.guard = guard if guard is not None else HandshakeGuard(limiter)
        self.limiter = self.guard.limiter
        self._ephemeral_factory = ephemeral_factory
        self._init_len = HEADER_LEN + self._msg1_len() + MAC_LEN
        self._resp_len = HEADER_LEN + DHLEN + _RESP_PAYLOAD.size + TAGLEN + MAC_LEN

        self.previous: Keypair | None = None
        self.current: Keypair | None = None
        self.next: Keypair | None = None
        self._by_index: dict[int, Keypair] = {}
        self._pending: _Pending | None = None
        #: the initiation before the pending one: its response is still taken when it
        #: arrives after our retransmission (a slow responder, a loaded machine), so a
        #: retransmission never turns a good response into a stale one
        self._previous_pending: _Pending | None = None
        self._attempts = 0
        self._retransmit_at: float | None = None
        self._wakeup_at: float | None = None
        self._want_session = False
        self._last_ts_sent = 0
        self._queue: collections.deque[tuple[bytes, int, int]] = collections.deque()
        self._out: list[bytes] = []
        self._events: collections.deque[Event] = collections.deque()
        self._last_auth_report: dict[str, float] = {}
        #: drop counters by reason (never raises on remote garbage)
        self.drops: collections.Counter[str] = collections.Counter()
        self.handshakes = 0
        self.rekeys = 0
        #: work done for received initiations: ``dh``, those that passed the screen and
        #: cost a Diffie-Hellman (status: ``initiations_processed``)
        self.counters: collections.Counter[str] = collections.Counter()
        #: source of the last authenticated message (roaming: where the peer is now)
        self.authenticated_source: Hashable | None = None
        self.last_authenticated: float | None = None
        # cookies (see proto/cookie.py): ours as initiator, replies we owe as responder
        self._cookie_key_in = cookie_key(self._mac_in)
        self._cookie_key_out = cookie_key(self._mac_out)
        self._jar = CookieJar()
        self._last_mac1 = b""
        self._last_had_mac2 = False
        #: COOKIE_REPLY messages to send, each to its own (source) address
        self.cookie_out: list[tuple[bytes, Hashable]] = []
        self._screen: InitiationScreen | None = None
        #: appended to our handshake responses (a hub's assignment, proto/assign.py)
        self.response_extra = b""
        #: when set, builds that extra per response from our new session index (a hub
        #: adds the session's reset token, proto/reset.py); else ``response_extra``
        self.response_extra_for: Callable[[int], bytes] | None = None
        #: called with what a hub appended to its response (besides the Assigned event,
        #: for adapters that do not drain events of that type)
        self.on_assigned: Callable[[bytes], None] | None = None

    def __repr__(self) -> str:
        state = "up" if self.current is not None else "down"
        return f"SecureChannel({self.pattern}, {self.cipher}, {state}, drops={dict(self.drops)})"

    # -- public: lifecycle -----------------------------------------------------------
    def start(self, now: float) -> None:
        """Initiator: start the first handshake now (and keep a session up from then on)."""
        if not self.initiator:
            return
        self._want_session = True
        if self._pending is None and self._sendable(now) is None:
            self._begin_handshake(now)

    def force_rekey(self, now: float) -> None:
        """Start a new handshake now (tests, operator request)."""
        if self._pending is None:
            self._begin_handshake(now)

    @property
    def established(self) -> bool:
        return self.current is not None

    def session_age(self, now: float) -> float | None:
        return None if self.current is None else now - self.current.created

    def stats(self, now: float) -> dict[str, object]:
        """Status/metrics view: counts and ages, never key material."""
        return {
            "mode": "psk" if self.pattern == "NNpsk0" else "public-key",
            "cipher": self.cipher,
            "established": self.established,
            "session_age": self.session_age(now),
            "handshakes": self.handshakes,
            "rekeys": self.rekeys,
            "initiations_processed": self.counters["dh"],
            "queued": len(self._queue),
            "drops": dict(self.drops),
        }

    # -- public: sending -------------------------------------------------------------
    def seal(
        self, frame: bytes | bytearray | memoryview, now: float, *,
        mtype: int = MsgType.DATA, path: int = 0, flags: int = 0,
    ) -> bytes | None:
        """Encrypt ``frame`` into one native message, or queue it (``None``).

        Messages with extra ``flags`` (GSO super-packets) are not queued while no session
        exists: they are dropped and counted (``no_session``); TCP inside retransmits.
        """
        kp = self._sendable(now)
        if kp is None:
            if flags:
                self.drops["no_session"] += 1
                if self._pending is None and self._may_initiate():
                    self._begin_handshake(now)
                return None
            self._enqueue(bytes(frame), mtype, path, now)
            return None
        msg = kp.seal(frame, mtype=mtype, path=path, flags=flags)
        self._after_send(kp, now)
        return msg

    def seal_many(self, frames: list[bytes], now: float, *, flags: int = 0
                  ) -> list[bytearray] | None:
        """:meth:`seal` for a batch of DATA frames under the current keypair, or None
        (nothing done) when the batch cannot all go now: the caller then seals frame by
        frame, which queues or drops and starts a handshake as :meth:`seal` does."""
        kp = self._sendable(now)
        if kp is None or kp.send_counter + len(frames) >= REJECT_AFTER_MESSAGES:
            return None
        msgs = kp.seal_many(frames, mtype=MsgType.DATA, flags=flags)
        self._after_send(kp, now)
        return msgs

    def seal_into(
        self, buf: bytearray | memoryview, length: int, now: float, *,
        mtype: int = MsgType.DATA, path: int = 0, flags: int = 0,
    ) -> int:
        """In-place variant: frame at ``buf[16:16+length]``, 16 bytes of tail-room after.

        Returns the message length (header written at ``buf[0:16]``), or 0 when the frame
        was copied into the handshake queue (or, with extra ``flags``, dropped as in
        :meth:`seal`).
        """
        kp = self._sendable(now)
        if kp is None:
            if flags:
                self.seal(b"", now, flags=flags)  # counts no_session, starts a handshake
                return 0
            self._enqueue(bytes(buf[HEADER_LEN:HEADER_LEN + length]), mtype, path, now)
            return 0
        n = kp.seal_into(buf, length, mtype=mtype, path=path, flags=flags)
        self._after_send(kp, now)
        return n

    def has_output(self) -> bool:
        """Datagrams or events are waiting to be collected."""
        return bool(self._out) or bool(self._events)

    @property
    def unanswered_since(self) -> float | None:
        """When we first sent without hearing back (the stale-session timer's start)."""
        return self._unanswered_since

    def datagrams_to_send(self) -> list[bytes]:
        """Handshake messages and queued frames sealed since the last call."""
        out, self._out = self._out, []
        return out

    # -- public: receiving -----------------------------------------------------------
    def open(
        self, message: bytes | bytearray | memoryview, header: Header, now: float,
        source: Hashable = None,
    ) -> bytes | None:
        """Process one received native message; plaintext for data, else ``None``."""
        if header.flags & FLAG_ENCRYPTED:
            view = self.open_into(bytearray(message), header, now, source=source)
            return None if view is None else bytes(view)
        self._handle_plain(memoryview(message), header, now, source)
        return None

    def open_into(
        self, message: bytearray | memoryview, header: Header, now: float, *,
        source: Hashable = None, out: memoryview | None = None,
    ) -> memoryview | None:
        """Like :meth:`open`, decrypting in place (or into ``out``); returns a view.

        An empty DATA message is a keepalive: consumed, ``None``.
        """
        mv = memoryview(message)
        if not header.flags & FLAG_ENCRYPTED:
            self._handle_plain(mv, header, now, source)
            return None
        kp = self._by_index.get(header.session)
        if kp is None:
            self.drops["unknown_session"] += 1
            return None
        if now >= kp.created + self.reject_after_time:
            self.drops["expired"] += 1
            return None
        plain = self._open_with(kp, mv, header.counter, now, source, out)
        if plain is None:
            return None
        if kp is self.next:
            self._promote_next(now)
        if header.type == MsgType.DATA and len(plain) == 0:
            return None
        return plain

    def open_data(self, message: bytes, now: float, source: Hashable = None) -> Any:
        """Lean :meth:`open_into` for one encrypted DATA message of a live session.

        Returns the plaintext (a view; empty for a keepalive), ``None`` when the message
        was dropped and counted (replay, forgery), or ``False`` when it is not a DATA
        message of a session this side still accepts: then nothing happened and the
        caller takes its general path. For the quick decoders of the data path and the
        latency lanes (``NativeEndpoint.quick``).
        """
        session, counter = _INDEX_COUNTER.unpack_from(message, 4)
        kp = self._by_index.get(session)
        if kp is None or now >= kp.created + self.reject_after_time or kp is self.next:
            return False
        return self._open_with(kp, memoryview(bytearray(message)), counter, now, source)

    def _open_with(self, kp: Keypair, mv: memoryview, counter: int, now: float,
                   source: Hashable, out: memoryview | None = None) -> memoryview | None:
        """Decrypt with ``kp``; a failure is counted (None), a success proves the peer."""
        try:
            plain = kp.open_into(mv, counter, out)
        except RemoteProtocolError as exc:
            self.drops[exc.reason] += 1
            return None
        self.authenticated_source = source
        self.last_authenticated = now
        self._unanswered_since = None
        return plain

    # -- public: timers and events ---------------------------------------------------
    def get_timer(self) -> float | None:
        times: list[float] = []
        if self._pending is not None and self._retransmit_at is not None:
            times.append(self._retransmit_at)
        for kp in (self.previous, self.current, self.next):
            if kp is not None:
                times.append(kp.created + self.reject_after_time)
        due = self._rekey_due()
        if due is not None:
            times.append(due)
        if self._wakeup_at is not None:
            times.append(self._wakeup_at)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self._wakeup_at is not None and now >= self._wakeup_at:
            self._wakeup_at = None
        self._expire(now)
        if self._pending is not None:
            if self._retransmit_at is not None and now >= self._retransmit_at:
                self._retransmit(now)
        else:
            due = self._rekey_due()
            if due is not None and now >= due:
                self._unanswered_since = None
                self._begin_handshake(now)
            elif self.current is None and self._want_session and (
                self.next is None or now >= self.next.created + self.max_retransmit
            ):  # no session, and no keypair we answered with is about to be confirmed
                self._begin_handshake(now)

    def _may_initiate(self) -> bool:
        """The client always may; the server only to renew a session it still has."""
        return self.initiator or self._want_session or self.current is not None

    def _rekey_due(self) -> float | None:
        """When the current keypair should be renewed (age, or unanswered sends)."""
        cur = self.current
        if cur is None or self._pending is not None or self.next is not None:
            return None  # nothing to renew, or a renewal is already under way
        due = cur.created + self._rekey_age(cur)
        if self._unanswered_since is not None:
            due = min(due, self._unanswered_since + self.stale_after)
        return due

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    # -- internals: sending ----------------------------------------------------------
    def _sendable(self, now: float) -> Keypair | None:
        kp = self.current
        if kp is None or kp.exhausted or now >= kp.created + self.reject_after_time:
            return None
        return kp

    def _after_send(self, kp: Keypair, now: float) -> None:
        if self._unanswered_since is None:
            self._unanswered_since = now
        if self._pending is not None:
            return
        if (
            kp.sent_bytes >= self.rekey_after_bytes
            or kp.send_counter >= REKEY_AFTER_MESSAGES
            or (kp.initiator and now >= kp.created + self.rekey_after_time)
        ):
            self._begin_handshake(now)

    def _enqueue(self, frame: bytes, mtype: int, path: int, now: float) -> None:
        if frame or mtype != MsgType.DATA:  # a stale keepalive is worthless: not queued
            if len(self._queue) >= self.queue_limit:
                self._queue.popleft()
                self.drops["queue_full"] += 1
            self._queue.append((frame, mtype, path))
        if self._pending is None and self._may_initiate():
            self._begin_handshake(now)

    def _flush_queue(self, now: float) -> None:
        kp = self._sendable(now)
        if kp is None:
            return
        while self._queue:
            frame, mtype, path = self._queue.popleft()
            self._out.append(kp.seal(frame, mtype=mtype, path=path))

    def _rekey_age(self, kp: Keypair) -> float:
        if kp.initiator:
            return self.rekey_after_time
        return self.rekey_after_time * self.responder_rekey_factor

    # -- internals: handshake --------------------------------------------------------
    def _msg1_len(self) -> int:
        n = DHLEN + _INIT_PAYLOAD.size + TAGLEN
        if self.pattern == "IKpsk2":
            n += DHLEN + TAGLEN
        return n

    def _new_index(self) -> int:
        while True:
            idx = secrets.randbits(32)
            if idx and idx not in self._by_index and all(
                p is None or p.index != idx for p in (self._pending, self._previous_pending)
            ):
                return idx

    def _handshake_state(self, initiator: bool) -> HandshakeState:
        eph = self._ephemeral_factory() if self._ephemeral_factory is not None else None
        return HandshakeState(
            self.pattern,
            initiator=initiator,
            prologue=PROLOGUE,
            static=self._static,
            remote_static=self._peer_static if initiator else None,
            psk=self._psk,
            ephemeral=eph,
        )

    def _timestamp(self, now: float) -> int:
        ts = max(int((now + self.clock_offset) * 1e9), self._last_ts_sent + 1)
        self._last_ts_sent = ts
        return ts

    def _begin_handshake(self, now: float) -> None:
        self._attempts = 0
        self._send_initiation(now)

    def _send_initiation(self, now: float) -> None:
        index = self._new_index()
        hs = self._handshake_state(True)
        flags = _FLAG_PREFERRED if self.initiator else 0
        if self.cipher_auto:
            flags |= _FLAG_CIPHER_AUTO
        payload = _INIT_PAYLOAD.pack(self._timestamp(now), self._cipher_id, flags)
        body = hs.write_message(payload)
        msg = self._initiation_with_macs(
            HEADER.pack(VERSION, MsgType.HANDSHAKE_INIT, 0, 0, index, 0) + body, now
        )
        self._previous_pending = self._pending
        self._pending = _Pending(index, hs, now, self._last_mac1)
        delay = min(self.rekey_timeout * (2 ** self._attempts), self.max_retransmit)
        self._retransmit_at = now + delay
        self._out.append(msg)

    def _retransmit(self, now: float) -> None:
        self._attempts += 1
        if self._attempts == self.unanswered_report_after:
            self._auth_failure(
                "no_response",
                f"no valid handshake response after {self._attempts} attempts: peer down, "
                "or its key or cipher differs (unauthenticated handshakes get no reply)",
                now,
            )
        if not self.initiator and self._sendable(now) is None:
            # a server only re-initiates while it still has a live session to the peer
            self._pending = self._previous_pending = None
            self._retransmit_at = None
            return
        self._send_initiation(now)

    def _with_mac(self, data: bytes) -> bytes:
        return data + hashlib.blake2s(data, key=self._mac_out, digest_size=MAC_LEN).digest()

    def _initiation_with_macs(self, data: bytes, now: float) -> bytes:
        """mac1, and mac2 when we hold a fresh cookie from the responder."""
        msg = self._with_mac(data)
        self._last_mac1 = msg[-MAC_LEN:]
        mac2 = self._jar.mac2(msg, now)
        self._last_had_mac2 = mac2 is not None
        return msg if mac2 is None else msg + mac2

    def _mac_ok(self, msg: memoryview) -> bool:
        want = hashlib.blake2s(msg[:-MAC_LEN], key=self._mac_in, digest_size=MAC_LEN).digest()
        return hmac.compare_digest(want, msg[-MAC_LEN:])

    def _handle_plain(self, msg: memoryview, header: Header, now: float, source: Hashable) -> None:
        t = header.type
        if t == MsgType.HANDSHAKE_INIT:
            self._on_initiation(msg, header, now, source)
        elif t == MsgType.HANDSHAKE_RESP:
            self._on_response(msg, header, now, source)
        elif t == MsgType.COOKIE_REPLY:
            self._on_cookie_reply(msg, now)
        elif t == MsgType.SESSION_RESET:
            self._on_reset(msg, header, now)
        else:
            self.drops["plaintext"] += 1

    @property
    def screen(self) -> InitiationScreen:
        """What an initiation passes before its DH: the guard's cookies and limiter with
        our keys; the MAC before any throttle, the rate limit always. Made at the first
        initiation (a hub's channels never screen one: the hub does)."""
        if self._screen is None:
            self._screen = InitiationScreen(
                init_len=self._init_len, mac_keys=(self._mac_in,),
                cookies=self.guard.cookies, limiter=self.limiter,
                cookie_key=self._cookie_key_in, throttle_before_mac=False, limit_always=True,
            )
        return self._screen

    def _on_initiation(
        self, msg: memoryview, header: Header, now: float, source: Hashable
    ) -> None:
        verdict = self.screen.check(msg, source, now)
        if not isinstance(verdict, Accept):
            self.drops[verdict.reason] += 1
            if isinstance(verdict, Reply):
                self.cookie_out.append((verdict.packet, source))
            elif verdict == BAD_MAC:
                self._auth_failure(
                    "bad_mac",
                    "handshake initiation failed the MAC check: "
                    "the sender uses a different key (or forged it)",
                    now,
                )
            return
        self.counters["dh"] += 1
        hs = self._handshake_state(False)
        try:
            payload = hs.read_message(bytes(verdict.body[HEADER_LEN:-MAC_LEN]))
        except RemoteProtocolError as exc:
            self._handshake_failed(exc, now)
            return
        self.accept_initiation(hs, payload, header.session, now, source)

    def accept_initiation(self, hs: HandshakeState, payload: bytes, sender_index: int,
                          now: float, source: Hashable) -> None:
        """Go on with an initiation whose first message ``hs`` has read (``payload``).

        A hub reads the initiation itself to learn which peer's static key sent it,
        then hands it to that peer's channel here: one DH pass, not two.
        """
        if self._peer_static is not None and hs.rs != self._peer_static:
            self.drops["unknown_peer"] += 1
            self._auth_failure("unknown_peer", "handshake from an unknown static key", now)
            return
        hs.set_psk(self._psk)
        if len(payload) != _INIT_PAYLOAD.size:
            self.drops["handshake_failed"] += 1
            return
        ts, cipher_id, flags = _INIT_PAYLOAD.unpack(payload)
        if cipher_id in CIPHER_NAMES and cipher_id != self._cipher_id and self.cipher_auto:
            chosen = cipher_id  # flexible here: the initiator's cipher
        elif cipher_id != self._cipher_id and flags & _FLAG_CIPHER_AUTO:
            chosen = self._cipher_id  # flexible there: ours
        else:
            chosen = cipher_id
        if chosen != self._cipher_id and not self.cipher_auto or chosen not in CIPHER_NAMES:
            self.drops["cipher_mismatch"] += 1
            peer = CIPHER_NAMES.get(cipher_id, f"#{cipher_id}")
            self._auth_failure(
                "cipher_mismatch", f"peer uses cipher {peer}, this side {self.cipher}", now
            )
            return
        if ts <= self.guard.last_timestamp:
            self.drops["replay"] += 1
            return
        self.guard.last_timestamp = ts
        pending = self._pending
        if pending is not None:
            mine = (self.initiator, pending.hs.ephemeral_public or b"")
            theirs = (bool(flags & _FLAG_PREFERRED), hs.re or b"")
            if mine > theirs:  # crossed initiations: ours wins, the peer will answer it
                self.drops["crossed_initiation"] += 1
                return
            self._pending = self._previous_pending = None
            self._retransmit_at = None
            # if the peer never confirms the keypair we answer with, try again ourselves
            self._wakeup_at = now + self.max_retransmit
        index = self._new_index()
        extra = (self.response_extra if self.response_extra_for is None
                 else self.response_extra_for(index))
        body = hs.write_message(_RESP_PAYLOAD.pack(index, chosen) + extra)
        k_init_to_resp, k_resp_to_init = hs.split()
        self.cipher = CIPHER_NAMES[chosen]
        kp = Keypair(
            local_index=index, remote_index=sender_index, send_key=k_resp_to_init,
            recv_key=k_init_to_resp, initiator=False, created=now, cipher=self.cipher,
        )
        self._forget(self.next)
        self._forget(self.previous)
        self.previous = None
        self.next = kp
        self._by_index[index] = kp
        self.authenticated_source = source
        self.last_authenticated = now
        self._out.append(
            self._with_mac(
                HEADER.pack(VERSION, MsgType.HANDSHAKE_RESP, 0, 0, sender_index, 0) + body
            )
        )

    def _on_cookie_reply(self, msg: memoryview, now: float) -> None:
        """A responder under load asks for mac2: take the cookie, initiate again now."""
        pending = self._matching_pending(reply_session(msg)) if len(msg) == REPLY_LEN else None
        if pending is None:
            self.drops["stale_cookie"] += 1
            return
        if not self._jar.consume(msg, pending.mac1, self._cookie_key_out, now):
            self.drops["bad_cookie"] += 1
            return
        if not self._last_had_mac2:  # one retry per cookie: no loop with a broken peer
            self._send_initiation(now)

    def _on_reset(self, msg: memoryview, header: Header, now: float) -> None:
        """The responder lost the session ``header.session`` names: drop that keypair
        and handshake again now. Only its token (from the encrypted response) counts."""
        for kp in (self.current, self.previous):
            if kp is not None and kp.remote_index == header.session and reset_matches(
                    msg, kp.reset_token):
                break
        else:
            self.drops["bad_reset"] += 1
            return
        self._forget(kp)
        if kp is self.current:
            self.current = None
        else:
            self.previous = None
        self._unanswered_since = None
        self._events.append(SessionReset())
        if self._pending is None and self._may_initiate():
            self._begin_handshake(now)

    def seal_exit(self, now: float) -> bytes | None:
        """An EXIT message under the current session (None without one): the peer
        learns at once that we stop. Never queued."""
        kp = self._sendable(now)
        if kp is None:
            return None
        return kp.seal(b"", mtype=MsgType.EXIT)

    def local_indices(self) -> list[int]:
        """Session indices that address this channel (a hub maps them to the peer)."""
        out = list(self._by_index)
        out += [p.index for p in (self._pending, self._previous_pending) if p is not None]
        return out

    def _matching_pending(self, index: int) -> _Pending | None:
        for p in (self._pending, self._previous_pending):
            if p is not None and p.index == index:
                return p
        return None

    def _on_response(
        self, msg: memoryview, header: Header, now: float, source: Hashable
    ) -> None:
        if not self._resp_len <= len(msg) <= self._resp_len + MAX_RESPONSE_EXTRA:
            self.drops["truncated"] += 1
            return
        pending = self._matching_pending(header.session)
        if pending is None:
            self.drops["stale_response"] += 1
            return
        if not self._mac_ok(msg):
            self.drops["bad_mac"] += 1
            self._auth_failure(
                "bad_mac",
                "handshake response failed the MAC check: "
                "the peer uses a different key (or forged it)",
                now,
            )
            return
        try:
            payload = pending.hs.read_message(bytes(msg[HEADER_LEN:-MAC_LEN]))
        except RemoteProtocolError as exc:
            # the state advanced past its turn: this initiation is spent, send a new one
            self._handshake_failed(exc, now)
            self._send_initiation(now)
            return
        remote_index, cipher_id = _RESP_PAYLOAD.unpack_from(payload)
        extra = payload[_RESP_PAYLOAD.size:]
        if remote_index == 0 or cipher_id not in CIPHER_NAMES or (
                cipher_id != self._cipher_id and not self.cipher_auto):
            self.drops["cipher_mismatch"] += 1
            return
        k_init_to_resp, k_resp_to_init = pending.hs.split()
        self.cipher = CIPHER_NAMES[cipher_id]
        kp = Keypair(
            local_index=pending.index, remote_index=remote_index, send_key=k_init_to_resp,
            recv_key=k_resp_to_init, initiator=True, created=now, cipher=self.cipher,
        )
        if extra:
            kp.reset_token = reset_token_of(bytes(extra))
        self._pending = self._previous_pending = None
        self._retransmit_at = None
        self._attempts = 0
        had_session = self.current is not None
        if self.next is not None:
            self._forget(self.current)
            self._forget(self.previous)
            self.previous, self.next = self.next, None
        else:
            self._forget(self.previous)
            self.previous = self.current
        self.current = kp
        self._by_index[kp.local_index] = kp
        self.authenticated_source = source
        self.last_authenticated = now
        self._established(had_session, True)
        if extra:
            self._events.append(Assigned(bytes(extra)))
            if self.on_assigned is not None:
                self.on_assigned(bytes(extra))
        if self._queue:
            self._flush_queue(now)
        else:  # confirm the keypair to the responder at once
            self._out.append(kp.seal(b"", mtype=MsgType.DATA))

    def _promote_next(self, now: float) -> None:
        kp = self.next
        if kp is None:  # pragma: no cover - caller checked
            return
        had_session = self.current is not None
        self._forget(self.previous)
        self.previous = self.current
        self.current = kp
        self.next = None
        kp.confirmed = True
        self._established(had_session, False)
        self._flush_queue(now)

    def _established(self, had_session: bool, initiator: bool) -> None:
        self._wakeup_at = None
        self.handshakes += 1
        if had_session:
            self.rekeys += 1
            self._events.append(Rekeyed(initiator))
        else:
            self._events.append(HandshakeComplete(initiator))

    def _handshake_failed(self, exc: RemoteProtocolError, now: float) -> None:
        reason = "decrypt_failed" if exc.reason == "decrypt_failed" else "handshake_failed"
        self.drops[reason] += 1
        self._auth_failure(
            reason,
            "handshake failed to authenticate: the peer uses a different key (or forged it)",
            now,
        )

    def _auth_failure(self, reason: str, message: str, now: float) -> None:
        last = self._last_auth_report.get(reason)
        if last is not None and now - last < self.auth_failure_interval:
            return
        self._last_auth_report[reason] = now
        self._events.append(AuthFailure(reason, message))

    # -- internals: keypair bookkeeping ----------------------------------------------
    def _forget(self, kp: Keypair | None) -> None:
        if kp is not None and self._by_index.get(kp.local_index) is kp:
            del self._by_index[kp.local_index]

    def _expire(self, now: float) -> None:
        limit = self.reject_after_time
        if self.previous is not None and now >= self.previous.created + limit:
            self._forget(self.previous)
            self.previous = None
        if self.next is not None and now >= self.next.created + limit:
            self._forget(self.next)
            self.next = None
        if self.current is not None and now >= self.current.created + limit:
            self._forget(self.current)
            self.current = None
            self._events.append(SessionExpired())


def _mac_key(public: bytes, psk: bytes) -> bytes:
    return blake2s(b"tunconnector mac1", public, psk)


#: an IKpsk2 initiation on the wire: header || e || enc(s) || enc(payload) || mac1
IK_INIT_LEN = HEADER_LEN + DHLEN + (DHLEN + TAGLEN) + _INIT_PAYLOAD.size + TAGLEN + MAC_LEN


def mac1_key(public: bytes, psk: bytes | None = None) -> bytes:
    """The key an initiation's mac1 is made with, for the responder whose static public
    key is ``public`` (and the peer's PSK, if it has one)."""
    return _mac_key(public, psk if psk is not None else bytes(32))


def read_initiation(static: X25519PrivateKey, msg: bytes | memoryview
                    ) -> tuple[HandshakeState, bytes]:
    """Read the Noise message of an IKpsk2 initiation (``msg``: header to mac1) with the
    responder's static key alone: the initiator's static key is then ``hs.rs``, so a
    responder with many peers learns whose channel goes on with it
    (:meth:`SecureChannel.accept_initiation`, which mixes in that peer's PSK): one DH
    pass for the whole handshake. Raises :class:`RemoteProtocolError` on garbage."""
    hs = HandshakeState("IKpsk2", initiator=False, prologue=PROLOGUE, static=static,
                        psk=bytes(32))
    return hs, hs.read_message(bytes(msg[HEADER_LEN:-MAC_LEN]))


__all__ = [
    "IK_INIT_LEN",
    "OVERHEAD",
    "Assigned",
    "AuthFailure",
    "Event",
    "HandshakeComplete",
    "HandshakeGuard",
    "Rekeyed",
    "SecureChannel",
    "SessionExpired",
    "SessionReset",
    "TokenBucketLimiter",
    "mac1_key",
    "read_initiation",
]
