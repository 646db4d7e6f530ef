"""Glue between a tunnel config with ``openvpn_config`` and the sans-I/O TLS client.

The adapter calls :func:`tls_connection_factory` when the tunnel starts: the ``.ovpn`` is
read again (so a fixed certificate is picked up on restart), every ``remote`` is resolved
(UDP tries them in turn on each reconnect; ``remote-random`` shuffles them once), and
the factory makes one :class:`OpenVPNClient` per transport connection.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Callable
from typing import Any

from .config import TunnelConfig
from .errors import ConfigError
from .ovpnconfig import COMMAND_LINE_KEY, OvpnConfig, load
from .proto.openvpn.client import OpenVPNClient

log = logging.getLogger("tunconnector.openvpn")


#: set to 1 to not announce TLS-EKM, so the server derives data keys with the PRF
#: (interop testing of the older key derivation against a 2.6 server)
ENV_NO_EKM = "TUNCONNECTOR_OPENVPN_NO_EKM"


def process_directives(ovpn: OvpnConfig) -> list[str]:
    """The process directives of ``ovpn`` (daemon, scripts, management, files)."""
    names = [d for d, on in (("daemon", ovpn.daemon), ("log", ovpn.log),
                             ("writepid", ovpn.writepid), ("status", ovpn.status),
                             ("management", ovpn.management)) if on]
    return names + list(ovpn.scripts)


def _resolve(host: str, port: int) -> list[Any]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except socket.gaierror:
        return []
    out = []
    for info in infos:
        addr = info[4]
        out.append((addr[0], addr[1]))
    return out[:1]


def tls_connection_factory(cfg: TunnelConfig, remote: Any) -> Callable[[], OpenVPNClient]:
    if not cfg.openvpn_config:
        raise ConfigError(f"tunnel {cfg.name}: no openvpn_config")
    ovpn = load(cfg.openvpn_config)
    process_only = process_directives(ovpn)
    if process_only and not cfg.openvpn_config.startswith(COMMAND_LINE_KEY):
        log.warning("tunnel %s: %s: %s take effect under `tunconnector openvpn` only (a "
                    "[[tunnel]] uses [tunnel.hooks], the control socket and the API)",
                    cfg.name, cfg.openvpn_config, ", ".join(process_only))
    opts = ovpn.options
    opts.allow_redirect_gateway = cfg.allow_redirect_gateway
    if os.environ.get(ENV_NO_EKM, "") not in ("", "0"):
        opts.offer_ekm = False
    remotes = ovpn.remote_list()
    if ovpn.remote_random:
        random.shuffle(remotes)
    peers: list[Any] = []
    if opts.proto == "udp":
        for r in remotes:
            if r.proto == "udp":
                peers += _resolve(r.host, r.port)
    if remote is not None and remote not in peers:
        peers.insert(0, remote)

    def make() -> OpenVPNClient:
        return OpenVPNClient(opts, peer=remote, peers=peers)

    return make
