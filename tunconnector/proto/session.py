"""Transport keypairs: one AEAD per direction, a send counter and a replay window.

A :class:`Keypair` is what a finished handshake leaves behind (WireGuard's
``device/keypair.go``): the data path seals with ``send`` and opens with ``recv``.
Native DATA layout when encrypted: the 16-byte header is the associated data, its
``counter`` field is the nonce (``00000000 || counter`` big-endian, 12 bytes), and the
payload is ciphertext followed by a 16-byte tag. Counters start at 0 and never repeat
under one key; :meth:`Keypair.next_counter` refuses to go past :data:`REJECT_AFTER_MESSAGES`.
"""

from __future__ import annotations

import struct
from typing import Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ..errors import CryptoError, LocalProtocolError, RemoteProtocolError
from .framing import FLAG_ENCRYPTED, HEADER, HEADER_LEN, TAG_LEN, VERSION
from .replay import REJECT_AFTER_MESSAGES, ReplayWindow

CipherName = Literal["chacha20-poly1305", "aes-256-gcm"]
CIPHERS: dict[str, int] = {"chacha20-poly1305": 1, "aes-256-gcm": 2}
CIPHER_NAMES: dict[int, str] = {v: k for k, v in CIPHERS.items()}
KEY_LEN = 32
#: WireGuard's RekeyAfterMessages: start a new handshake well before the hard limit
REKEY_AFTER_MESSAGES = 1 << 60

_NONCE = struct.Struct("!4xQ")

AEAD = ChaCha20Poly1305 | AESGCM


def make_aead(cipher: str, key: bytes) -> AEAD:
    """The AEAD object for ``cipher`` (``chacha20-poly1305`` | ``aes-256-gcm``)."""
    if len(key) != KEY_LEN:
        raise CryptoError("AEAD keys are 32 bytes")
    if cipher == "chacha20-poly1305":
        return ChaCha20Poly1305(key)
    if cipher == "aes-256-gcm":
        return AESGCM(key)
    raise CryptoError(f"unknown cipher {cipher!r} (chacha20-poly1305 | aes-256-gcm)")


def nonce(counter: int) -> bytes:
    return _NONCE.pack(counter)


