"""Routes via a tunnel device (pyroute2): a hub's routes to its peers' networks, a
client's routes handed out by its hub. Synchronous; run on the Netlink worker thread.

Adding a route that exists and deleting one that is gone are not errors (the device
may have taken its routes with it when it went down).
"""

from __future__ import annotations

import errno
import ipaddress
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from ..errors import DeviceError
from .netlink import _index, _set_link, ipr


def _route_args(idx: int, net: str, gateway: str | None) -> dict[str, Any]:
    n = ipaddress.ip_network(net, strict=False)
    kw: dict[str, Any] = {"dst": str(n.network_address), "dst_len": n.prefixlen, "oif": idx}
    if n.version == 6:
        kw["family"] = 10
    if gateway is not None and ipaddress.ip_address(gateway).version == n.version:
        kw["gateway"] = gateway
    return kw


def add_routes(device: str, nets: list[str], *, gateway: str | None = None,
               netns: str | None = None) -> list[str]:
    """Add routes to ``nets`` via ``device``; returns the ones added (not pre-existing)."""
    added = []
    with ipr(netns) as sock:
        idx = _index(sock, device)
        for net in nets:
            try:
                sock.route("add", **_route_args(idx, net, gateway))
                added.append(net)
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    continue
                raise DeviceError(f"{device}: cannot add route {net}: {exc}") from exc
    return added


def del_routes(device: str, nets: list[str], *, gateway: str | None = None,
               netns: str | None = None) -> None:
    """Remove routes to ``nets`` via ``device`` (missing ones and a missing device are fine)."""
    with ipr(netns) as sock:
        found = sock.link_lookup(ifname=device)
        if not found:
            return
        for net in nets:
            try:
                sock.route("del", **_route_args(int(found[0]), net, gateway))
            except NetlinkError as exc:
                if exc.code not in (errno.ESRCH, errno.ENOENT, errno.ENODEV):
                    raise DeviceError(f"{device}: cannot remove route {net}: {exc}") from exc


def set_addresses(device: str, *, add: list[str], remove: list[str],
                  netns: str | None = None) -> None:
    """Add and remove interface addresses (``10.220.0.5/24``) on ``device``."""
    with ipr(netns) as sock:
        idx = _index(sock, device)
        for text in remove:
            iface = ipaddress.ip_interface(text)
            try:
                sock.addr("del", index=idx, address=str(iface.ip),
                          prefixlen=iface.network.prefixlen)
            except NetlinkError as exc:
                if exc.code not in (errno.EADDRNOTAVAIL, errno.ENOENT):
                    raise DeviceError(f"{device}: cannot remove {text}: {exc}") from exc
        for text in add:
            iface = ipaddress.ip_interface(text)
            kw: dict[str, Any] = {"flags": 0x02} if iface.version == 6 else {}
            try:
                sock.addr("add", index=idx, address=str(iface.ip),
                          prefixlen=iface.network.prefixlen, **kw)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise DeviceError(f"{device}: cannot add {text}: {exc}") from exc


def set_mtu(device: str, mtu: int, netns: str | None = None) -> None:
    _set_link(device, f"set MTU {mtu}", netns, mtu=mtu)
