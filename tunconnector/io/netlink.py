"""Netlink configuration through pyroute2 (never ``ip``/``ifconfig`` subprocesses).

pyroute2 0.9.7 netlink sockets cannot open on a uvloop loop, so every call here is
synchronous and :class:`Netlink` runs them on one dedicated worker thread (which also
serialises them: netlink changes to one namespace never interleave).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import select
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute, NetNS
from pyroute2.netlink import NETLINK_ROUTE, rtnl
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.marshal import MarshalRtnl
from pyroute2.netns import create_socket

from ..errors import DeviceError

T = TypeVar("T")
NETNS_DIR = "/var/run/netns"
log = logging.getLogger("tunconnector.netlink")


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


def _set_link(name: str, what: str, netns: str | None, /, **attrs: Any) -> None:
    """One RTM_SETLINK on ``name``; a refusal is a DeviceError saying what was tried."""
    with ipr(netns) as sock:
        try:
            sock.link("set", index=_index(sock, name), **attrs)
        except NetlinkError as exc:
            raise DeviceError(f"{name}: cannot {what}: {exc}") from exc


def link_exists(name: str, netns: str | None = None) -> bool:
    with ipr(netns) as sock:
        return bool(sock.link_lookup(ifname=name))


def move_to_netns(name: str, netns: str) -> None:
    """Move a link from the current namespace into ``netns`` (its fd keeps working)."""
    if not os.path.exists(os.path.join(NETNS_DIR, netns)):
        raise DeviceError(f"network namespace {netns!r} does not exist")
    _set_link(name, f"move to netns {netns!r}", None, net_ns_fd=netns)


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
    _set_link(name, "set link state", netns, state="up" if up else "down")


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


# ---------------------------------------------------------------------------- link watch
#: routes the kernel adds and removes itself (with an address, router advertisements,
#: redirects): never recorded, never restored
_KERNEL_PROTOS = frozenset({1, 2, 9})  # redirect, kernel, ra
_GROUPS = (rtnl.RTMGRP_LINK | rtnl.RTMGRP_IPV4_IFADDR | rtnl.RTMGRP_IPV6_IFADDR
           | rtnl.RTMGRP_IPV4_ROUTE | rtnl.RTMGRP_IPV6_ROUTE)
IFF_UP = 0x1

RouteKey = tuple[int, str | None, int, int, str | None, int | None, int, int, int,
                 str | None]
"""(family, dst, dst_len, table, gateway, priority, scope, type, proto, prefsrc)"""


def _route_key(msg: Any) -> RouteKey | None:
    get = msg.get_attr
    if msg.get("proto") in _KERNEL_PROTOS or get("RTA_MULTIPATH") is not None:
        return None
    table = get("RTA_TABLE") or msg.get("table")
    if table == 255:  # the local table: the kernel's, made from addresses
        return None
    return (msg["family"], get("RTA_DST"), msg["dst_len"], table, get("RTA_GATEWAY"),
            get("RTA_PRIORITY"), msg["scope"], msg["type"], msg["proto"], get("RTA_PREFSRC"))


def _lladdr(msg: Any) -> str | None:
    """An Ethernet (TAP) link's MAC; None for a TUN (no link-layer address)."""
    addr = msg.get_attr("IFLA_ADDRESS")
    return str(addr) if addr and msg.get("ifi_type") == 1 else None  # ARPHRD_ETHER


def _addr_key(msg: Any) -> tuple[str, int] | None:
    addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if addr is None or str(addr).lower().startswith("fe80:"):
        return None  # IPv6 link-local: the kernel makes a new one
    return (str(addr), int(msg["prefixlen"]))


@dataclass(frozen=True, slots=True)
class LinkState:
    """What a link carried: put back on a recreated device of the same name."""

    routes: list[RouteKey]
    addresses: list[tuple[str, int]]
    lladdr: str | None  # MAC (TAP)
    master: int | None  # index of its bridge or bond


