"""Control-channel wrapping: none, tls-auth (HMAC) and tls-crypt (AES-256-CTR + HMAC).

Both keep the opcode byte and session id in clear and add an 8-byte replay id (packet id
and time) so an unauthenticated packet is dropped before it reaches TLS: a cheap DoS
shield and, with tls-crypt, privacy for the certificates.

Layouts after the 9-byte header (opcode, session id):
- tls-auth: ``HMAC(digest) | packet id | time | body``; the HMAC covers
  ``packet id | time | header | body``.
- tls-crypt: ``packet id | time | tag (HMAC-SHA256, 32) | AES-256-CTR(body)``; the tag
  covers ``header | packet id | time | body`` and its first 16 bytes are the CTR IV.

The keys come from a 2048-bit OpenVPN static key file: two 128-byte halves, each a 64-byte
cipher key then a 64-byte HMAC key. A client with ``key-direction 1`` (and always with
tls-crypt) sends with half 1 and receives with half 0; without a direction both use half 0.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ...errors import CryptoError, RemoteProtocolError
from ..replay import ReplayWindow
from .packet import HEADER_LEN

STATIC_KEY_LEN = 256
_DIGESTS = {"SHA1": "sha1", "SHA224": "sha224", "SHA256": "sha256", "SHA384": "sha384",
            "SHA512": "sha512", "MD5": "md5"}
_KEY_RE = re.compile(
    r"-----BEGIN OpenVPN Static key V1-----(.*?)-----END OpenVPN Static key V1-----", re.S
)


def parse_static_key(text: str) -> bytes:
    """The 256 key bytes of an ``OpenVPN Static key V1`` block (comments allowed)."""
    m = _KEY_RE.search(text)
    if not m:
        raise CryptoError("no 'OpenVPN Static key V1' block found")
    hexchars = "".join(
        line.strip() for line in m.group(1).splitlines() if not line.strip().startswith("#")
    )
    try:
        key = bytes.fromhex(hexchars)
    except ValueError as exc:
        raise CryptoError("static key block is not hex") from exc
    if len(key) != STATIC_KEY_LEN:
        raise CryptoError(f"static key has {len(key)} bytes, expected {STATIC_KEY_LEN}")
    return key


def digest_name(auth: str) -> str:
    name = _DIGESTS.get(auth.upper().replace("-", ""))
    if name is None:
        raise CryptoError(f"unsupported auth digest {auth!r}")
    return name


def _half(key: bytes, n: int) -> tuple[bytes, bytes]:
    """(cipher key 64, hmac key 64) of half ``n``."""
    base = n * 128
    return key[base : base + 64], key[base + 64 : base + 128]


class Wrapper:
    """No wrapping: the body follows the header as is."""

    overhead = 0

    def __init__(self, epoch: int = 0) -> None:
        self._packet_id = 0
        self._epoch = epoch & 0xFFFFFFFF
        self._replay = ReplayWindow(blocks=8)
        self._replay_time = -1

    def _next_replay_id(self) -> bytes:
        self._packet_id += 1
        return struct.pack("!II", self._packet_id, self._epoch)

    def _check_replay(self, rid: bytes) -> None:
        pid, ptime = struct.unpack("!II", rid)
        if ptime != self._replay_time:
            # a peer restart or a new time base: start a fresh window
            if ptime < self._replay_time:
                raise RemoteProtocolError("replay", "control packet with an older time")
            self._replay.reset()
            self._replay_time = ptime
        if not self._replay.update(pid):
            raise RemoteProtocolError("replay", "control packet replayed")

    def skip_packet_ids(self, last: int) -> None:
        """Continue numbering after ``last`` (a server session follows the stateless
        reset its handshake gate already sent under packet id 1)."""
        self._packet_id = max(self._packet_id, last)

    def wrap(self, header: bytes, body: bytes) -> bytes:
        return header + body

    def unwrap(self, packet: bytes, check_replay: bool = True) -> bytes:
        """The body of an authentic packet, else RemoteProtocolError.

        ``check_replay=False``: authenticity only, for a stateless check before any
        session exists (the replay window belongs to the session)."""
        return bytes(packet[HEADER_LEN:])


class TlsAuth(Wrapper):
    def __init__(self, key: bytes, direction: int | None, auth: str = "SHA1",
                 epoch: int = 0) -> None:
        super().__init__(epoch)
        self._digest = digest_name(auth)
        size = hashlib.new(self._digest).digest_size
        out_half, in_half = (0, 0) if direction is None else (direction, 1 - direction)
        self._out = _half(key, out_half)[1][:size]
        self._in = _half(key, in_half)[1][:size]
        self._size = size
        self.overhead = size + 8

    def wrap(self, header: bytes, body: bytes) -> bytes:
        rid = self._next_replay_id()
        mac = hmac.new(self._out, rid + header + body, self._digest).digest()
        return header + mac + rid + body

    def unwrap(self, packet: bytes, check_replay: bool = True) -> bytes:
        end = HEADER_LEN + self._size + 8
        if len(packet) < end:
            raise RemoteProtocolError("truncated", "tls-auth packet too short")
        header = bytes(packet[:HEADER_LEN])
        mac = packet[HEADER_LEN : HEADER_LEN + self._size]
        rid = bytes(packet[HEADER_LEN + self._size : end])
        body = bytes(packet[end:])
        want = hmac.new(self._in, rid + header + body, self._digest).digest()
        if not hmac.compare_digest(mac, want):
            raise RemoteProtocolError("bad_hmac", "tls-auth HMAC mismatch")
        if check_replay:
            self._check_replay(rid)
        return body


class TlsCrypt(Wrapper):
    overhead = 8 + 32

    def __init__(self, key: bytes, client: bool = True, epoch: int = 0) -> None:
        super().__init__(epoch)
        out_half, in_half = (1, 0) if client else (0, 1)
        self._out_cipher, self._out_mac = (k[:32] for k in _half(key, out_half))
        self._in_cipher, self._in_mac = (k[:32] for k in _half(key, in_half))

    @staticmethod
    def _ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
        c = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
        return c.update(data) + c.finalize()

    def wrap(self, header: bytes, body: bytes) -> bytes:
        rid = self._next_replay_id()
        tag = hmac.new(self._out_mac, header + rid + body, "sha256").digest()
        return header + rid + tag + self._ctr(self._out_cipher, tag[:16], body)

    def unwrap(self, packet: bytes, check_replay: bool = True) -> bytes:
        end = HEADER_LEN + 8 + 32
        if len(packet) < end:
            raise RemoteProtocolError("truncated", "tls-crypt packet too short")
        header = bytes(packet[:HEADER_LEN])
        rid = bytes(packet[HEADER_LEN : HEADER_LEN + 8])
        tag = bytes(packet[HEADER_LEN + 8 : end])
        body = self._ctr(self._in_cipher, tag[:16], bytes(packet[end:]))
        want = hmac.new(self._in_mac, header + rid + body, "sha256").digest()
        if not hmac.compare_digest(tag, want):
            raise RemoteProtocolError("bad_hmac", "tls-crypt tag mismatch")
        if check_replay:
            self._check_replay(rid)
        return body
