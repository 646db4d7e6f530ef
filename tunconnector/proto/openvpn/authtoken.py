"""openvpn's ``auth-gen-token``: a session token the server pushes after the first
password check, which the client sends instead of its password on renegotiation and
reconnection (src/openvpn/auth_token.c), sans I/O.

The token is ``SESS_ID_AT_`` + base64(session id (12) | initial time (8) | time (8) |
HMAC-SHA256(key, user name | those 28 bytes)), times big-endian seconds. A renewed
token keeps the session id and the initial time, so ``auth-gen-token LIFETIME`` bounds
the whole session and a token from another session is refused. Byte-compatible with
openvpn's, so with the same key (``auth-gen-token-secret``, read outside proto/)
either server accepts the other's tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from dataclasses import dataclass

from ...errors import ConfigError

SESSION_ID_PREFIX = "SESS_ID_AT_"
SESSION_ID_LEN = 12
#: base64 characters of the session id (12 bytes: no padding)
SESSION_ID_B64_LEN = 16
HMAC_LEN = 32
TOKEN_DATA_LEN = SESSION_ID_LEN + 8 + 8 + HMAC_LEN


def is_auth_token(password: str | None) -> bool:
    """A password that is one of our tokens (openvpn's ``is_auth_token``)."""
    return password is not None and password.startswith(SESSION_ID_PREFIX)


@dataclass(frozen=True, slots=True)
class TokenCheck:
    """``verify_auth_token``'s flags: the HMAC matched (for the user, or only for the
    empty user name), and whether the token is out of its window."""

    hmac_ok: bool = False
    empty_user: bool = False
    expired: bool = False

    @property
    def valid(self) -> bool:
        """What lets a client in without its password: exactly AUTH_TOKEN_HMAC_OK."""
        return self.hmac_ok and not self.empty_user and not self.expired


class AuthTokenKey:
    """The server's token key: 32 bytes or more of HMAC-SHA256 key (random per server
    when the config names no ``auth-gen-token-secret``)."""

    def __init__(self, key: bytes | None = None,
                 rand: Callable[[int], bytes] = secrets.token_bytes) -> None:
        if key is not None and len(key) < 32:
            raise ConfigError("auth-gen-token-secret: the key must have 32 bytes or more")
        self._key = key if key is not None else rand(32)
        self._rand = rand

    def _mac(self, username: str, body: bytes) -> bytes:
        return hmac.new(self._key, username.encode() + body, hashlib.sha256).digest()

    def generate(self, username: str, now: int, initial: str | None = None,
                 empty_user: bool = False) -> str:
        """A token for ``username`` at wall-clock ``now``; a renewal of ``initial``
        (the session's first token) keeps its session id and initial time
        (``generate_auth_token``)."""
        data = _decode(initial) if initial is not None else None
        if data is not None:
            sessid, first = data[:SESSION_ID_LEN], data[SESSION_ID_LEN:SESSION_ID_LEN + 8]
        else:
            sessid, first = self._rand(SESSION_ID_LEN), struct.pack(">Q", now)
        body = sessid + first + struct.pack(">Q", now)
        mac = self._mac("" if empty_user else username, body)
        return SESSION_ID_PREFIX + base64.b64encode(body + mac).decode()

    def verify(self, username: str, token: str, now: int, renewal: int, lifetime: int = 0,
               initial: str | None = None) -> TokenCheck:
        """Check a token as ``verify_auth_token``: the HMAC (for ``username``, else for
        the empty name), the time window ``[time, time + 2 * renewal)``, ``lifetime``
        seconds from the initial time (0: unbounded), and, once the session has a
        token, the same session id."""
        data = _decode(token)
        if data is None:
            return TokenCheck()
        body, mac = data[:-HMAC_LEN], data[-HMAC_LEN:]
        empty = False
        if not hmac.compare_digest(self._mac(username, body), mac):
            if not hmac.compare_digest(self._mac("", body), mac):
                return TokenCheck()
            empty = True
        first, stamp = struct.unpack(">QQ", body[SESSION_ID_LEN:])
        expired = not stamp <= now < stamp + 2 * renewal or stamp < first or \
            bool(lifetime and now > first + lifetime)
        if initial is not None:
            cut = len(SESSION_ID_PREFIX) + SESSION_ID_B64_LEN
            if not hmac.compare_digest(initial[:cut].encode(), token[:cut].encode()):
                return TokenCheck()  # another session's token
        return TokenCheck(True, empty, expired)


def _decode(token: str) -> bytes | None:
    if not is_auth_token(token):
        return None
    try:
        data = base64.b64decode(token[len(SESSION_ID_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if len(data) == TOKEN_DATA_LEN else None


def push_options(token: str, username: str) -> list[str]:
    """What ``prepare_auth_token_push_reply`` pushes: the token and the user name it
    is bound to, base64 (so a client that had none knows whom it stands for)."""
    out = [f"auth-token {token}"]
    if username:
        out.append(f"auth-token-user {base64.b64encode(username.encode()).decode()}")
    return out


__all__ = ["SESSION_ID_PREFIX", "AuthTokenKey", "TokenCheck", "is_auth_token",
           "push_options"]
