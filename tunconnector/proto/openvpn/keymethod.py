"""Key method 2 (the first message each side sends inside TLS) and data-key derivation.

The client sends ``u32 0 | 2 | pre-master (48) | random1 (32) | random2 (32)`` then four
length-prefixed strings (options, username, password, peer-info); the server the same
without the pre-master. The 256 bytes of data keys (client-to-server cipher 64 + HMAC 64,
then server-to-client) come from the TLS exporter (label ``EXPORTER-OpenVPN-datakeys``)
when the server agrees (``key-derivation tls-ekm``), else from OpenVPN's use of the TLS 1.0
PRF over those randoms and both session ids.
"""

from __future__ import annotations

import hmac
import struct
from dataclasses import dataclass

from ...errors import RemoteProtocolError

KEY_METHOD_2 = 2
EKM_LABEL = b"EXPORTER-OpenVPN-datakeys"
KEY_MATERIAL_LEN = 256


def write_string(s: str | None) -> bytes:
    """u16 length (with the NUL) then the bytes and a NUL; ``None`` is a bare u16 0."""
    if s is None:
        return b"\x00\x00"
    raw = s.encode() + b"\x00"
    return struct.pack("!H", len(raw)) + raw


def read_string(buf: bytes, pos: int) -> tuple[str, int]:
    if len(buf) < pos + 2:
        raise RemoteProtocolError("truncated", "string length cut short")
    (n,) = struct.unpack_from("!H", buf, pos)
    pos += 2
    if len(buf) < pos + n:
        raise RemoteProtocolError("truncated", "string cut short")
    raw = buf[pos : pos + n]
    return raw.rstrip(b"\x00").decode(errors="replace"), pos + n


@dataclass(frozen=True, slots=True)
class KeySource:
    """One side's random material for one key state."""

    random1: bytes
    random2: bytes
    pre_master: bytes = b""


def client_message(src: KeySource, options: str, username: str | None, password: str | None,
                   peer_info: str) -> bytes:
    if len(src.pre_master) != 48 or len(src.random1) != 32 or len(src.random2) != 32:
        raise ValueError("bad key source lengths")
    parts = [struct.pack("!IB", 0, KEY_METHOD_2), src.pre_master, src.random1, src.random2,
             write_string(options)]
    if username is not None:
        parts += [write_string(username), write_string(password or "")]
    else:
        parts += [write_string(None), write_string(None)]
    parts.append(write_string(peer_info))
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class ServerKeyMessage:
    source: KeySource
    options: str
    length: int


def parse_server_message(buf: bytes) -> ServerKeyMessage | None:
    """The server's key-method-2 message at the start of ``buf``; None when incomplete.

    The message has no overall length: incomplete means the options string is not all
    there yet. Any trailing strings the server adds are consumed when present.
    """
    if len(buf) < 5 + 64 + 2:
        return None
    zero, method = struct.unpack_from("!IB", buf, 0)
    if zero != 0 or method != KEY_METHOD_2:
        raise RemoteProtocolError("bad_key_method", f"server key method {method}")
    random1, random2 = bytes(buf[5:37]), bytes(buf[37:69])
    try:
        options, pos = read_string(buf, 69)
    except RemoteProtocolError:
        return None
    # optional username/password/peer-info strings follow on some servers: skip if whole
    for _ in range(3):
        try:
            _, pos = read_string(buf, pos)
        except RemoteProtocolError:
            break
    return ServerKeyMessage(KeySource(random1, random2), options, pos)


def _p_hash(name: str, secret: bytes, seed: bytes, n: int) -> bytes:
    out = b""
    a = seed
    while len(out) < n:
        a = hmac.new(secret, a, name).digest()
        out += hmac.new(secret, a + seed, name).digest()
    return out[:n]


def tls1_prf(secret: bytes, seed: bytes, n: int) -> bytes:
    """The TLS 1.0 PRF: P_MD5 over the first half of the secret XOR P_SHA1 over the second."""
    half = (len(secret) + 1) // 2
    md5 = _p_hash("md5", secret[:half], seed, n)
    sha = _p_hash("sha1", secret[len(secret) - half :], seed, n)
    return bytes(x ^ y for x, y in zip(md5, sha, strict=True))


