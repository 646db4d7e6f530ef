"""PUSH_REPLY: what an OpenVPN server tells its client (addresses, routes, cipher, timers).

The reply is ``PUSH_REPLY,opt,opt,...``; a long one comes in several messages, all but the
last ending with ``push-continuation 2``. We turn the options we understand into a
:class:`PushReply`; the rest are kept in ``ignored`` for the log, never fatal, since
servers push many client-side hints (dhcp-option, block-outside-dns ...).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from ...errors import RemoteProtocolError


@dataclass(slots=True)
class PushReply:
    options: list[list[str]] = field(default_factory=list)
    ifconfig: tuple[str, str] | None = None
    ifconfig_ipv6: tuple[str, str | None] | None = None
    topology: str | None = None
    route_gateway: str | None = None
    routes: list[tuple[str, str | None]] = field(default_factory=list)
    routes_ipv6: list[tuple[str, str | None]] = field(default_factory=list)
    redirect_gateway: list[str] | None = None
    peer_id: int | None = None
    cipher: str | None = None
    ping: int | None = None
    ping_restart: int | None = None
    tun_mtu: int | None = None
    key_derivation: str | None = None
    protocol_flags: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def addresses(self, tap: bool) -> tuple[str, ...]:
        """Interface addresses with prefix: subnet mask, or net30/p2p as local/30-ish.

        A pushed value that is no address or mask raises RemoteProtocolError."""
        try:
            return self._addresses(tap)
        except ValueError as exc:  # ipaddress's AddressValueError, NetmaskValueError
            raise RemoteProtocolError("bad_push", f"pushed ifconfig: {exc}") from None

    def _addresses(self, tap: bool) -> tuple[str, ...]:
        out: list[str] = []
        if self.ifconfig:
            local, second = self.ifconfig
            if tap or self.topology == "subnet" or _looks_like_mask(second):
                net = ipaddress.IPv4Network(f"0.0.0.0/{second}")
                out.append(f"{local}/{net.prefixlen}")
            else:
                # net30 / p2p: the peer is the other end of a /30 (or a /32 pair)
                a = ipaddress.IPv4Address(local)
                b = ipaddress.IPv4Address(second)
                plen = 30
                while plen > 0 and (
                    ipaddress.IPv4Network(f"{a}/{plen}", strict=False)
                    != ipaddress.IPv4Network(f"{b}/{plen}", strict=False)
                ):
                    plen -= 1
                out.append(f"{local}/{plen}")
        if self.ifconfig_ipv6:
            out.append(self.ifconfig_ipv6[0])
        return tuple(out)

    def default_gateway(self) -> str | None:
        if self.route_gateway:
            return self.route_gateway
        if self.ifconfig and not _looks_like_mask(self.ifconfig[1]):
            return self.ifconfig[1]
        return None


def _looks_like_mask(s: str) -> bool:
    try:
        ipaddress.IPv4Network(f"0.0.0.0/{s}")
    except ValueError:
        return False
    return s.startswith("255.") or s == "0.0.0.0"


def _int(arg: list[str], name: str) -> int:
    try:
        return int(arg[1])
    except (IndexError, ValueError):
        raise RemoteProtocolError("bad_push", f"pushed {name} without a number") from None


def parse_options(text: str) -> list[list[str]]:
    """Split a PUSH_REPLY body (without the ``PUSH_REPLY`` tag) into option word lists."""
    return [opt.split() for opt in text.split(",") if opt.strip()]


def apply(reply: PushReply, options: list[list[str]]) -> None:
    """Fold pushed options into ``reply`` (later values win, routes accumulate)."""
    for opt in options:
        name = opt[0]
        reply.options.append(opt)
        try:
            if name == "ifconfig" and len(opt) >= 3:
                ipaddress.IPv4Address(opt[1])
                reply.ifconfig = (opt[1], opt[2])
            elif name == "ifconfig-ipv6" and len(opt) >= 2:
                ipaddress.IPv6Interface(opt[1])
                reply.ifconfig_ipv6 = (opt[1], opt[2] if len(opt) > 2 else None)
            elif name == "topology" and len(opt) >= 2:
                reply.topology = opt[1]
            elif name == "route-gateway" and len(opt) >= 2:
                if opt[1] != "dhcp":
                    ipaddress.IPv4Address(opt[1])
                    reply.route_gateway = opt[1]
            elif name == "route" and len(opt) >= 2:
                mask = opt[2] if len(opt) > 2 and opt[2] != "default" else "255.255.255.255"
                net = ipaddress.IPv4Network(f"{opt[1]}/{mask}", strict=False)
                gw = opt[3] if len(opt) > 3 and opt[3] not in ("default", "vpn_gateway") else None
                if gw is not None:
                    ipaddress.IPv4Address(gw)
                reply.routes.append((str(net), gw))
            elif name == "route-ipv6" and len(opt) >= 2:
                net6 = ipaddress.IPv6Network(opt[1], strict=False)
                reply.routes_ipv6.append((str(net6), opt[2] if len(opt) > 2 else None))
            elif name == "redirect-gateway":
                reply.redirect_gateway = opt[1:]
            elif name == "peer-id":
                reply.peer_id = _int(opt, name) & 0xFFFFFF
            elif name == "cipher" and len(opt) >= 2:
                reply.cipher = opt[1].upper()
            elif name == "ping":
                reply.ping = _int(opt, name)
            elif name == "ping-restart":
                reply.ping_restart = _int(opt, name)
            elif name == "tun-mtu":
                reply.tun_mtu = _int(opt, name)
            elif name == "key-derivation" and len(opt) >= 2:
                reply.key_derivation = opt[1]
            elif name == "protocol-flags":
                reply.protocol_flags = opt[1:]
            elif name == "dhcp-option":
                reply.extra.setdefault("dhcp_option", []).append(" ".join(opt[1:]))
            elif name in ("push-continuation", "auth-token", "auth-token-user"):
                pass  # the client takes auth-token from the message itself
            else:
                reply.ignored.append(" ".join(opt))
        except ValueError:
            raise RemoteProtocolError("bad_push", f"cannot use pushed {' '.join(opt)!r}") from None


def continuation(options: list[list[str]]) -> bool:
    """True when more PUSH_REPLY messages follow (``push-continuation 2``)."""
    for opt in options:
        if opt[0] == "push-continuation" and len(opt) > 1 and opt[1] == "2":
            return True
    return False


# -- what a pushed configuration must not do to the client's own path to the server -----

def _net(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)


def routes_covering(routes: list[tuple[str, str | None]] | tuple[tuple[str, str | None], ...],
                    server: str) -> list[str]:
    """The pushed destinations that contain ``server``: installed as they are, they send
    the tunnel's own encrypted packets into the tunnel (a loop)."""
    try:
        addr = ipaddress.ip_address(server)
    except ValueError:
        return []
    out = []
    for dst, _ in routes:
        try:
            net = _net(dst)
        except ValueError:
            continue
        if net.version == addr.version and addr in net:
            out.append(str(net))
    return out


