"""Cookie replies under load: WireGuard's answer to floods of valid-looking initiations.

``mac1`` only proves the sender knows the responder's public key, which is public. A
flood of initiations with a good ``mac1`` would each cost a Diffie-Hellman. So the
responder watches its load (initiations with a good ``mac1`` per second); above
``threshold`` it stops doing DH for initiations without a valid ``mac2`` and answers
them with a COOKIE_REPLY instead: cheap (no DH), no bigger than the initiation, and
useless to a sender that cannot receive at its source address. A real initiator
decrypts the cookie, resends its initiation with ``mac2`` (a MAC keyed by the cookie)
at once, and gets through; under load, initiations with a valid ``mac2`` are then
rate-limited per source address, so spoofed floods cost a MAC each and real floods from
a few addresses are bounded by the per-address budget.

Wire (all after the 16-byte native header, ``session`` = the initiator's sender index)::

    COOKIE_REPLY  header || nonce[12] || ChaCha20-Poly1305(cookie[16]) || tag[16]

The cookie is ``BLAKE2s-128(key=secret, source address)``; the secret changes every
``secret_lifetime`` seconds (2 min), so a cookie is valid for at most two periods.
The encryption key is derived from the responder's ``mac1`` key (its public key, or the
PSK), and the initiation's ``mac1`` is the associated data, so only the sender of that
initiation, knowing the responder's public key, can open it. (WireGuard uses
XChaCha20-Poly1305 with a 24-byte nonce; the ``cryptography`` package has only the
12-byte nonce variant, which is ample for random nonces at cookie rates.)
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from collections.abc import Hashable, Iterable
from dataclasses import InitVar, dataclass, field
from typing import ClassVar, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .framing import HEADER, HEADER_LEN, VERSION, MsgType
from .noise import blake2s

COOKIE_LEN = 16
MAC_LEN = 16
NONCE_LEN = 12
REPLY_LEN = HEADER_LEN + NONCE_LEN + COOKIE_LEN + 16
#: an initiator uses a cookie for this long (the responder's secret lives 120 s)
COOKIE_VALID = 110.0
_SESSION = struct.Struct("!I")


def cookie_key(mac_key: bytes) -> bytes:
    """The cookie encryption key for a responder whose ``mac1`` key is ``mac_key``."""
    return blake2s(b"tunconnector cookie", mac_key)


def source_bytes(source: Hashable) -> bytes:
    """The part of a source a cookie is bound to: the IP address (not the port)."""
    host = source[0] if isinstance(source, tuple) and source else source
    return str(host).encode()


def mac2_of(cookie: bytes, data: bytes | memoryview) -> bytes:
    return hashlib.blake2s(data, key=cookie, digest_size=MAC_LEN).digest()


class CookieChecker:
    """Responder side: load estimate, cookie generation and ``mac2`` checks."""

    __slots__ = ("threshold", "secret_lifetime", "_secret", "_previous", "_rotated",
                 "_window", "_count", "_previous_count", "_loaded_until", "replies",
                 "refused", "throttled", "reply_rate", "reply_burst", "_tokens",
                 "_tokens_at", "_aeads")

    def __init__(self, *, threshold: float = 200.0, secret_lifetime: float = 120.0,
                 reply_rate: float = 2000.0, reply_burst: float = 200.0) -> None:
        self.threshold = threshold
        #: cookie replies per second at most (each costs a sendto); beyond, initiations
        #: without a valid mac2 are dropped silently and counted (``throttled``): a real
        #: initiator retransmits within a second and gets its cookie then
        self.reply_rate = reply_rate
        self.reply_burst = reply_burst
        self._tokens = reply_burst
        self._tokens_at = 0.0
        self._aeads: dict[bytes, ChaCha20Poly1305] = {}
        self.throttled = 0
        self.secret_lifetime = secret_lifetime
        self._secret = secrets.token_bytes(32)
        self._previous: bytes | None = None
        self._rotated: float | None = None
        self._window = 0.0
        self._count = 0
        self._previous_count = 0
        self._loaded_until = float("-inf")
        #: cookie replies sent, and initiations refused for a missing or bad mac2
        self.replies = 0
        self.refused = 0

    def note_initiation(self, now: float) -> None:
        """Count one initiation with a valid ``mac1`` (the load measure).

        Counted in one-second windows; the estimate of the last second adds the part
        of the previous window's count that still lies within it (as if spread evenly
        over that window). A flood that starts late in one window is then under load as
        soon as it reaches ``threshold``, not once each in two windows (twice the DH).
        """
        elapsed = now - self._window
        if elapsed >= 1.0:
            whole = int(elapsed)
            self._previous_count = self._count if whole == 1 else 0
            self._window += whole
            self._count = 0
        self._count += 1
        carried = self._previous_count * (1.0 - (now - self._window))
        if self._count + carried > self.threshold:
            self._loaded_until = now + 1.0  # stay under load a second past the burst

    def note_backlog(self, now: float) -> None:
        """Initiations were queued faster than they are handled (many in one read): under
        load at once. The rate above is the rate handled, and a responder short of CPU
        handles few a second while its queue overflows."""
        self._loaded_until = max(self._loaded_until, now + 1.0)

    def under_load(self, now: float) -> bool:
        return now < self._loaded_until

    def _secrets(self, now: float) -> tuple[bytes, bytes | None]:
        if self._rotated is None:
            self._rotated = now
        elif now - self._rotated >= self.secret_lifetime:
            self._previous, self._secret = self._secret, secrets.token_bytes(32)
            self._rotated = now
        return self._secret, self._previous

    def cookie(self, source: Hashable, now: float) -> bytes:
        secret, _ = self._secrets(now)
        return hashlib.blake2s(source_bytes(source), key=secret, digest_size=COOKIE_LEN).digest()

    def check_mac2(self, message: bytes | memoryview, source: Hashable, now: float) -> bool:
        """Whether ``message`` (an initiation ending in mac1 || mac2) has a valid mac2."""
        if len(message) < HEADER_LEN + 2 * MAC_LEN:
            return False
        src = source_bytes(source)
        data = message[:-MAC_LEN]
        got = bytes(message[-MAC_LEN:])
        for secret in self._secrets(now):
            if secret is None:
                continue
            cookie = hashlib.blake2s(src, key=secret, digest_size=COOKIE_LEN).digest()
            if hmac.compare_digest(mac2_of(cookie, data), got):
                return True
        self.refused += 1
        return False

    def may_reply(self, now: float) -> bool:
        """Whether the reply budget allows one more cookie reply now."""
        self._tokens = min(self.reply_burst,
                           self._tokens + (now - self._tokens_at) * self.reply_rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            self.throttled += 1
            return False
        self._tokens -= 1.0
        return True

    def make_reply(self, sender_index: int, mac1: bytes, source: Hashable, now: float,
                   key: bytes) -> bytes:
        """The COOKIE_REPLY for an initiation (its sender index and its ``mac1``)."""
        nonce = secrets.token_bytes(NONCE_LEN)
        aead = self._aeads.get(key)
        if aead is None:
            if len(self._aeads) > 64:
                self._aeads.clear()
            aead = self._aeads[key] = ChaCha20Poly1305(key)
        sealed = aead.encrypt(nonce, self.cookie(source, now), bytes(mac1))
        self.replies += 1
        return HEADER.pack(VERSION, MsgType.COOKIE_REPLY, 0, 0, sender_index, 0) + nonce + sealed

    def stats(self) -> dict[str, int]:
        return {"cookie_replies": self.replies, "mac2_refused": self.refused,
                "cookie_throttled": self.throttled}


class CookieJar:
    """Initiator side: the last cookie received and when."""

    __slots__ = ("cookie", "received")

    def __init__(self) -> None:
        self.cookie: bytes | None = None
        self.received = float("-inf")

    def consume(self, message: bytes | memoryview, mac1: bytes, key: bytes, now: float) -> bool:
        """Open a COOKIE_REPLY answering the initiation whose ``mac1`` is given."""
        if len(message) != REPLY_LEN:
            return False
        nonce = bytes(message[HEADER_LEN:HEADER_LEN + NONCE_LEN])
        try:
            cookie = ChaCha20Poly1305(key).decrypt(
                nonce, bytes(message[HEADER_LEN + NONCE_LEN:]), mac1)
        except InvalidTag:
            return False
        self.cookie = cookie
        self.received = now
        return True

    def mac2(self, data: bytes, now: float) -> bytes | None:
        """``mac2`` for an initiation (everything up to and including mac1), or None
        when no fresh cookie is held."""
        if self.cookie is None or now - self.received >= COOKIE_VALID:
            return None
        return mac2_of(self.cookie, data)


def reply_session(message: bytes | memoryview) -> int:
    """The initiator's sender index a COOKIE_REPLY answers."""
    return int(_SESSION.unpack_from(message, 4)[0])


