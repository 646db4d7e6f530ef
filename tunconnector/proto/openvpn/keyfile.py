"""OpenVPN "Static key V1" files and key directions, sans I/O.

The file carries 256 bytes in hex between ``-----BEGIN OpenVPN Static key V1-----`` and
``-----END OpenVPN Static key V1-----`` (``#`` comment lines may precede it). They form two
128-byte keys; in each the cipher key is the first 64 bytes and the HMAC key the next 64,
of which only the leading bytes a cipher or digest needs are used. The key direction picks
which half each way uses: none -> both ways use ``key[0]``; 0 -> send with ``key[0]``,
receive with ``key[1]``; 1 -> the reverse (so the two ends of a tunnel use opposite
directions, or both none).
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from ...errors import CryptoError

BEGIN = "-----BEGIN OpenVPN Static key V1-----"
END = "-----END OpenVPN Static key V1-----"
KEY_BYTES = 256
HALF = 128
CIPHER_SLICE = 64


@dataclass(frozen=True, slots=True, repr=False)
class KeySlice:
    """One direction's material: 64 bytes of cipher key, 64 bytes of HMAC key."""

    cipher: bytes
    hmac: bytes

    def __repr__(self) -> str:  # never show key bytes
        return "KeySlice(<secret>)"


@dataclass(frozen=True, slots=True, repr=False)
class StaticKey:
    """The 256 bytes of a static key file; :meth:`directional` gives (send, receive)."""

    material: bytes

    def __repr__(self) -> str:
        return "StaticKey(<secret>)"

    def half(self, index: int) -> KeySlice:
        base = index * HALF
        return KeySlice(self.material[base:base + CIPHER_SLICE],
                        self.material[base + CIPHER_SLICE:base + HALF])

    def directional(self, direction: int | None) -> tuple[KeySlice, KeySlice]:
        """(send, receive) key slices for ``direction`` (None, 0 or 1), as openvpn does."""
        if direction is None:
            k = self.half(0)
            return k, k
        if direction == 0:
            return self.half(0), self.half(1)
        if direction == 1:
            return self.half(1), self.half(0)
        raise CryptoError(f"key direction must be 0 or 1, not {direction!r}")


def ascii_text(text: str | bytes, error: str) -> str:
    """A key file's text as str: bytes must be ASCII, else ``CryptoError(error)``
    (which never quotes them)."""
    if isinstance(text, bytes):
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            raise CryptoError(error) from None
    return text


def parse_static_key(text: str | bytes, what: str = "static key") -> StaticKey:
    """Parse an OpenVPN static key file's text; errors never quote key bytes."""
    text = ascii_text(text, f"{what}: not an OpenVPN static key file (not ASCII)")
    # by markers, not lines: the enabler's API served the file with its lines joined
    start = text.find(BEGIN)
    end = text.find(END, start + len(BEGIN)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise CryptoError(
            f"{what}: not an OpenVPN static key file (no '{BEGIN}' ... '{END}' block)"
        )
    body = "".join(text[start + len(BEGIN):end].split())
    try:
        material = binascii.unhexlify(body)
    except (binascii.Error, ValueError):
        raise CryptoError(f"{what}: the key block is not hexadecimal") from None
    if len(material) != KEY_BYTES:
        raise CryptoError(
            f"{what}: the key block holds {len(material)} bytes, expected {KEY_BYTES}"
        )
    return StaticKey(material)


def format_static_key(material: bytes) -> str:
    """The file text openvpn writes for ``--genkey secret`` (16 bytes a line)."""
    if len(material) != KEY_BYTES:
        raise CryptoError(f"static key must be {KEY_BYTES} bytes")
    hexed = material.hex()
    rows = [hexed[i:i + 32] for i in range(0, len(hexed), 32)]
    return "\n".join(["#", "# 2048 bit OpenVPN static key", "#", BEGIN, *rows, END, ""])
