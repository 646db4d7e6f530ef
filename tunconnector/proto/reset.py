"""Session reset and exit messages, sans I/O.

A restarted hub has lost every session; a client goes on sending under keys the hub no
longer has until its stale timer fires (``keepalive + 5`` seconds). The hub answers such
data with a SESSION_RESET instead, and the client handshakes again at once. As QUIC's
stateless reset, it is authenticated by a token only the hub can make: a MAC of the
hub's session index under a key derived from the hub's static private key (which a
restart keeps). The token of a session travels inside the encrypted handshake response
(the hub's assignment, key ``t``), so only the client learns it before the hub reveals
it, and a revealed token only ever ends the session it names::

    SESSION_RESET  header(type 0x13, session = the unknown index, counter 0) || token[16]

32 bytes, never more than the encrypted datagram it answers (no amplification), and
rate-limited per source and in total by the hub.

EXIT (type 0x14) is the native explicit-exit-notify: an empty message sealed under the
current session (the header, type included, is the AEAD's associated data), sent by a
client that stops cleanly. Only the peer holding the session keys can make one, and the
replay window refuses a copy.
"""

from __future__ import annotations

import hashlib
import hmac

from .framing import HEADER, HEADER_LEN, TAG_LEN, VERSION, MsgType

TOKEN_LEN = 16
RESET_LEN = HEADER_LEN + TOKEN_LEN
#: smallest datagram a reset answers: an encrypted keepalive (header + tag)
MIN_ANSWERED = HEADER_LEN + TAG_LEN


def reset_key(static_private: bytes) -> bytes:
    """The hub's reset key: stable across restarts, useless for anything else."""
    return hashlib.blake2s(b"tunconnector session reset", key=static_private).digest()


def reset_token(key: bytes, index: int) -> bytes:
    return hashlib.blake2s(index.to_bytes(4, "big"), key=key, digest_size=TOKEN_LEN).digest()


def encode_reset(key: bytes, index: int) -> bytes:
    return HEADER.pack(VERSION, MsgType.SESSION_RESET, 0, 0, index, 0) + reset_token(key, index)


def reset_matches(message: bytes | bytearray | memoryview, token: bytes | None) -> bool:
    """Whether a SESSION_RESET carries ``token`` (constant time; None never matches)."""
    if token is None or len(message) != RESET_LEN:
        return False
    return hmac.compare_digest(bytes(message[HEADER_LEN:]), token)


def wants_reset(data: bytes | bytearray | memoryview) -> bool:
    """Whether an unknown session's datagram deserves a reset: encrypted DATA at least
    as long as the reset itself."""
    return (len(data) >= MIN_ANSWERED and data[0] == VERSION and data[1] == MsgType.DATA
            and bool(data[2] & 0x01))
