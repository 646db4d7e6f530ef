"""Pieces both OpenVPN modes share on the data channel: ping and OCC messages, and the
latency lane's sealing of one frame.

Ping and OCC travel as data-channel payloads (after decryption), told apart from tunnel
frames by a 16-byte magic prefix, as OpenVPN's ``ping.c`` and ``occ.c`` define them.
"""

from __future__ import annotations

from collections.abc import Callable

from ..offload import VNET_HDR_LEN

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


def seal_one(send_frames: Callable[[list[bytes], float, int], None], out: list[bytes],
             frame: bytes | memoryview, now: float, vnet_hdr: bool) -> bytes | None:
    """The latency lane's one frame, sealed at once by ``send_frames`` (which queues on
    ``out``): the datagram, taken off ``out``; None when nothing was queued (held for a
    handshake). The device's virtio header is all zero (no TUNSETOFFLOAD): skipped by
    the sealing (offset), not copied off first."""
    send_frames([frame if isinstance(frame, bytes) else bytes(frame)], now,
                VNET_HDR_LEN if vnet_hdr else 0)
    return out.pop() if out else None
