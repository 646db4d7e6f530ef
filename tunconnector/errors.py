"""One exception hierarchy for the whole package.

``RemoteProtocolError`` means the peer (or an attacker) sent something we refuse: it is
counted and dropped, never fatal. ``LocalProtocolError`` means our own code tried to do
something the protocol forbids (a bug or a misuse of the API).
"""

from __future__ import annotations


class TunconnectorError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(TunconnectorError):
    """Bad configuration; the message names the key path (``tunnel[0].port``)."""


class DeviceError(TunconnectorError):
    """A TUN/TAP device or a netlink operation failed."""


class TransportError(TunconnectorError):
    """A socket could not be opened, bound or connected."""


class LocalProtocolError(TunconnectorError):
    """Our side tried something the protocol does not allow."""


class RemoteProtocolError(TunconnectorError):
    """The peer sent bytes we cannot accept.

    ``reason`` is a short stable token used as a drop-counter key (``bad_version``,
    ``truncated``, ``oversize`` ...).
    """

    def __init__(self, reason: str, message: str | None = None) -> None:
        super().__init__(message or reason)
        self.reason = reason


class CryptoError(TunconnectorError):
    """Key material is missing, malformed or unsafe, or authentication failed."""


class BondError(TunconnectorError):
    """A kernel bond could not be created or configured as asked."""