def prf_key_material(client: KeySource, server: KeySource, client_sid: bytes,
                     server_sid: bytes) -> bytes:
    """OpenVPN's PRF-based 256 bytes of data keys (used when TLS-EKM is not agreed)."""
    master = tls1_prf(client.pre_master,
                      b"OpenVPN master secret" + client.random1 + server.random1, 48)
    return tls1_prf(master,
                    b"OpenVPN key expansion" + client.random2 + server.random2
                    + client_sid + server_sid, KEY_MATERIAL_LEN)


@dataclass(frozen=True, slots=True)
class DirectionKeys:
    cipher: bytes
    hmac: bytes


def split_key_material(material: bytes) -> tuple[DirectionKeys, DirectionKeys]:
    """(client-to-server, server-to-client) halves of the 256 bytes."""
    if len(material) != KEY_MATERIAL_LEN:
        raise ValueError("key material must be 256 bytes")
    return (DirectionKeys(material[0:64], material[64:128]),
            DirectionKeys(material[128:192], material[192:256]))


# -- the server's side: read the client's message, write ours -----------------------------

#: openvpn refuses longer user names and passwords (USER_PASS_LEN) and options strings
MAX_USER_PASS = 128
MAX_OPTIONS = 256 * 1024


@dataclass(frozen=True, slots=True)
class ClientKeyMessage:
    source: KeySource
    options: str
    username: str | None
    password: str | None
    peer_info: str
    length: int

    def peer_info_map(self) -> dict[str, str]:
        """Peer-info lines ``KEY=value`` as a mapping (IV_PROTO, IV_CIPHERS, ...)."""
        out: dict[str, str] = {}
        for line in self.peer_info.splitlines():
            key, sep, value = line.partition("=")
            if sep and key:
                out[key.strip()] = value.strip()
        return out


def _read_optional(buf: bytes, pos: int) -> tuple[str | None, int]:
    """A string that may be absent (a bare u16 0): None then."""
    if len(buf) >= pos + 2 and buf[pos : pos + 2] == b"\x00\x00":
        return None, pos + 2
    return read_string(buf, pos)


def parse_client_message(buf: bytes) -> ClientKeyMessage | None:
    """The client's key-method-2 message at the start of ``buf``; None when incomplete.

    The message has no overall length, so it is complete once its four strings are;
    a server never waits for more than the client could send (options and credentials
    are bounded), beyond that the message is refused.
    """
    head = 5 + 48 + 64
    if len(buf) < head:
        return None
    zero, method = struct.unpack_from("!IB", buf, 0)
    if zero != 0 or (method & 0x0F) != KEY_METHOD_2:
        raise RemoteProtocolError("bad_key_method", f"client key method {method}")
    src = KeySource(bytes(buf[53:85]), bytes(buf[85:117]), bytes(buf[5:53]))
    try:
        options, pos = read_string(buf, head)
        username, pos = _read_optional(buf, pos)
        password, pos = _read_optional(buf, pos)
        peer_info, pos = _read_optional(buf, pos)
    except RemoteProtocolError:
        if len(buf) > MAX_OPTIONS + 4 * MAX_USER_PASS + 65536:
            raise RemoteProtocolError("bad_key_method", "client key message too long") from None
        return None
    return ClientKeyMessage(src, options, username, password, peer_info or "", pos)


def server_message(src: KeySource, options: str) -> bytes:
    """The server's key-method-2 message: no pre-master, no credentials, no peer-info
    (as an openvpn ``--server`` writes it)."""
    if len(src.random1) != 32 or len(src.random2) != 32:
        raise ValueError("bad key source lengths")
    return b"".join([struct.pack("!IB", 0, KEY_METHOD_2), src.random1, src.random2,
                     write_string(options), write_string(None), write_string(None),
                     write_string(None)])
