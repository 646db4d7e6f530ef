"""Where the node, bonds and older callers find :func:`make_tunnel` and the replay-state
files: every point-to-point framing runs on :class:`tunconnector.tunnel.Tunnel`, the
choice and the OpenVPN connections are in :mod:`tunconnector.connections`."""

from .connections import (
    connection_factory,
    load_persisted,
    make_tunnel,
    save_persisted,
    uses_connection,
)

__all__ = ["connection_factory", "load_persisted", "make_tunnel", "save_persisted",
           "uses_connection"]