class LinkWatch:
    """Follows one link, by name, in one namespace: its removal, its return, and the
    routes and addresses it carries while it is up.

    Why a thread and a raw socket: pyroute2's netlink sockets cannot open on a uvloop
    loop, and a synchronous IPRoute would block the loop; the socket (made by pyroute2,
    inside ``netns`` when given) is read by a blocking ``recv`` here and parsed with
    pyroute2's marshal. ``on_change(present, why)`` is called FROM THE WATCH THREAD when
    the link disappears (``present=False``) or appears again (``True``); hand it over to
    the event loop with ``call_soon_threadsafe``.

    What the link carried is what a recreated device must get back: when a device is
    deleted the kernel removes its routes (IPv4 silently), so they are recorded as they
    come and go, and removals are ignored once the link is no longer up (that is the
    kernel flushing them, not the operator).
    """

    def __init__(self, name: str, on_change: Callable[[bool, str], None],
                 netns: str | None = None) -> None:
        self.name = name
        self.netns = netns
        self._on_change = on_change
        self.index: int | None = None
        self.up = False
        self.mtu: int | None = None
        self.lladdr: str | None = None  # a TAP's MAC: peers' ARP caches point at it
        self.master: int | None = None  # the bridge or bond it is a port of
        self.routes: dict[RouteKey, None] = {}  # insertion-ordered set
        self.addresses: dict[tuple[str, int], None] = {}
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = os.pipe()
        self._marshal = MarshalRtnl()
        self._closed = False

    def start(self) -> None:
        """Open and bind the socket, read what the link carries now, start the thread."""
        try:
            sock = create_socket(self.netns, socket.AF_NETLINK, socket.SOCK_RAW,
                                 NETLINK_ROUTE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, _GROUPS))
        except (OSError, TimeoutError) as exc:
            self.close()
            raise DeviceError(f"{self.name}: cannot watch link events: {exc}") from exc
        self._sock = sock
        try:
            self._load()  # after bind: a change in between is also queued on the socket
        except (OSError, NetlinkError, DeviceError):
            pass  # the link may already be gone: events tell the rest
        self._thread = threading.Thread(target=self._run, name=f"linkwatch-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _load(self) -> None:
        with ipr(self.netns) as s:
            found = s.link_lookup(ifname=self.name)
            if not found:
                return
            idx = int(found[0])
            link = s.get_links(idx)[0]
            routes = [k for m in s.get_routes(oif=idx) if (k := _route_key(m)) is not None]
            addrs = [a for m in s.get_addr(index=idx) if (a := _addr_key(m)) is not None]
        with self._lock:
            self.index = idx
            self.up = bool(link["flags"] & IFF_UP)
            self.mtu = link.get_attr("IFLA_MTU")
            self.lladdr = _lladdr(link)
            self.master = link.get_attr("IFLA_MASTER")
            self.routes.update(dict.fromkeys(routes))
            self.addresses.update(dict.fromkeys(addrs))

    def snapshot(self) -> LinkState:
        """What the link carried while it was last up."""
        with self._lock:
            return LinkState(list(self.routes), list(self.addresses), self.lladdr,
                             self.master)

    def _run(self) -> None:
        sock = self._sock
        assert sock is not None
        while not self._closed:
            try:
                ready, _, _ = select.select([sock.fileno(), self._stop_r], [], [])
                if self._stop_r in ready:
                    return
                data = sock.recv(1 << 16)
            except OSError as exc:
                if self._closed:
                    return
                if exc.errno == errno.ENOBUFS:  # events lost: re-read the state
                    self._resync()
                    continue
                log.warning("%s: link watch stopped: %s", self.name, exc)
                return
            try:
                msgs = list(self._marshal.parse(data))
            except Exception:  # a message pyroute2 cannot parse: not ours to judge
                continue
            for msg in msgs:
                self._handle(msg)

    def _resync(self) -> None:
        was = self.index is not None
        with self._lock:
            self.index = None
        try:
            self._load()
        except (OSError, NetlinkError, DeviceError):
            pass
        if was and self.index is None:
            self._on_change(False, f"device {self.name} is gone")
        elif not was and self.index is not None:
            self._on_change(True, f"device {self.name} is back")

    def _handle(self, msg: Any) -> None:
        kind = msg["header"]["type"]
        if kind in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
            if msg.get_attr("IFLA_IFNAME") != self.name:
                if kind == rtnl.RTM_NEWLINK and msg["index"] == self.index:
                    # renamed away: for us it is gone
                    with self._lock:
                        self.index = None
                    self._on_change(False, f"device {self.name} was renamed")
                return
            if kind == rtnl.RTM_DELLINK:
                if msg["index"] != self.index and self.index is not None:
                    return  # a stale event about an older link of that name
                with self._lock:
                    self.index = None
                    self.up = False
                self._on_change(False, f"device {self.name} was deleted")
                return
            new = self.index != msg["index"]
            with self._lock:
                self.index = msg["index"]
                self.up = bool(msg["flags"] & IFF_UP)
                if self.up:
                    self.mtu = msg.get_attr("IFLA_MTU") or self.mtu
                    self.lladdr = _lladdr(msg) or self.lladdr
                    self.master = msg.get_attr("IFLA_MASTER")
            if new:
                self._on_change(True, f"device {self.name} appeared")
            return
        if kind in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE):
            if self.index is None or msg.get_attr("RTA_OIF") != self.index:
                return
            rkey = _route_key(msg)
            if rkey is None:
                return
            with self._lock:
                if kind == rtnl.RTM_NEWROUTE:
                    self.routes[rkey] = None
                elif self.up:
                    self.routes.pop(rkey, None)
            return
        if kind in (rtnl.RTM_NEWADDR, rtnl.RTM_DELADDR):
            if self.index is None or msg["index"] != self.index:
                return
            akey = _addr_key(msg)
            if akey is None:
                return
            with self._lock:
                if kind == rtnl.RTM_NEWADDR:
                    self.addresses[akey] = None
                elif self.up:
                    self.addresses.pop(akey, None)

    def close(self) -> None:
        """Stop the thread (it never outlives the tunnel) and close the socket."""
        if self._closed:
            return
        self._closed = True
        try:
            os.write(self._stop_w, b"x")
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass


