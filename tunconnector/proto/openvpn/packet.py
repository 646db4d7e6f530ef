"""OpenVPN TLS-mode packets: the opcode byte and the control-packet layout, sans I/O.

Every packet starts with ``opcode << 3 | key_id``. A control packet (after the tls-auth /
tls-crypt wrapping is removed, see :mod:`.tlsauth`) is::

    opcode|key_id (1)  session id (8)  ack count (1)  acked message ids (4 each)
    peer's session id (8, only when ack count > 0)  message id (4, not in ACK_V1)  payload

The payload of CONTROL_V1 is a piece of the TLS record stream; the reset opcodes carry
none (or an early-negotiation TLV we ignore). Decoders raise only RemoteProtocolError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ...errors import RemoteProtocolError

P_CONTROL_SOFT_RESET_V1 = 3
P_CONTROL_V1 = 4
P_ACK_V1 = 5
P_DATA_V1 = 6
P_CONTROL_HARD_RESET_CLIENT_V2 = 7
P_CONTROL_HARD_RESET_SERVER_V2 = 8
P_DATA_V2 = 9
P_CONTROL_HARD_RESET_CLIENT_V3 = 10

CONTROL_OPCODES = frozenset(
    (
        P_CONTROL_SOFT_RESET_V1,
        P_CONTROL_V1,
        P_ACK_V1,
        P_CONTROL_HARD_RESET_CLIENT_V2,
        P_CONTROL_HARD_RESET_SERVER_V2,
        P_CONTROL_HARD_RESET_CLIENT_V3,
    )
)
DATA_OPCODES = frozenset((P_DATA_V1, P_DATA_V2))

#: the receiver of an ACK list refuses more than this many entries (OpenVPN's array size)
MAX_ACKS = 8
SESSION_ID_LEN = 8
#: bytes before any wrapping data: opcode and session id
HEADER_LEN = 1 + SESSION_ID_LEN


def split_opcode(first: int) -> tuple[int, int]:
    return first >> 3, first & 7


def op_byte(opcode: int, key_id: int) -> int:
    return (opcode << 3) | (key_id & 7)


@dataclass(frozen=True, slots=True)
class ControlPacket:
    opcode: int
    key_id: int
    session_id: bytes
    acks: tuple[int, ...] = ()
    remote_session_id: bytes | None = None
    message_id: int | None = None
    payload: bytes = b""

    def header(self) -> bytes:
        """Opcode byte and session id: what the wrappers keep in clear in front."""
        return bytes((op_byte(self.opcode, self.key_id),)) + self.session_id

    def body(self) -> bytes:
        """Everything after the wrapping data (acks, ids, payload)."""
        if len(self.acks) > MAX_ACKS:
            raise ValueError("too many acks in one packet")
        parts = [bytes((len(self.acks),))]
        if self.acks:
            parts.append(struct.pack(f"!{len(self.acks)}I", *self.acks))
            if self.remote_session_id is None or len(self.remote_session_id) != 8:
                raise ValueError("acks need the peer's session id")
            parts.append(self.remote_session_id)
        if self.opcode != P_ACK_V1:
            if self.message_id is None:
                raise ValueError("a control packet needs a message id")
            parts.append(struct.pack("!I", self.message_id))
            parts.append(self.payload)
        return b"".join(parts)


def parse_header(packet: bytes) -> tuple[int, int, bytes]:
    """(opcode, key_id, session id) of a control packet, or RemoteProtocolError."""
    if len(packet) < HEADER_LEN:
        raise RemoteProtocolError("truncated", "control packet shorter than its header")
    opcode, key_id = split_opcode(packet[0])
    if opcode not in CONTROL_OPCODES:
        raise RemoteProtocolError("bad_opcode", f"not a control opcode: {opcode}")
    return opcode, key_id, bytes(packet[1:HEADER_LEN])


def parse_body(opcode: int, key_id: int, session_id: bytes, body: bytes) -> ControlPacket:
    """Decode the part after the wrapping data (see :meth:`ControlPacket.body`)."""
    if not body:
        raise RemoteProtocolError("truncated", "control packet without ack count")
    n = body[0]
    if n > MAX_ACKS:
        raise RemoteProtocolError("bad_ack", f"{n} acks in one packet")
    pos = 1
    acks: tuple[int, ...] = ()
    remote: bytes | None = None
    if n:
        end = pos + 4 * n + SESSION_ID_LEN
        if len(body) < end:
            raise RemoteProtocolError("truncated", "ack list cut short")
        acks = struct.unpack_from(f"!{n}I", body, pos)
        pos += 4 * n
        remote = bytes(body[pos : pos + SESSION_ID_LEN])
        pos += SESSION_ID_LEN
    message_id: int | None = None
    payload = b""
    if opcode != P_ACK_V1:
        if len(body) < pos + 4:
            raise RemoteProtocolError("truncated", "message id cut short")
        (message_id,) = struct.unpack_from("!I", body, pos)
        payload = bytes(body[pos + 4 :])
    return ControlPacket(opcode, key_id, session_id, acks, remote, message_id, payload)