def ifconfig_conflict(addresses: tuple[str, ...] | list[str], server: str) -> str | None:
    """Why a pushed interface address cannot be used, or None: it is the server's own
    underlay address, or its subnet contains it (every packet to the server, reconnects
    included, would then go to ourselves or into the tunnel)."""
    try:
        addr = ipaddress.ip_address(server)
    except ValueError:
        return None
    for a in addresses:
        try:
            iface = ipaddress.ip_interface(a)
        except ValueError:
            continue
        if iface.version != addr.version:
            continue
        if iface.ip == addr:
            return (f"server pushed ifconfig {a}: that is the server's own address {server}: "
                    "refused")
        if addr in iface.network and iface.network.prefixlen < iface.max_prefixlen:
            return (f"server pushed ifconfig {a}: its subnet {iface.network} contains the "
                    f"server's address {server}: refused")
    return None


def underlay_overlaps(addresses: tuple[str, ...] | list[str],
                      underlay: list[str]) -> list[tuple[str, str]]:
    """(pushed address, underlay interface address) pairs whose subnets overlap: the
    pushed subnet shadows part of the local network (worth a warning, not fatal)."""
    out = []
    for a in addresses:
        try:
            pushed = ipaddress.ip_interface(a).network
        except ValueError:
            continue
        for u in underlay:
            try:
                local = ipaddress.ip_interface(u).network
            except ValueError:
                continue
            if local.version == pushed.version and local.overlaps(pushed) \
                    and not local.is_loopback:
                out.append((a, u))
    return out
