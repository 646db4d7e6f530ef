"""Netlink configuration through pyroute2 (never ``ip``/``ifconfig`` subprocesses).

pyroute2 0.9.7 netlink sockets cannot open on a uvloop loop, so every call here is
synchronous and :class:`Netlink` runs them on one dedicated worker thread (which also
serialises them: netlink changes to one namespace never interleave).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink.exceptions import NetlinkError

from ..errors import DeviceError

T = TypeVar("T")
NETNS_DIR = "/var/run/netns"


@contextmanager
def ipr(netns: str | None = None) -> Iterator[Any]:
    """An IPRoute for the current namespace or a NetNS for a named one."""
    if netns is None:
        sock: Any = IPRoute()
    else:
        if not os.path.exists(os.path.join(NETNS_DIR, netns)):
            raise DeviceError(f"network namespace {netns!r} does not exist")
        sock = NetNS(netns)
    try:
        yield sock
    finally:
        sock.close()


def _index(sock: Any, name: str) -> int:
    found = sock.link_lookup(ifname=name)
    if not found:
        raise DeviceError(f"no interface named {name!r}")
    return int(found[0])


def link_exists(name: str, netns: str | None = None) -> bool:
    with ipr(netns) as sock:
        return bool(sock.link_lookup(ifname=name))


def move_to_netns(name: str, netns: str) -> None:
    """Move a link from the current namespace into ``netns`` (its fd keeps working)."""
    if not os.path.exists(os.path.join(NETNS_DIR, netns)):
        raise DeviceError(f"network namespace {netns!r} does not exist")
    with ipr() as sock:
        try:
            sock.link("set", index=_index(sock, name), net_ns_fd=netns)
        except NetlinkError as exc:
            raise DeviceError(f"{name}: cannot move to netns {netns!r}: {exc}") from exc


def configure(
    name: str,
    *,
    addresses: list[ipaddress.IPv4Interface | ipaddress.IPv6Interface],
    mtu: int | None,
    netns: str | None = None,
    up: bool = True,
) -> None:
    """Set MTU, addresses (idempotent) and admin state of ``name``."""
    with ipr(netns) as sock:
        idx = _index(sock, name)
        try:
            if mtu is not None:
                sock.link("set", index=idx, mtu=mtu)
            have = {
                (a.get("IFA_ADDRESS"), a["prefixlen"]) for a in sock.get_addr(index=idx)
            }
            for iface in addresses:
                key = (str(iface.ip), iface.network.prefixlen)
                if key in have:
                    continue
                kw: dict[str, Any] = {}
                if iface.version == 6:
                    kw["flags"] = 0x02  # IFA_F_NODAD: usable at once, no 1-2 s DAD wait
                sock.addr(
                    "add", index=idx, address=str(iface.ip),
                    prefixlen=iface.network.prefixlen, **kw,
                )
            sock.link("set", index=idx, state="up" if up else "down")
        except NetlinkError as exc:
            raise DeviceError(f"{name}: netlink configuration failed: {exc}") from exc


def set_state(name: str, up: bool, netns: str | None = None) -> None:
    with ipr(netns) as sock:
        try:
            sock.link("set", index=_index(sock, name), state="up" if up else "down")
        except NetlinkError as exc:
            raise DeviceError(f"{name}: cannot set link state: {exc}") from exc


def get_mtu(name: str, netns: str | None = None) -> int:
    with ipr(netns) as sock:
        link = sock.get_links(_index(sock, name))[0]
        return int(link.get("IFLA_MTU"))


def delete_link(name: str, netns: str | None = None) -> None:
    with ipr(netns) as sock:
        found = sock.link_lookup(ifname=name)
        if found:
            try:
                sock.link("del", index=found[0])
            except NetlinkError as exc:
                raise DeviceError(f"{name}: cannot delete: {exc}") from exc


class Netlink:
    """Runs the functions above on one worker thread, awaitable from any event loop."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
