"""What a hub hands a client in its handshake response: address, routes, MTU.

Carried inside the encrypted, authenticated payload of the Noise response, so it needs
no round trip of its own and nobody on the path can alter it. Encoding: compact JSON
(``{"a": "10.220.0.5/24", "r": ["10.220.0.0/24"], "m": 1420}``), at most
:data:`MAX_ASSIGNMENT` bytes; anything else is a :class:`RemoteProtocolError`.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from ..errors import RemoteProtocolError

MAX_ASSIGNMENT = 8192


@dataclass(frozen=True, slots=True)
class Assignment:
    """``address`` with prefix (``10.220.0.5/24``) or None, ``routes`` as networks,
    ``gateway`` the next hop for them (a TAP hub's address) or None (via the device)."""

    address: str | None = None
    routes: tuple[str, ...] = ()
    mtu: int | None = None
    gateway: str | None = None

    def encode(self, reset_token: bytes | None = None) -> bytes:
        """``reset_token``: the session's SESSION_RESET token (key ``t``, hex; clients
        that do not know the key ignore it)."""
        doc: dict[str, object] = {}
        if reset_token is not None:
            doc["t"] = reset_token.hex()
        if self.address is not None:
            doc["a"] = self.address
        if self.routes:
            doc["r"] = list(self.routes)
        if self.mtu is not None:
            doc["m"] = self.mtu
        if self.gateway is not None:
            doc["g"] = self.gateway
        out = json.dumps(doc, separators=(",", ":")).encode()
        if len(out) > MAX_ASSIGNMENT:  # too many routes: keep what fits, say so in the log
            routes = list(self.routes)
            while routes and len(out) > MAX_ASSIGNMENT:
                routes = routes[: len(routes) * 3 // 4]
                doc["r"] = routes
                out = json.dumps(doc, separators=(",", ":")).encode()
        return out

    @classmethod
    def decode(cls, data: bytes) -> Assignment:
        if len(data) > MAX_ASSIGNMENT:
            raise RemoteProtocolError("bad_assignment", "assignment too long")
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise RemoteProtocolError("bad_assignment", "assignment is not JSON") from exc
        if not isinstance(doc, dict):
            raise RemoteProtocolError("bad_assignment", "assignment is not an object")
        address = doc.get("a")
        routes = doc.get("r", [])
        mtu = doc.get("m")
        gateway = doc.get("g")
        try:
            if gateway is not None:
                if not isinstance(gateway, str):
                    raise ValueError(gateway)
                ipaddress.ip_address(gateway)
            if address is not None:
                if not isinstance(address, str):
                    raise ValueError(address)
                ipaddress.ip_interface(address)
            if not isinstance(routes, list):
                raise ValueError(routes)
            for r in routes:
                if not isinstance(r, str):
                    raise ValueError(r)
                ipaddress.ip_network(r, strict=False)
            if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)
                                    or not 68 <= mtu <= 65535):
                raise ValueError(mtu)
        except ValueError as exc:
            raise RemoteProtocolError("bad_assignment", "malformed assignment") from exc
        return cls(address, tuple(routes), mtu, gateway)


__all__ = ["MAX_ASSIGNMENT", "Assignment"]


def reset_token_of(data: bytes) -> bytes | None:
    """The reset token (``t``) of an encoded assignment; None when absent or malformed
    (the assignment itself is checked by :meth:`Assignment.decode`)."""
    if len(data) > MAX_ASSIGNMENT:
        return None
    try:
        doc = json.loads(data)
        token = bytes.fromhex(doc["t"]) if isinstance(doc, dict) and isinstance(
            doc.get("t"), str) else None
    except (ValueError, UnicodeDecodeError):
        return None
    return token if token is not None and len(token) == 16 else None
