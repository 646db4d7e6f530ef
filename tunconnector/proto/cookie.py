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
from collections.abc import Hashable

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
                 "_window", "_count", "_loaded_until", "replies", "refused", "throttled",
                 "reply_rate", "reply_burst", "_tokens", "_tokens_at", "_aeads")

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
        self._loaded_until = float("-inf")
        #: cookie replies sent, and initiations refused for a missing or bad mac2
        self.replies = 0
        self.refused = 0

    def note_initiation(self, now: float) -> None:
        """Count one initiation with a valid ``mac1`` (the load measure)."""
        if now - self._window >= 1.0:
            self._window = now
            self._count = 0
        self._count += 1
        if self._count > self.threshold:
            self._loaded_until = now + 1.0  # stay under load a second past the burst

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


__all__ = ["COOKIE_LEN", "REPLY_LEN", "CookieChecker", "CookieJar", "cookie_key", "mac2_of"]
