"""The TLS-mode data channel: DATA_V2 with an AEAD cipher, one :class:`DataKey` per key_id.

Wire: ``9 << 3 | key_id`` then the peer id (3 bytes), the packet id (u32), the 16-byte tag,
then the ciphertext (tag before ciphertext). The nonce is the packet id followed by the
first 8 bytes of that direction's HMAC key slice (the "implicit IV"); the associated data
is the first 8 bytes (opcode, peer id, packet id). DATA_V1 (no peer id) is accepted on
receive with the packet id alone as associated data.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from ...errors import RemoteProtocolError
from ..replay import ReplayWindow
from .keymethod import DirectionKeys
from .packet import P_DATA_V1, P_DATA_V2, op_byte
from .static import StaticKeyCrypto

#: data-channel ciphers we implement, with their key lengths
CIPHERS = {"AES-256-GCM": 32, "AES-128-GCM": 16, "CHACHA20-POLY1305": 32,
           "AES-256-CBC": 32, "AES-128-CBC": 16}
#: the non-AEAD ones: HMAC (``auth``) | IV | CBC(packet id | payload), static.py's sealing
CBC_CIPHERS = frozenset({"AES-256-CBC", "AES-128-CBC"})
TAG_LEN = 16
V2_HEADER = 8
#: the packet id must never wrap: refuse to send past this and renegotiate long before
PACKET_ID_LIMIT = 0xFFFFFFFF
#: a key is renegotiated after this many packets either way (OpenVPN does it at 2**31-ish)
REKEY_PACKETS = 0x7F000000


def canonical_cipher(name: str) -> str | None:
    up = name.strip().upper()
    return up if up in CIPHERS else None


def _aead(cipher: str, key: bytes) -> AESGCM | ChaCha20Poly1305:
    k = key[: CIPHERS[cipher]]
    return ChaCha20Poly1305(k) if cipher == "CHACHA20-POLY1305" else AESGCM(k)


class DataKey:
    """Encrypt and decrypt for one key_id; replay window and counters of its own."""

    def __init__(self, key_id: int, cipher: str, send: DirectionKeys, recv: DirectionKeys,
                 peer_id: int | None, created: float, auth: str = "SHA1") -> None:
        self.key_id = key_id
        self.cipher = cipher
        self.created = created
        self._cbc: StaticKeyCrypto | None = None
        if cipher in CBC_CIPHERS:
            self._cbc = StaticKeyCrypto(None, None, cipher, auth.upper(),
                                        slices=(send, recv), pid_len=4)
        else:
            self._send = _aead(cipher, send.cipher)
            self._recv = _aead(cipher, recv.cipher)
        self._send_iv = send.hmac[:8]
        self._recv_iv = recv.hmac[:8]
        self._peer_id = peer_id
        self._op = bytes((op_byte(P_DATA_V2 if peer_id is not None else P_DATA_V1, key_id),))
        self._peer_bytes = struct.pack("!I", peer_id or 0)[1:]
        #: what goes before the packet id: opcode and peer id (V2), opcode alone (V1)
        self._head = self._op + self._peer_bytes if peer_id is not None else self._op
        self._packet_id = 0
        self.replay = ReplayWindow()
        self.sent_packets = 0
        self.received_packets = 0

    @property
    def exhausted(self) -> bool:
        return self._packet_id >= REKEY_PACKETS or self.replay.highest >= REKEY_PACKETS

    def encrypt(self, payload: bytes | memoryview) -> bytes:
        n = self._packet_id = self._packet_id + 1
        if n >= PACKET_ID_LIMIT:
            raise OverflowError("data packet id exhausted")
        pid = n.to_bytes(4, "big")
        self.sent_packets += 1
        if self._cbc is not None:
            return self._head + self._cbc.seal(pid, payload)
        # tag before ciphertext, joined once (the body not copied twice)
        if self._peer_id is not None:  # V2: the associated data is the whole header
            ad = self._head + pid
            sealed = self._send.encrypt(pid + self._send_iv, payload, ad)
            return b"".join((ad, sealed[-TAG_LEN:], memoryview(sealed)[:-TAG_LEN]))
        sealed = self._send.encrypt(pid + self._send_iv, payload, pid)  # V1: the id alone
        return b"".join((self._head, pid, sealed[-TAG_LEN:], memoryview(sealed)[:-TAG_LEN]))

    def decrypt(self, packet: bytes) -> bytes:
        """The payload of an authentic, fresh packet, else RemoteProtocolError."""
        if not packet:
            raise RemoteProtocolError("truncated", "empty data packet")
        opcode = packet[0] >> 3
        if opcode == P_DATA_V2:
            head = V2_HEADER
            ad = bytes(packet[:V2_HEADER])
            pid_bytes = ad[4:8]
        elif opcode == P_DATA_V1:
            head = 5
            pid_bytes = bytes(packet[1:5])
            ad = pid_bytes
        else:
            raise RemoteProtocolError("bad_opcode", "not a data packet")
        if self._cbc is not None:
            return self._open_cbc(self._cbc, packet, 4 if opcode == P_DATA_V2 else 1)
        if len(packet) < head + TAG_LEN:
            raise RemoteProtocolError("truncated", "data packet too short")
        (pid,) = struct.unpack("!I", pid_bytes)
        if not self.replay.check(pid):
            raise RemoteProtocolError("replay", "data packet replayed or too old")
        tag = packet[head : head + TAG_LEN]
        try:
            payload = self._recv.decrypt(pid_bytes + self._recv_iv,
                                         bytes(packet[head + TAG_LEN :]) + bytes(tag), ad)
        except InvalidTag:
            raise RemoteProtocolError("bad_tag", "data packet failed authentication") from None
        self.replay.update(pid)
        self.received_packets += 1
        return payload

    def _open_cbc(self, cbc: StaticKeyCrypto, packet: bytes, head: int) -> bytes:
        got = cbc.open(packet[head:])
        if isinstance(got, str):
            reason = {"short": "truncated"}.get(got, got)
            raise RemoteProtocolError(reason, f"data packet refused: {got}")
        pid, _, payload = got
        if not self.replay.check(pid):
            raise RemoteProtocolError("replay", "data packet replayed or too old")
        self.replay.update(pid)
        self.received_packets += 1
        return bytes(payload)
