"""The UDP handshake gate of an OpenVPN server: openvpn 2.6's stateless HMAC cookie.

A UDP source address is not proof of anything, and a server that allocates a session
(and a TLS object) for every HARD_RESET_CLIENT can be exhausted, or used to reflect
traffic at a spoofed victim. So, as openvpn 2.6 does (``ssl_pkt.c``:
``tls_pre_decrypt_lite``, ``calculate_session_id_hmac``,
``check_session_hmac_and_pkt_id``; ``mudp.c``: ``do_pre_decrypt_check``), the gate
answers a client's hard reset with a HARD_RESET_SERVER_V2 whose session id is a keyed
hash of (time slot, client address and port, client session id) and keeps nothing. Only
the client's next packet (a CONTROL_V1 or ACK_V1 acking our reset and naming that
session id, message ids no higher than 1) proves the client receives at its address;
then a session is created, already past both resets.

The reply is exactly what openvpn's ``tls_reset_standalone`` writes: it acks the client's
message 0, carries message id 0, and is wrapped (tls-auth / tls-crypt) with packet id 1.
One addition: a client whose ack of our reset was lost and that does not repeat acks
(our own client; openvpn 2.6 clients repeat them) retransmits its CONTROL_V1 without
one; the gate answers that with the same reset under packet id 2, so the client acks it
again. Sessions continue the numbering at 3. With tls-auth or tls-crypt every packet is
authenticated before anything else; replies are rate limited (openvpn's
``reflect_filter_rate_limit_check``) so the gate is never an amplifier.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import RemoteProtocolError
from ..connection import Addr
from .packet import (
    P_ACK_V1,
    P_CONTROL_HARD_RESET_CLIENT_V2,
    P_CONTROL_HARD_RESET_CLIENT_V3,
    P_CONTROL_HARD_RESET_SERVER_V2,
    P_CONTROL_V1,
    SESSION_ID_LEN,
    ControlPacket,
    parse_body,
    parse_header,
)
from .tlsauth import Wrapper


@dataclass(frozen=True, slots=True)
class GateReply:
    """Send ``packet`` back to the source; nothing was kept."""

    packet: bytes


@dataclass(frozen=True, slots=True)
class GateAccept:
    """The source proved it received our reset: create a session with these ids, then
    hand it this same packet."""

    client_session_id: bytes
    server_session_id: bytes


@dataclass(frozen=True, slots=True)
class GateDrop:
    reason: str


GateVerdict = GateReply | GateAccept | GateDrop

#: the control-channel packet ids (tls-auth / tls-crypt) the gate's resets use are 1 and
#: 2; a session created behind the gate continues after them
FIRST_SESSION_PACKET_ID = 3


def address_bytes(addr: Addr) -> bytes:
    """The part of a source the cookie is bound to: address and port (as openvpn hashes
    the whole sockaddr)."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        return f"{addr[0]}|{addr[1]}".encode()
    return repr(addr).encode()


class HandshakeGate:
    """Stateless answers to new clients; :meth:`check` decides per datagram."""

    def __init__(self, wrapper_factory: Callable[[], Wrapper], *, hand_window: float = 60.0,
                 key: bytes | None = None, reply_rate: float = 100.0,
                 reply_burst: float = 100.0) -> None:
        self._wrapper_factory = wrapper_factory
        # one wrapper for authentication only (no replay window: that is per session)
        self._checker = wrapper_factory()
        self._key = key if key is not None else secrets.token_bytes(32)
        #: a cookie stays valid for the current slot and the two before it: between one
        #: and one and a half hand windows
        self._slot = max(1.0, float(int(hand_window + 1) // 2))
        self.reply_rate = reply_rate
        self.reply_burst = reply_burst
        self._tokens = reply_burst
        self._tokens_at: float | None = None
        self.drops: collections.Counter[str] = collections.Counter()
        self.replies = 0
        self.accepted = 0

    def cookie(self, client_sid: bytes, addr: Addr, now: float, offset: int = 0) -> bytes:
        """Our session id for this client in the time slot ``offset`` slots from now."""
        slot = int(now // self._slot) + offset
        msg = struct.pack("!q", slot) + address_bytes(addr) + client_sid
        return hmac.new(self._key, msg, hashlib.sha256).digest()[:SESSION_ID_LEN]

    def _take_token(self, now: float) -> bool:
        if self._tokens_at is not None:
            self._tokens = min(self.reply_burst,
                               self._tokens + (now - self._tokens_at) * self.reply_rate)
        self._tokens_at = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _reply(self, client_sid: bytes, addr: Addr, now: float, resend: int) -> GateVerdict:
        if not self._take_token(now):
            return self._drop("reply_rate")
        server_sid = self.cookie(client_sid, addr, now)
        reply = ControlPacket(P_CONTROL_HARD_RESET_SERVER_V2, 0, server_sid, (0,),
                              client_sid, 0, b"")
        # packet id 1, as openvpn's standalone reset; a repeat uses 2 (the client's replay
        # window already holds 1); sessions number on from FIRST_SESSION_PACKET_ID
        wrapper = self._wrapper_factory()
        wrapper.skip_packet_ids(resend)
        self.replies += 1
        return GateReply(wrapper.wrap(reply.header(), reply.body()))

    def check(self, data: bytes, addr: Addr, now: float) -> GateVerdict:
        """What to do with a datagram from a source that has no session."""
        try:
            return self._check(data, addr, now)
        except RemoteProtocolError as exc:
            self.drops[exc.reason] += 1
            return GateDrop(exc.reason)

    def _drop(self, reason: str) -> GateDrop:
        self.drops[reason] += 1
        return GateDrop(reason)

    def _check(self, data: bytes, addr: Addr, now: float) -> GateVerdict:
        opcode, key_id, client_sid = parse_header(data)
        if opcode == P_CONTROL_HARD_RESET_CLIENT_V3:
            return self._drop("tls_crypt_v2_unsupported")
        if opcode not in (P_CONTROL_HARD_RESET_CLIENT_V2, P_CONTROL_V1, P_ACK_V1):
            return self._drop("no_session")
        if key_id != 0:
            return self._drop("bad_key_id")
        if client_sid == bytes(SESSION_ID_LEN):
            return self._drop("bad_session")
        body = self._checker.unwrap(data, check_replay=False)  # authenticity first
        pkt = parse_body(opcode, key_id, client_sid, body)
        if opcode == P_CONTROL_HARD_RESET_CLIENT_V2:
            return self._reply(client_sid, addr, now, 0)
        # the client's second packet: it must ack our reset and name our cookie
        if not pkt.acks or pkt.remote_session_id is None:
            if opcode == P_CONTROL_V1 and pkt.message_id is not None and pkt.message_id <= 1:
                # its ack was lost and it does not repeat acks (openvpn 2.6 clients do):
                # our reset once more makes it ack again, still without state here
                self.drops["no_cookie"] += 1
                return self._reply(client_sid, addr, now, 1)
            return self._drop("no_cookie")
        if any(a > 1 for a in pkt.acks) or (pkt.message_id is not None and pkt.message_id > 1):
            return self._drop("bad_cookie")
        for offset in (0, -1, -2):
            want = self.cookie(client_sid, addr, now, offset)
            if hmac.compare_digest(want, pkt.remote_session_id):
                self.accepted += 1
                return GateAccept(client_sid, want)
        return self._drop("bad_cookie")
