"""A pushed tunnel configuration on the device: what a :class:`ConfigAssigned` asks for
(addresses, MTU, routes), applied with netlink and undone when the tunnel stops.

Everything here runs on the netlink thread (``Netlink.call``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from ..proto.connection import ConfigAssigned
from ..proto.openvpn import push
from . import netlink as nl


@dataclass(slots=True)
class Applied:
    """What :func:`apply_assigned` did: routes installed, routes that were already there
    (not ours to remove), pushed routes covering the server and the host route kept to it
    on the underlay (``bypass``: the kwargs it was added with), address overlaps."""

    installed: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    covering: list[str] = field(default_factory=list)
    bypass: dict[str, Any] | None = None
    bypass_text: str = ""
    overlaps: list[tuple[str, str]] = field(default_factory=list)


def _underlay_route(sock: Any, server: str, tun_idx: int) -> dict[str, Any] | None:
    """The route the kernel uses to reach ``server`` now, as kwargs for a host route
    (None: none, or only through the tunnel itself)."""
    addr = ipaddress.ip_address(server)
    try:
        msgs = sock.route("get", dst=server)
    except NetlinkError:
        return None
    for m in msgs:
        oif = m.get_attr("RTA_OIF")
        if oif is None or oif == tun_idx:
            continue
        kw: dict[str, Any] = {"dst": f"{server}/{addr.max_prefixlen}", "oif": oif}
        gw = m.get_attr("RTA_GATEWAY")
        if gw:
            kw["gateway"] = gw
        return kw
    return None


def apply_assigned(name: str, ev: ConfigAssigned, netns: str | None = None,
                   server: str | None = None) -> Applied:
    """Addresses, MTU and routes of a :class:`ConfigAssigned` on device ``name``
    (runs on the netlink thread). Pushed routes that cover ``server`` (the tunnel's own
    underlay peer) get a host route to it via its current underlay path first; without
    one they are refused."""
    done = Applied()
    ifaces = [ipaddress.ip_interface(a) for a in ev.addresses]
    with nl.ipr(netns) as sock:
        idx = sock.link_lookup(ifname=name)[0]
        underlay = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in sock.get_addr()
                    if a["index"] != idx and a.get_attr("IFA_ADDRESS")]
        done.overlaps = push.underlay_overlaps(list(ev.addresses), underlay)
        routes = list(ev.routes)
        if server:
            done.covering = push.routes_covering(routes, server)
            if done.covering:
                kw = _underlay_route(sock, server, idx)
                if kw is None:
                    routes = [r for r in routes
                              if str(ipaddress.ip_network(r[0], strict=False))
                              not in done.covering]
                else:
                    try:
                        sock.route("add", **kw)
                        done.bypass = kw
                    except NetlinkError as exc:
                        if exc.code != 17:  # EEXIST: a host route is there already
                            raise
                    done.bypass_text = f"{kw['dst']}" + (
                        f" via {kw['gateway']}" if kw.get("gateway") else "") + \
                        f" ifindex {kw['oif']}"
    nl.configure(name, addresses=ifaces, mtu=ev.mtu, netns=netns)
    with nl.ipr(netns) as sock:
        for dst, gateway in routes:
            net = str(ipaddress.ip_network(dst, strict=False))
            kw = {"dst": net, "oif": idx}
            if gateway:
                kw["gateway"] = gateway
            try:
                sock.route("add", **kw)
                done.installed.append(net)
            except NetlinkError as exc:
                if exc.code != 17:  # EEXIST: already there, and not ours
                    raise
                done.existing.append(net)
    return done


def remove_assigned(name: str, ev: ConfigAssigned, netns: str | None = None,
                    done: Applied | None = None) -> None:
    """Undo :func:`apply_assigned` (what is already gone is fine; routes that existed
    before are left alone)."""
    with nl.ipr(netns) as sock:
        if done is not None and done.bypass is not None:
            try:
                sock.route("del", **done.bypass)
            except NetlinkError:
                pass
        found = sock.link_lookup(ifname=name)
        if not found:
            return
        idx = found[0]
        for dst, gateway in ev.routes:
            net = str(ipaddress.ip_network(dst, strict=False))
            if done is not None and net not in done.installed:
                continue
            kw: dict[str, Any] = {"dst": net, "oif": idx}
            if gateway:
                kw["gateway"] = gateway
            try:
                sock.route("del", **kw)
            except NetlinkError:
                pass
        for a in ev.addresses:
            iface = ipaddress.ip_interface(a)
            try:
                sock.addr("del", index=idx, address=str(iface.ip),
                          prefixlen=iface.network.prefixlen)
            except NetlinkError:
                pass
