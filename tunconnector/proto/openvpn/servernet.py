"""What openvpn's ``server``, ``server-ipv6`` and ``server-bridge`` expand to, sans I/O.

openvpn turns these one-line helpers into the server's own tunnel addresses, a pool,
routes and pushed options (``helper_client_server`` in src/openvpn/helper.c); clients
configure themselves from those pushed strings, so they are reproduced here word for
word and in openvpn's order. :func:`ifconfig_push` is the per-client half
(``multi_select_virtual_addr`` in multi.c, ``prepare_push_reply`` in push.c).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ...errors import ConfigError
from .ifpool import IfconfigPool, Lease

TOPOLOGIES = ("subnet", "net30", "p2p")


@dataclass(frozen=True, slots=True)
class ServerNet:
    """The expansion: the server's own addresses, its pool and the options it pushes
    to every client (before the per-client ones)."""

    #: the server's IPv4 on its device and the netmask (subnet/TAP) or the net30 peer
    local4: ipaddress.IPv4Address | None
    remote_netmask4: ipaddress.IPv4Address | None
    #: topology of a TUN server (TAP: None)
    topology: str | None
    #: IPv4 pool range and, for subnet/TAP, the netmask pushed with each address
    pool4: tuple[str, str] | None
    pool_netmask4: ipaddress.IPv4Address | None
    #: the server's IPv6 on its device, its prefix length, the pool's first address
    local6: ipaddress.IPv6Address | None
    netbits6: int
    pool6: tuple[str, int] | None
    #: pushed to every client, in openvpn's order
    push: tuple[str, ...]
    #: networks the server routes into its device (net30/p2p: the whole ``server`` net)
    routes: tuple[str, ...]

    def make_pool(self, duplicate_cn: bool = False) -> IfconfigPool | None:
        if self.pool4 is None and self.pool6 is None:
            return None
        # net30 hands out /30s; p2p, subnet and TAP single addresses (multi_init)
        return IfconfigPool(self.pool4, net30=self.topology == "net30", ipv6=self.pool6,
                            duplicate_cn=duplicate_cn)


def expand_server(network: str | None = None, *, tap: bool = False,
                  topology: str = "subnet", network6: str | None = None,
                  bridge: tuple[str, str, str, str] | None = None,
                  client_to_client: bool = False, nopool: bool = False,
                  pool: tuple[str, str, str | None] | None = None,
                  pool6: str | None = None, ifconfig6: str | None = None) -> ServerNet:
    """``server NETWORK MASK`` (as a prefix), ``server-ipv6 NET/BITS``, ``server-bridge
    IP MASK START END`` and ``topology`` as openvpn's ``helper_client_server``.

    Pushed, in order: ``tun-ipv6`` (server-ipv6); for net30/p2p ``route NET MASK`` with
    client-to-client, else (net30) ``route SERVER``, then ``topology net30``; for subnet
    ``route-gateway SERVER`` then ``topology subnet``; TAP and server-bridge only
    ``route-gateway``. (openvpn 2.6 defaults to net30 and warns; 2.7 to subnet.)
    ``server ... nopool`` with ``ifconfig-pool START END [NETMASK]`` (``pool``) gives an
    explicit IPv4 pool; without ``nopool`` that is an error, as in openvpn.
    ``ifconfig-ipv6-pool BASE/BITS`` (``pool6``) needs the server's own ``ifconfig-ipv6
    ADDR/BITS`` (``ifconfig6``) and excludes ``server-ipv6``.
    """
    if pool is not None and (bridge is not None or (network is not None and not nopool)):
        raise ConfigError("--server already defines an ifconfig-pool, so you can't also "
                          "specify --ifconfig-pool explicitly (use 'server ... nopool')")
    if topology not in TOPOLOGIES:
        raise ConfigError(f"topology {topology!r} is not one of {', '.join(TOPOLOGIES)}")
    push: list[str] = []
    local6 = None
    netbits6 = 0
    pool6_at: tuple[str, int] | None = None
    if network6 is not None:
        try:
            net6 = ipaddress.IPv6Network(network6, strict=False)
        except ValueError as exc:
            raise ConfigError(f"server-ipv6: bad network {network6!r} ({exc})") from None
        if not 64 <= net6.prefixlen <= 124:
            raise ConfigError(f"server-ipv6: /{net6.prefixlen} must be between /64 and /124")
        local6 = net6.network_address + 1
        netbits6 = net6.prefixlen
        pool6_at = (str(net6.network_address + (0x1000 if net6.prefixlen < 112 else 2)),
                    net6.prefixlen)
        push.append("tun-ipv6")
    if pool6 is not None:
        if network6 is not None:
            raise ConfigError("--server-ipv6 already defines an ifconfig-ipv6-pool, so "
                              "you can't also specify --ifconfig-ipv6-pool explicitly")
        if ifconfig6 is None:
            raise ConfigError("ifconfig-ipv6-pool needs the server's ifconfig-ipv6")
        try:
            base6 = ipaddress.IPv6Interface(pool6)
            own = ipaddress.IPv6Interface(ifconfig6)
        except ValueError as exc:
            raise ConfigError(f"ifconfig-ipv6-pool: {exc}") from None
        local6, netbits6 = own.ip, own.network.prefixlen
        pool6_at = (str(base6.ip), base6.network.prefixlen)
    if network is not None and bridge is not None:
        raise ConfigError("--server and --server-bridge cannot be used together")
    local4 = remote4 = netmask = None
    pool4 = None
    routes: list[str] = []
    top: str | None = None if tap else topology
    if network is not None:
        try:
            net = ipaddress.IPv4Network(network, strict=False)
        except ValueError as exc:
            raise ConfigError(f"server: bad network {network!r} ({exc})") from None
        if net.prefixlen < 16:
            raise ConfigError("server: netmask allows for too many host addresses "
                              "(subnet must be 255.255.0.0 or higher)")
        base, bcast = net.network_address, net.broadcast_address
        local4 = base + 1
        if tap:
            if net.prefixlen > 30:
                raise ConfigError("server: with dev tap the subnet must be /30 or larger")
        elif net.prefixlen > 29:
            raise ConfigError("server: with dev tun the subnet must be /29 or larger")
        if not tap and topology in ("net30", "p2p"):
            remote4 = base + 2
            pool4 = (str(base + 4), str(bcast - (0 if net.prefixlen == 29 else 4)))
            routes.append(str(net))
            if client_to_client:
                push.append(f"route {base} {net.netmask}")
            elif topology == "net30":
                push.append(f"route {base + 1}")
        else:
            remote4 = netmask = net.netmask
            pool4 = (str(base + 2), str(bcast - 1))
            push.append(f"route-gateway {base + 1}")
        if not tap:
            push.append(f"topology {topology}")
    elif bridge is not None:
        ip, mask, start, end = bridge
        try:
            gw, netmask = ipaddress.IPv4Address(ip), ipaddress.IPv4Address(mask)
            lan = ipaddress.IPv4Network(f"{gw}/{netmask}", strict=False)
            first, last = ipaddress.IPv4Address(start), ipaddress.IPv4Address(end)
        except ValueError as exc:
            raise ConfigError(f"server-bridge: {exc}") from None
        if first not in lan or last not in lan or gw in (first, last) or first > last:
            raise ConfigError(f"server-bridge: {ip}, {start} and {end} must share the "
                              f"subnet {lan} and the pool must not hold {ip}")
        pool4 = (start, end)
        push.append(f"route-gateway {gw}")
        top = None
    if nopool:
        pool4 = None
    if pool is not None:
        first_s, last_s, pool_mask = pool
        try:
            if ipaddress.IPv4Address(first_s) > ipaddress.IPv4Address(last_s):
                raise ValueError(f"{first_s} is after {last_s}")
            if pool_mask is not None:
                netmask = ipaddress.IPv4Address(pool_mask)
        except ValueError as exc:
            raise ConfigError(f"ifconfig-pool: {exc}") from None
        pool4 = (first_s, last_s)
    return ServerNet(local4, remote4, top, pool4, netmask, local6, netbits6, pool6_at,
                     tuple(push), tuple(routes))


def ifconfig_push(net: ServerNet, lease: Lease) -> list[str]:
    """A pool client's address options, in ``prepare_push_reply``'s order:
    ``ifconfig-ipv6 ADDR/BITS SERVER6`` then ``ifconfig ADDR NETMASK`` (subnet, TAP)
    or ``ifconfig ADDR GATEWAY`` (net30: the client and the .1 of its /30)."""
    out = []
    if lease.ipv6 is not None and net.local6 is not None:
        out.append(f"ifconfig-ipv6 {lease.ipv6}/{net.netbits6} {net.local6}")
    if lease.ipv4 is not None:
        other = net.pool_netmask4 if net.pool_netmask4 is not None else (
            lease.ipv4_peer if net.topology == "net30" else net.local4)
        if other is not None:
            out.append(f"ifconfig {lease.ipv4} {other}")
    return out


def address_env(net: ServerNet, ifconfig: list[str]) -> dict[str, str]:
    """The variables openvpn's ``multi_set_virtual_addr_env`` gives client-connect and
    client-disconnect, from a client's ``ifconfig`` / ``ifconfig-ipv6`` options:
    ``ifconfig_pool_remote_ip`` (the client) with ``ifconfig_pool_netmask`` (subnet,
    TAP) or ``ifconfig_pool_local_ip`` (net30, p2p: the other end);
    ``ifconfig_pool_remote_ip6``, ``ifconfig_pool_local_ip6``,
    ``ifconfig_pool_ip6_netbits``."""
    env: dict[str, str] = {}
    for line in ifconfig:
        words = line.split()
        if words[0] == "ifconfig" and len(words) == 3:
            env["ifconfig_pool_remote_ip"] = words[1]
            key = "ifconfig_pool_netmask" if net.topology in (None, "subnet") \
                else "ifconfig_pool_local_ip"
            env[key] = words[2]
        elif words[0] == "ifconfig-ipv6" and len(words) == 3:
            addr, _, bits = words[1].partition("/")
            env.update(ifconfig_pool_remote_ip6=addr, ifconfig_pool_local_ip6=words[2],
                       ifconfig_pool_ip6_netbits=bits)
    return env


__all__ = ["TOPOLOGIES", "ServerNet", "address_env", "expand_server", "ifconfig_push"]
