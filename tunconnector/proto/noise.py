"""Noise handshakes (revision 34) on ``cryptography`` primitives, sans I/O.

Two patterns, both ``25519_ChaChaPoly_BLAKE2s`` (the WireGuard suite):

- ``NNpsk0``: both ends share a 32-byte key; ephemeral-ephemeral DH gives forward
  secrecy, the PSK authenticates (``-> psk, e`` / ``<- e, ee``);
- ``IKpsk2``: static X25519 keys, the initiator knows the responder's public key
  (``<- s`` / ``-> e, es, s, ss`` / ``<- e, ee, se, psk``); the PSK is optional (zeros).

The pattern tables are data; :class:`HandshakeState` walks them. Only the two-message
patterns are needed, so after the second message :meth:`HandshakeState.split` yields the
transport keys ``(initiator->responder, responder->initiator)``. Decoding failures raise
:class:`RemoteProtocolError` (counted and dropped by the caller, never fatal).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import LocalProtocolError, RemoteProtocolError

HASHLEN = 32
DHLEN = 32
TAGLEN = 16
KEYLEN = 32
_T = TypeVar("_T")
_NOISE_NONCE = struct.Struct("<4xQ")  # ChaChaPoly in Noise: 32 zero bits + LE64 counter


@dataclass(frozen=True, slots=True)
class Pattern:
    """A Noise handshake pattern as data: pre-messages and message token lists."""

    name: str
    pre_initiator: tuple[str, ...]
    pre_responder: tuple[str, ...]
    messages: tuple[tuple[str, ...], ...]

    @property
    def psk(self) -> bool:
        return any("psk" in m for m in self.messages)


PATTERNS: dict[str, Pattern] = {
    "NNpsk0": Pattern("NNpsk0", (), (), (("psk", "e"), ("e", "ee"))),
    "IKpsk2": Pattern("IKpsk2", (), ("s",), (("e", "es", "s", "ss"), ("e", "ee", "se", "psk"))),
}


def protocol_name(pattern: str) -> bytes:
    return f"Noise_{pattern}_25519_ChaChaPoly_BLAKE2s".encode()


def blake2s(*parts: bytes) -> bytes:
    h = hashlib.blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


_BLOCK = 64  # BLAKE2s block size
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def hmac_blake2s(key: bytes, data: bytes) -> bytes:
    """HMAC-BLAKE2s (RFC 2104) written out: the ``hmac`` module's generic path costs
    about four times as much per call, and a handshake makes two dozen calls."""
    if len(key) > _BLOCK:
        key = hashlib.blake2s(key).digest()
    key = key.ljust(_BLOCK, b"\0")
    inner = hashlib.blake2s(key.translate(_IPAD))
    inner.update(data)
    return hashlib.blake2s(key.translate(_OPAD) + inner.digest()).digest()


def hkdf(chaining_key: bytes, ikm: bytes, n: int) -> tuple[bytes, ...]:
    """Noise HKDF (HMAC-BLAKE2s), returning 2 or 3 outputs of HASHLEN bytes."""
    temp = hmac_blake2s(chaining_key, ikm)
    out1 = hmac_blake2s(temp, b"\x01")
    out2 = hmac_blake2s(temp, out1 + b"\x02")
    if n == 2:
        return out1, out2
    out3 = hmac_blake2s(temp, out2 + b"\x03")
    return out1, out2, out3


def public_bytes(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # low-order point: all-zero shared secret
        raise RemoteProtocolError("handshake_failed", "invalid X25519 public key") from exc


class CipherState:
    """Noise CipherState for ChaChaPoly (handshake payloads only)."""

    __slots__ = ("_aead", "n")

    def __init__(self) -> None:
        self._aead: ChaCha20Poly1305 | None = None
        self.n = 0

    def __repr__(self) -> str:
        return f"CipherState(has_key={self._aead is not None}, n={self.n})"

    def initialize_key(self, key: bytes | None) -> None:
        self._aead = ChaCha20Poly1305(key) if key is not None else None
        self.n = 0

    @property
    def has_key(self) -> bool:
        return self._aead is not None

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        if self._aead is None:
            return plaintext
        out = self._aead.encrypt(_NOISE_NONCE.pack(self.n), plaintext, ad)
        self.n += 1
        return out

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        if self._aead is None:
            return ciphertext
        try:
            out = self._aead.decrypt(_NOISE_NONCE.pack(self.n), ciphertext, ad)
        except InvalidTag as exc:
            raise RemoteProtocolError("decrypt_failed", "handshake payload failed AEAD") from exc
        self.n += 1
        return out


class SymmetricState:
    __slots__ = ("ck", "h", "cs")

    def __init__(self, name: bytes) -> None:
        self.h = name.ljust(HASHLEN, b"\0") if len(name) <= HASHLEN else blake2s(name)
        self.ck = self.h
        self.cs = CipherState()

    def __repr__(self) -> str:
        return "SymmetricState(<secret>)"

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = hkdf(self.ck, ikm, 2)
        self.cs.initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        self.h = blake2s(self.h, data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cs.initialize_key(temp_k)

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ct = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ct)
        return ct

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        pt = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return pt

    def split(self) -> tuple[bytes, bytes]:
        k1, k2 = hkdf(self.ck, b"", 2)
        return k1, k2


class HandshakeState:
    """One side of a two-message Noise handshake.

    ``ephemeral`` may be fixed (tests compare transcripts with another implementation);
    otherwise a fresh X25519 key is generated when the ``e`` token is written.
    """

    def __init__(
        self,
        pattern: str,
        *,
        initiator: bool,
        prologue: bytes = b"",
        static: X25519PrivateKey | None = None,
        remote_static: bytes | None = None,
        psk: bytes | None = None,
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        try:
            self.pattern = PATTERNS[pattern]
        except KeyError:
            raise LocalProtocolError(f"unknown Noise pattern {pattern!r}") from None
        if self.pattern.psk and (psk is None or len(psk) != KEYLEN):
            raise LocalProtocolError("a psk pattern needs a 32-byte PSK")
        self.initiator = initiator
        self.s = static
        self.rs = remote_static
        self.e = ephemeral
        self.re: bytes | None = None
        self._psk = psk
        self._msg = 0
        self.ss = SymmetricState(protocol_name(pattern))
        self.ss.mix_hash(prologue)
        for token in self.pattern.pre_initiator:
            self._pre(token, initiator)
        for token in self.pattern.pre_responder:
            self._pre(token, not initiator)

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        return f"HandshakeState({self.pattern.name}, {role}, message={self._msg})"

    def _pre(self, token: str, mine: bool) -> None:
        if token != "s":
            raise LocalProtocolError(f"unsupported pre-message token {token!r}")
        if mine:
            if self.s is None:
                raise LocalProtocolError("pattern needs a local static key")
            self.ss.mix_hash(public_bytes(self.s))
        else:
            if self.rs is None:
                raise LocalProtocolError("pattern needs the remote static public key")
            self.ss.mix_hash(self.rs)

    def set_psk(self, psk: bytes) -> None:
        """Set the PSK before the token that mixes it (IKpsk2: the responder's message,
        so a hub can read an initiation before it knows which peer, and PSK, sent it)."""
        if len(psk) != KEYLEN:
            raise LocalProtocolError("a PSK is 32 bytes")
        self._psk = psk

    @property
    def finished(self) -> bool:
        return self._msg >= len(self.pattern.messages)

    @property
    def handshake_hash(self) -> bytes:
        return self.ss.h

    @property
    def ephemeral_public(self) -> bytes | None:
        return None if self.e is None else public_bytes(self.e)

    def _my_turn(self) -> bool:
        return (self._msg % 2 == 0) == self.initiator

    def _dh_token(self, token: str) -> bytes:
        e, s = self.e, self.s
        if token == "ee":
            return dh(_need(e), _need(self.re))
        if token == "ss":
            return dh(_need(s), _need(self.rs))
        # "es": initiator's e with responder's s; "se": initiator's s with responder's e
        mine_first = (token == "es") == self.initiator
        if mine_first:
            return dh(_need(e), _need(self.rs))
        return dh(_need(s), _need(self.re))

    def write_message(self, payload: bytes = b"") -> bytes:
        if self.finished or not self._my_turn():
            raise LocalProtocolError("not this side's turn to write a handshake message")
        out = bytearray()
        for token in self.pattern.messages[self._msg]:
            if token == "e":
                if self.e is None:
                    self.e = X25519PrivateKey.generate()
                pub = public_bytes(self.e)
                out += pub
                self.ss.mix_hash(pub)
                if self.pattern.psk:
                    self.ss.mix_key(pub)
            elif token == "s":
                out += self.ss.encrypt_and_hash(public_bytes(_need(self.s)))
            elif token == "psk":
                self.ss.mix_key_and_hash(_need(self._psk))
            else:
                self.ss.mix_key(self._dh_token(token))
        out += self.ss.encrypt_and_hash(payload)
        self._msg += 1
        return bytes(out)

    def read_message(self, message: bytes) -> bytes:
        if self.finished or self._my_turn():
            raise LocalProtocolError("not this side's turn to read a handshake message")
        pos = 0
        for token in self.pattern.messages[self._msg]:
            if token == "e":
                if len(message) < pos + DHLEN:
                    raise RemoteProtocolError("truncated", "handshake message too short")
                self.re = bytes(message[pos:pos + DHLEN])
                pos += DHLEN
                self.ss.mix_hash(self.re)
                if self.pattern.psk:
                    self.ss.mix_key(self.re)
            elif token == "s":
                n = DHLEN + (TAGLEN if self.ss.cs.has_key else 0)
                if len(message) < pos + n:
                    raise RemoteProtocolError("truncated", "handshake message too short")
                self.rs = self.ss.decrypt_and_hash(bytes(message[pos:pos + n]))
                pos += n
            elif token == "psk":
                self.ss.mix_key_and_hash(_need(self._psk))
            else:
                self.ss.mix_key(self._dh_token(token))
        if self.ss.cs.has_key and len(message) - pos < TAGLEN:
            raise RemoteProtocolError("truncated", "handshake payload too short")
        payload = self.ss.decrypt_and_hash(bytes(message[pos:]))
        self._msg += 1
        return payload

    def split(self) -> tuple[bytes, bytes]:
        """Transport keys ``(initiator->responder, responder->initiator)``."""
        if not self.finished:
            raise LocalProtocolError("handshake not finished")
        return self.ss.split()


def _need(value: _T | None) -> _T:
    if value is None:
        raise LocalProtocolError("handshake pattern needs a key that was not given")
    return value
