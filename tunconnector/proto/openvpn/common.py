"""Pieces both OpenVPN modes share on the data channel: ping and OCC messages.

Both travel as data-channel payloads (after decryption), told apart from tunnel frames by
a 16-byte magic prefix, as OpenVPN's ``ping.c`` and ``occ.c`` define them.
"""

from __future__ import annotations

#: payload of a keepalive ping (OpenVPN ping.c)
PING_MAGIC = bytes.fromhex("2a187bf3641eb4cb07ed2d0a981fc748")
#: prefix of an OCC message (OpenVPN occ.c); an opcode byte follows
OCC_MAGIC = bytes.fromhex("287f346bd4ef7a812d56b8d3afc5459c")

OCC_REQUEST = 0
OCC_REPLY = 1
OCC_EXIT = 6


def is_ping(payload: bytes | memoryview) -> bool:
    return len(payload) == len(PING_MAGIC) and bytes(payload) == PING_MAGIC


def occ_opcode(payload: bytes | memoryview) -> int | None:
    """The OCC opcode when ``payload`` is an OCC message, else None."""
    if len(payload) > len(OCC_MAGIC) and bytes(payload[: len(OCC_MAGIC)]) == OCC_MAGIC:
        return payload[len(OCC_MAGIC)]
    return None


def occ_message(opcode: int, body: bytes = b"") -> bytes:
    return OCC_MAGIC + bytes((opcode,)) + body