def set_master(name: str, master: int, netns: str | None = None) -> None:
    """Make ``name`` a port of the bridge or bond with index ``master`` again (down while
    it is enslaved: a bond refuses an up device)."""
    with ipr(netns) as sock:
        idx = _index(sock, name)
        try:
            sock.link("set", index=idx, state="down")
            sock.link("set", index=idx, master=master)
        except NetlinkError as exc:
            raise DeviceError(f"{name}: cannot rejoin its master (index {master}): "
                              f"{exc}") from exc
        finally:
            try:
                sock.link("set", index=idx, state="up")
            except NetlinkError:
                pass


def get_lladdr(name: str, netns: str | None = None) -> str | None:
    """The MAC address of ``name`` (None for a device without one, a TUN)."""
    with ipr(netns) as sock:
        try:
            msgs = sock.get_links(_index(sock, name))
        except NetlinkError as exc:
            raise DeviceError(f"{name}: cannot read its MAC address: {exc}") from exc
    return _lladdr(msgs[0]) if msgs else None


def set_lladdr(name: str, lladdr: str, netns: str | None = None) -> None:
    """Give ``name`` a MAC address (a recreated TAP keeps the one its peers know)."""
    _set_link(name, f"set MAC address {lladdr}", netns, address=lladdr)


def restore_routes(name: str, routes: list[RouteKey], netns: str | None = None) -> int:
    """Add recorded routes back on ``name`` (after it was recreated); returns how many
    could not be added (already there counts as added)."""
    failed = 0
    with ipr(netns) as sock:
        idx = _index(sock, name)
        for family, dst, dst_len, table, gw, prio, scope, rtype, proto, prefsrc in routes:
            kw: dict[str, Any] = {"family": family, "dst_len": dst_len, "oif": idx,
                                  "table": table, "scope": scope, "type": rtype,
                                  "proto": proto}
            if dst is not None:
                kw["dst"] = dst
            if gw is not None:
                kw["gateway"] = gw
            if prio is not None:
                kw["priority"] = prio
            if prefsrc is not None:
                kw["prefsrc"] = prefsrc
            try:
                sock.route("add", **kw)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    failed += 1
    return failed
