"""What the TCP and UDP underlays share when they bind: the wildcard host and the wording
of the refusals both report alike, so an operator reads the same message for either."""

from __future__ import annotations

import errno
import socket

from ..errors import TransportError


def bind_host(bind: str | None, family: int) -> str:
    """``bind``, or the wildcard of ``family`` when none is given."""
    if bind is not None:
        return bind
    return "::" if family == socket.AF_INET6 else "0.0.0.0"


def bind_error(exc: OSError, proto: str, bind: str | None, port: int) -> TransportError | None:
    """The error for a port in use or an address not on this host; None for other errnos,
    which each transport words itself."""
    if exc.errno == errno.EADDRINUSE:
        return TransportError(f"{proto} port {port} on {bind or 'any'} is already in use")
    if exc.errno == errno.EADDRNOTAVAIL:
        return TransportError(f"cannot bind {proto} to {bind}: address not on this host")
    return None
