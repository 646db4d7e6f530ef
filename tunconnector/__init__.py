"""tunconnector: TUN/TAP tunnels over UDP/TCP, optionally encrypted, bonded into multi-links.

Library face::

    async with tunconnector.Node(config) as node:
        await node.tunnel("x").wait_up()
"""

from __future__ import annotations

__version__ = "0.1.0"

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
from .node import Node, serve  # noqa: E402
from .tunnel import State, Tunnel  # noqa: E402

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
