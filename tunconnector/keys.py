"""Key material: generation, key files and building a :class:`SecureChannel` from config.

Keys are 32 bytes written as base64 on one line (the WireGuard ``wg genkey`` format).
A key file readable by group or others is refused, as ssh refuses such private keys.
Key bytes never appear in exceptions, logs or reprs.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .errors import CryptoError
from .proto.openvpn.keyfile import KEY_BYTES as STATIC_KEY_BYTES
from .proto.openvpn.keyfile import StaticKey, ascii_text, format_static_key, parse_static_key
from .proto.secure import HandshakeGuard, SecureChannel

KEY_LEN = 32

#: per tunnel config (by id): what to call when its hub assigns configuration (see
#: tunconnector.client_assign); registered by the Node, looked up for each new channel
ASSIGNMENT_HANDLERS: dict[int, Any] = {}


def encode_key(key: bytes) -> str:
    return base64.b64encode(key).decode()


def decode_key(text: str | bytes, what: str = "key") -> bytes:
    """Base64 text (surrounding whitespace ignored) to exactly 32 bytes."""
    text = ascii_text(text, f"{what}: not base64 text")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise CryptoError(f"{what}: not valid base64") from None
    if len(raw) != KEY_LEN:
        raise CryptoError(f"{what}: decodes to {len(raw)} bytes, expected {KEY_LEN}")
    return raw


def generate_psk() -> str:
    """A new pre-shared key: 32 random bytes, base64."""
    return encode_key(secrets.token_bytes(KEY_LEN))


def public_from_private(private: bytes | str) -> str:
    """Base64 X25519 public key for a private key (bytes or base64)."""
    raw = decode_key(private, "private key") if isinstance(private, str) else private
    if len(raw) != KEY_LEN:
        raise CryptoError(f"private key: {len(raw)} bytes, expected {KEY_LEN}")
    pub = X25519PrivateKey.from_private_bytes(raw).public_key()
    return encode_key(pub.public_bytes(Encoding.Raw, PublicFormat.Raw))


def generate_keypair() -> tuple[str, str]:
    """A new X25519 keypair as ``(private_b64, public_b64)``."""
    priv = secrets.token_bytes(KEY_LEN)
    return encode_key(priv), public_from_private(priv)


def load_key_file(path: str | os.PathLike[str], *, check_mode: bool = True) -> bytes:
    """Read a base64 key file; refuse it when group or others may read it."""
    return decode_key(read_private_file(path, check_mode=check_mode), f"{Path(path)}")


def read_private_file(path: str | os.PathLike[str], *, check_mode: bool = True,
                      limit: int = 4096) -> bytes:
    """The bytes of a key file; refused when it is not a regular file or when group or
    others may read it (as ssh refuses such private keys)."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise CryptoError(f"{p}: cannot open key file: {exc.strerror}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CryptoError(f"{p}: key file is not a regular file")
        if check_mode and st.st_mode & 0o077:
            raise CryptoError(
                f"{p}: permissions {stat.S_IMODE(st.st_mode):04o} are too open; "
                f"a key file must not be accessible by group or others "
                f"(run: chmod 600 {p})"
            )
        data = os.read(fd, limit)
    except OSError as exc:
        raise CryptoError(f"{p}: cannot read key file: {exc.strerror}") from exc
    finally:
        os.close(fd)
    return data


def load_openvpn_key_file(path: str | os.PathLike[str], *, check_mode: bool = True
                          ) -> StaticKey:
    """An OpenVPN Static key V1 file (``openvpn --genkey secret``), mode-checked."""
    return parse_static_key(read_private_file(path, check_mode=check_mode, limit=16384),
                            f"{Path(path)}")


def write_openvpn_key_file(path: str | os.PathLike[str]) -> None:
    """A new OpenVPN static key file (mode 0600) that openvpn ``--secret`` accepts."""
    write_private_file(path, format_static_key(secrets.token_bytes(STATIC_KEY_BYTES)))


def write_key_file(path: str | os.PathLike[str], key_b64: str) -> None:
    """Create a key file with mode 0600 (never world-readable, not even briefly)."""
    write_private_file(path, key_b64 + "\n")


