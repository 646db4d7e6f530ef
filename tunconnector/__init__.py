"""tunconnector: TUN/TAP tunnels over UDP/TCP, optionally encrypted, bonded into multi-links.

Library face::

    async with tunconnector.Node(config) as node:
        await node.tunnel("x").wait_up()
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any  # noqa: E402

from .config import Config, TunnelConfig  # noqa: E402
from .errors import (  # noqa: E402
    BondError,
    ConfigError,
    CryptoError,
    DeviceError,
    LocalProtocolError,
    RemoteProtocolError,
    TransportError,
    TunconnectorError,
)

if TYPE_CHECKING:
    from .node import Node, serve
    from .tunnel import State, Tunnel

#: imported on first use: the CLI's quick commands (``status``, ``genkey``) start in a
#: fraction of the time without the daemon's modules (pyroute2 alone costs ~0.5 s)
_LAZY = {"Node": ".node", "serve": ".node", "State": ".tunnel", "Tunnel": ".tunnel"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BondError",
    "Config",
    "ConfigError",
    "CryptoError",
    "DeviceError",
    "LocalProtocolError",
    "Node",
    "State",
    "Tunnel",
    "serve",
    "RemoteProtocolError",
    "TransportError",
    "TunconnectorError",
    "TunnelConfig",
    "__version__",
]
