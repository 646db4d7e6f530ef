"""Which object runs a tunnel config, and the connections of the OpenVPN framings.

:func:`make_tunnel` picks the adapter: a hub (``[[tunnel.peer]]`` tables), the OpenVPN
server, or :class:`~tunconnector.tunnel.Tunnel` for everything else, point-to-point
native, raw, simpletun and the OpenVPN framings (static key, TLS client) alike. For the
latter, :func:`connection_factory` loads the key material when the tunnel starts and
makes its sans-I/O connections (one per TCP stream on a server); :func:`device_mtu` is
the device MTU of any framing, :func:`connection_class` the class whose members the
adapter reads before a connection exists, and :func:`load_persisted` /
:func:`save_persisted` keep the replay state of ``openvpn_replay_persist`` across
restarts.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config import TunnelConfig
from .errors import ConfigError
from .proto.connection import Connection, ConnectionDefaults
from .proto.framing import (
    HEADER_LEN,
    PACKET_INFO_LEN,
    SIMPLETUN_PREFIX,
    TAG_LEN,
    TCP_NATIVE_PREFIX,
)

if TYPE_CHECKING:
    from .io import netlink as nl

log = logging.getLogger("tunconnector.tunnel")

#: a Connection for a tunnel, made when the transport opens (one per TCP stream on a server)
ConnectionFactory = Callable[[], Connection]

#: OpenVPN's default tun-mtu: both ends of an OpenVPN tunnel use it unless configured
OPENVPN_TUN_MTU = 1500
#: the underlay's MTU the native framings derive their device MTU from
UNDERLAY_MTU = 1500


def uses_connection(cfg: TunnelConfig) -> bool:
    """Whether ``cfg`` speaks an OpenVPN framing (its connections come from
    :func:`connection_factory`, not from the native protocol's classes)."""
    return cfg.framing == "openvpn" or bool(cfg.openvpn_config)


def device_mtu(cfg: TunnelConfig) -> int:
    """The device MTU of ``cfg``: configured, else an OpenVPN framing's what its peers
    use by default, a native framing's derived from the underlay (:func:`derive_mtu`)."""
    if uses_connection(cfg):
        return cfg.mtu if cfg.mtu is not None else OPENVPN_TUN_MTU
    return derive_mtu(cfg)


def overhead(cfg: TunnelConfig, ipv6: bool) -> int:
    """Bytes the underlay adds to one device frame."""
    ip = 40 if ipv6 else 20
    l4 = 8 if cfg.proto == "udp" else 20
    if cfg.framing == "raw":
        extra = PACKET_INFO_LEN if cfg.packet_info else 0
    elif cfg.framing == "simpletun":
        extra = SIMPLETUN_PREFIX.size
    else:
        extra = HEADER_LEN + (TCP_NATIVE_PREFIX.size if cfg.proto == "tcp" else 0)
        if cfg.key_file or cfg.private_key_file:
            extra += TAG_LEN
    return ip + l4 + extra


def derive_mtu(cfg: TunnelConfig, underlay_mtu: int = UNDERLAY_MTU) -> int:
    """Device MTU so one frame fits one underlay packet (TAP also carries 14 bytes of L2)."""
    if cfg.mtu is not None:
        return cfg.mtu
    ipv6 = False
    for host in (cfg.remote, cfg.bind):
        if host:
            try:
                ipv6 = ipaddress.ip_address(host).version == 6
            except ValueError:
                pass
    mtu = underlay_mtu - overhead(cfg, ipv6)
    if cfg.dev_type == "tap":
        mtu -= 14
    return mtu


def connection_class(cfg: TunnelConfig) -> type[ConnectionDefaults]:
    """The class of the connections that run ``cfg``: the adapter reads its class
    members (``takes_super``, ``stream_lane``, ``follows_answer`` ...) before any
    connection exists (the device opens first, a TCP server waits for its streams)."""
    if cfg.openvpn_config:
        from .proto.openvpn.client import OpenVPNClient

        return OpenVPNClient
    if uses_connection(cfg):
        from .proto.openvpn.static import StaticKeyConnection

        return StaticKeyConnection
    from .proto.native_conn import NativeConnection
    from .proto.plain_conn import RawConnection, SimpletunConnection

    return {"raw": RawConnection, "simpletun": SimpletunConnection}.get(
        cfg.framing, NativeConnection)


def connection_factory(cfg: TunnelConfig, *, clock_offset: float, max_frame: int, mtu: int,
                       remote: Any) -> ConnectionFactory | None:
    """Load the key material of ``cfg`` now (errors before any device opens) and return
    what makes its connections; None for the native framings (the adapter makes those
    with its own offload state)."""
    if not uses_connection(cfg):
        return None
    if cfg.openvpn_config:
        from .ovpnclient import tls_connection_factory

        return tls_connection_factory(cfg, remote)
    if cfg.framing == "openvpn" and cfg.openvpn_secret:
        from .keys import load_openvpn_key_file
        from .proto.openvpn.static import StaticKeyConnection

        key = load_openvpn_key_file(cfg.openvpn_secret)
        persist = cfg.openvpn_replay_persist

        def make() -> Connection:
            return StaticKeyConnection(
                key, direction=cfg.key_direction, cipher=cfg.openvpn_cipher,
                auth=cfg.openvpn_auth, mode=cfg.mode, remote=remote,
                stream=cfg.proto == "tcp", keepalive=cfg.keepalive,
                dead_after=cfg.dead_after, max_frame=max_frame, dev_type=cfg.dev_type,
                tun_mtu=mtu, clock_offset=clock_offset, allow_float=cfg.openvpn_float,
                persisted=None if persist is None else load_persisted(persist, cfg.name),
            )

        return make
    raise ConfigError(f"tunnel {cfg.name}: framing {cfg.framing!r} has no connection "
                      "implementation for these settings")


def load_persisted(path: str, tunnel: str) -> dict[str, Any]:
    """The replay state a previous process saved (``openvpn_replay_persist``); a missing
    file is a first start, an unreadable one is said and ignored."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("tunnel %s: replay state %s unreadable, starting afresh: %s", tunnel,
                    path, exc, extra={"tunnel": tunnel})
        return {}
    return data if isinstance(data, dict) else {}


def save_persisted(path: str, state: dict[str, Any]) -> None:
    """Write the replay state atomically (a crash leaves the old file or the new one)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def make_tunnel(cfg: TunnelConfig, *, netlink: nl.Netlink | None = None) -> Any:
    """The tunnel object for ``cfg``: a hub (a server with ``[[tunnel.peer]]`` tables:
    :class:`tunconnector.hub.Hub`), the OpenVPN server, or a :class:`Tunnel`."""
    if cfg.is_hub:
        from .hub import Hub

        return Hub(cfg, netlink=netlink)
    if cfg.openvpn_config and cfg.mode == "server":
        from .ovpnserver import OpenVPNServerTunnel

        return OpenVPNServerTunnel.from_tunnel_config(cfg, netlink=netlink)
    from .tunnel import Tunnel

    return Tunnel(cfg, netlink=netlink)