class Keypair:
    """Keys and counters of one session (one handshake), both directions."""

    __slots__ = (
        "local_index", "remote_index", "initiator", "created", "cipher", "_send", "_recv",
        "send_counter", "sent_bytes", "received_bytes", "replay", "confirmed",
        "reset_token",
    )

    def __init__(
        self,
        *,
        local_index: int,
        remote_index: int,
        send_key: bytes,
        recv_key: bytes,
        initiator: bool,
        created: float,
        cipher: str = "chacha20-poly1305",
        replay_blocks: int = 128,
    ) -> None:
        self.local_index = local_index
        self.remote_index = remote_index
        self.initiator = initiator
        self.created = created
        self.cipher = cipher
        self._send = make_aead(cipher, send_key)
        self._recv = make_aead(cipher, recv_key)
        self.send_counter = 0
        self.sent_bytes = 0
        self.received_bytes = 0
        self.replay = ReplayWindow(replay_blocks)
        #: the responder's SESSION_RESET token for this session (proto/reset.py), if given
        self.reset_token: bytes | None = None
        #: responder keypairs become usable for sending once the initiator used them
        self.confirmed = initiator

    def __repr__(self) -> str:
        return (
            f"Keypair(local={self.local_index:#010x}, remote={self.remote_index:#010x}, "
            f"{self.cipher}, initiator={self.initiator}, sent={self.send_counter})"
        )

    # -- send -------------------------------------------------------------------------
    def next_counter(self) -> int:
        """Reserve a nonce; raises when the counter would reach the reject limit."""
        c = self.send_counter
        if c >= REJECT_AFTER_MESSAGES:
            raise LocalProtocolError("send counter exhausted: rekey first")
        self.send_counter = c + 1
        return c

    @property
    def exhausted(self) -> bool:
        return self.send_counter >= REJECT_AFTER_MESSAGES

    def seal_into(
        self, buf: bytearray | memoryview, length: int, *, mtype: int, path: int = 0,
        flags: int = 0,
    ) -> int:
        """Encrypt ``buf[16:16+length]`` in place, writing the header at ``buf[0:16]``.

        ``buf`` needs ``16 + length + 16`` bytes; returns the message length. ``flags``
        (e.g. FLAG_GSO) are added to FLAG_ENCRYPTED; the header is the associated data.
        """
        counter = self.next_counter()
        mv = memoryview(buf)
        end = HEADER_LEN + length + TAG_LEN
        if len(mv) < end:
            raise LocalProtocolError("seal_into: buffer lacks head-room or tail-room")
        HEADER.pack_into(
            mv, 0, VERSION, mtype, FLAG_ENCRYPTED | flags, path, self.remote_index, counter
        )
        self._send.encrypt_into(
            _NONCE.pack(counter), mv[HEADER_LEN:HEADER_LEN + length], mv[:HEADER_LEN],
            mv[HEADER_LEN:end],
        )
        self.sent_bytes += length
        return end

    def seal_many(self, payloads: list[bytes], *, mtype: int, path: int = 0,
                  flags: int = 0) -> list[bytearray]:
        """One sealed message per payload, consecutive counters: :meth:`seal_into` for a
        batch of small packets without a method call (and a copy) per packet. The caller
        makes sure the counter cannot reach the reject limit within the batch."""
        out: list[bytearray] = []
        c = self.send_counter
        pack_into, npack, encrypt_into = HEADER.pack_into, _NONCE.pack, self._send.encrypt_into
        flags |= FLAG_ENCRYPTED
        remote = self.remote_index
        total = 0
        for p in payloads:
            n = len(p)
            buf = bytearray(HEADER_LEN + n + TAG_LEN)
            mv = memoryview(buf)
            pack_into(mv, 0, VERSION, mtype, flags, path, remote, c)
            encrypt_into(npack(c), p, mv[:HEADER_LEN], mv[HEADER_LEN:])
            c += 1
            total += n
            out.append(buf)
        self.send_counter = c
        self.sent_bytes += total
        return out

    def seal(self, payload: bytes | bytearray | memoryview, *, mtype: int, path: int = 0,
             flags: int = 0) -> bytes:
        """Simple bytes API: one native message carrying ``payload`` encrypted."""
        buf = bytearray(HEADER_LEN + len(payload) + TAG_LEN)
        buf[HEADER_LEN:HEADER_LEN + len(payload)] = payload
        self.seal_into(buf, len(payload), mtype=mtype, path=path, flags=flags)
        return bytes(buf)

    # -- receive ----------------------------------------------------------------------
    def open_into(
        self, message: memoryview, counter: int, out: memoryview | None = None
    ) -> memoryview:
        """Authenticate and decrypt one message (header included) whose counter is given.

        Decrypts in place (``message[16:-16]``) unless ``out`` is given. Raises
        :class:`RemoteProtocolError` with reason ``replay``, ``truncated`` or
        ``decrypt_failed``; the replay window only moves after authentication.
        """
        n = len(message) - HEADER_LEN - TAG_LEN
        if n < 0:
            raise RemoteProtocolError("truncated", "encrypted message shorter than its tag")
        if not self.replay.check(counter):
            raise RemoteProtocolError("replay", f"counter {counter} replayed or too old")
        dst = message[HEADER_LEN:HEADER_LEN + n] if out is None else out[:n]
        if len(dst) < n:
            raise LocalProtocolError("open_into: output buffer too small")
        try:
            self._recv.decrypt_into(
                _NONCE.pack(counter), message[HEADER_LEN:], message[:HEADER_LEN], dst
            )
        except InvalidTag as exc:
            raise RemoteProtocolError("decrypt_failed", "AEAD authentication failed") from exc
        if not self.replay.update(counter):  # pragma: no cover - check() ran just before
            raise RemoteProtocolError("replay", f"counter {counter} replayed")
        self.received_bytes += n
        return dst