def write_private_file(path: str | os.PathLike[str], text: str) -> None:
    """Create ``path`` with mode 0600 holding ``text``; an existing file is an error."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise CryptoError(f"{p}: cannot create key file: {exc.strerror}") from exc
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class TunnelKeys:
    """Key material of one tunnel, loaded once at start; its repr never shows keys."""

    __slots__ = ("psk", "private_key", "peer_public_key")

    def __init__(self, psk: bytes | None, private_key: bytes | None,
                 peer_public_key: bytes | None) -> None:
        self.psk = psk
        self.private_key = private_key
        self.peer_public_key = peer_public_key

    def __repr__(self) -> str:
        mode = "public-key" if self.private_key is not None else "psk"
        return f"TunnelKeys({mode}, psk={'set' if self.psk else 'unset'})"


def load_tunnel_keys(tunnel: Any) -> TunnelKeys | None:
    """Read a ``TunnelConfig``'s key files (``None`` when it sets no key).

    ``key_file`` alone: PSK mode. ``private_key_file`` + ``peer_public_key``: public-key
    mode, with ``key_file`` as an optional extra PSK.
    """
    key_file = getattr(tunnel, "key_file", None)
    priv_file = getattr(tunnel, "private_key_file", None)
    if not key_file and not priv_file:
        return None
    psk = load_key_file(key_file) if key_file else None
    priv = load_key_file(priv_file) if priv_file else None
    peer = None
    if priv is not None:
        peer_text = getattr(tunnel, "peer_public_key", None)
        if not peer_text:
            raise CryptoError("peer_public_key: required with private_key_file")
        peer = decode_key(peer_text, "peer_public_key")
    return TunnelKeys(psk, priv, peer)


def cpu_has_aes(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU has AES instructions (x86 ``aes`` flag, arm64 ``aes`` feature)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return "aes" in line.split(":", 1)[-1].split()
    except OSError:
        pass
    return False


def resolve_cipher(name: str) -> tuple[str, bool]:
    """``(cipher, negotiable)`` for a configured ``cipher``.

    ``auto`` (the default) prefers AES-256-GCM where the CPU has AES instructions (about
    25% cheaper than ChaCha20-Poly1305 there) and ChaCha20-Poly1305 elsewhere, and takes
    the peer's pick in the handshake, so two hosts with different CPUs, or an explicit
    cipher on one end, still agree. An explicit cipher is used as is.
    """
    if name != "auto":
        return name, False
    return ("aes-256-gcm" if cpu_has_aes() else "chacha20-poly1305"), True


def channel_from_config(
    tunnel: Any, *, keys: TunnelKeys | None = None, clock_offset: float = 0.0,
    guard: HandshakeGuard | None = None,
) -> SecureChannel | None:
    """A :class:`SecureChannel` for a ``TunnelConfig``, or ``None`` when no key is set.

    ``keys`` (from :func:`load_tunnel_keys`) avoids re-reading the files. The client
    initiates; ``clock_offset`` turns ``now`` into wall-clock time for the handshake
    timestamps (``time.time() - loop.time()``).
    """
    if keys is None:
        keys = load_tunnel_keys(tunnel)
        if keys is None:
            return None
    cipher, auto = resolve_cipher(getattr(tunnel, "cipher", "auto"))
    channel = SecureChannel(
        initiator=getattr(tunnel, "mode", "client") == "client",
        psk=keys.psk,
        private_key=keys.private_key,
        peer_public_key=keys.peer_public_key,
        cipher=cipher,
        cipher_auto=auto,
        rekey_after_time=getattr(tunnel, "rekey_after_time", 120.0),
        rekey_after_bytes=getattr(tunnel, "rekey_after_bytes", 1 << 36),
        stale_after=getattr(tunnel, "keepalive", 10.0) + 5.0,
        clock_offset=clock_offset,
        guard=guard,
    )
    channel.on_assigned = ASSIGNMENT_HANDLERS.get(id(tunnel))
    return channel