# -- screening an initiation before any Diffie-Hellman --------------------------------

class RateLimiter(Protocol):
    """Per-source budget of initiations (``secure.TokenBucketLimiter``)."""

    def allow(self, source: Hashable, now: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class Accept:
    """Worth a DH: ``body`` is the initiation up to and including mac1 (mac2 cut off)."""

    body: bytes | memoryview


@dataclass(frozen=True, slots=True)
class Drop:
    """Dropped before any DH; ``reason`` is the drop counter to count it under."""

    reason: str


@dataclass(frozen=True, slots=True)
class Reply:
    """Under load without a valid mac2: send ``packet`` (a COOKIE_REPLY) to the source."""

    packet: bytes
    #: the drop counter of an initiation answered with a cookie
    reason: ClassVar[str] = "cookie_sent"


Verdict = Accept | Drop | Reply

TRUNCATED = Drop("truncated")
BAD_MAC = Drop("bad_mac")
COOKIE_THROTTLED = Drop("cookie_throttled")
RATE_LIMITED = Drop("rate_limited")


@dataclass(slots=True, kw_only=True, eq=False)
class InitiationScreen:
    """Everything a responder checks on a HANDSHAKE_INIT before it spends a DH on it.

    In order: the length (with or without mac2), mac1 under any of the responder's
    keys, the load estimate, and under load a valid mac2 (else a cookie reply within
    the reply budget) and the per-source rate limit. Shared by the hub and the
    point-to-point channel, which differ in two switches:

    - ``throttle_before_mac`` (the hub): under load, an initiation without mac2 and
      no reply budget left is dropped before its mac1 is even computed, so a flood
      costs a length check each. Without it (the channel) such an initiation is
      MAC-checked first (a bad one counts ``bad_mac``) and feeds the load estimate.
    - ``limit_always`` (the channel): every initiation that passes is rate-limited per
      source; the hub limits only under load.

    ``source`` is what a cookie binds to and what the limiter counts: a cookie binds to
    the host only, so passing the host or the whole address gives the same cookie.
    ``cookies`` None: no load estimate and no cookies (a responder that cannot send
    replies to each source). Holds no state of its own: the checker and the limiter
    may be shared by several screens.
    """

    #: length of an initiation with mac1 and without mac2
    init_len: int
    mac_keys: InitVar[Iterable[bytes]]
    cookies: CookieChecker | None
    limiter: RateLimiter
    #: seals our cookie replies (``cookie_key`` of the responder's mac1 key); out of the
    #: repr, as keys are never logged
    cookie_key: bytes = field(repr=False)
    throttle_before_mac: bool = True
    limit_always: bool = False
    _mac_keys: list[bytes] = field(init=False, repr=False)

    def __post_init__(self, mac_keys: Iterable[bytes]) -> None:
        self._mac_keys = list(mac_keys)

    def set_mac_keys(self, keys: Iterable[bytes]) -> None:
        """The mac1 keys an initiation may use (a hub: its own, and one per peer PSK)."""
        self._mac_keys = list(keys)

    def mac1_ok(self, body: bytes | memoryview) -> bool:
        """Whether ``body`` (ending in mac1) carries a mac1 under one of our keys."""
        data, mac = body[:-MAC_LEN], body[-MAC_LEN:]
        for key in self._mac_keys:
            want = hashlib.blake2s(data, key=key, digest_size=MAC_LEN).digest()
            if hmac.compare_digest(want, mac):
                return True
        return False

    def check(self, msg: bytes | memoryview, source: Hashable, now: float) -> Verdict:
        """The verdict on one HANDSHAKE_INIT (header included) from ``source``."""
        n = len(msg)
        init_len = self.init_len
        if n == init_len:
            with_mac2 = False
        elif n == init_len + MAC_LEN:
            with_mac2 = True
        else:
            return TRUNCATED
        ck = self.cookies
        budget_taken = False
        if ck is not None and self.throttle_before_mac and not with_mac2 and ck.under_load(now):
            if not ck.may_reply(now):
                return COOKIE_THROTTLED  # a flood: not even a MAC is computed
            budget_taken = True
        body = msg[:init_len] if with_mac2 else msg
        if not self.mac1_ok(body):
            return BAD_MAC
        loaded = False
        if ck is not None:
            ck.note_initiation(now)
            loaded = ck.under_load(now)
            if loaded and (not with_mac2 or not ck.check_mac2(msg, source, now)):
                if not budget_taken and not ck.may_reply(now):
                    return COOKIE_THROTTLED
                sender = int(_SESSION.unpack_from(msg, 4)[0])
                return Reply(ck.make_reply(sender, bytes(body[-MAC_LEN:]), source, now,
                                           self.cookie_key))
        if (loaded or self.limit_always) and not self.limiter.allow(source, now):
            return RATE_LIMITED
        return Accept(body)


__all__ = ["COOKIE_LEN", "REPLY_LEN", "Accept", "CookieChecker", "CookieJar", "Drop",
           "InitiationScreen", "RateLimiter", "Reply", "Verdict", "cookie_key", "mac2_of"]
