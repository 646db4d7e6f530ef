"""OpenVPN's server address pool and its ``ifconfig-pool-persist`` file, sans I/O.

openvpn's pool (src/openvpn/pool.c) is not a set of addresses but a list of *handles*:
handle ``i`` is one IPv4 host (topology subnet, TAP), one /30 (topology net30, where the
client is ``base + 4i + 2`` and its gateway ``base + 4i + 1``), and the IPv6 address
``ipv6 base + i``, all at once. A client keeps its handle by common name across
reconnects and restarts, which is what makes the persisted file (``CN,IPv4,IPv6`` per
line) mean anything. This module reproduces that exactly, so a pool file written by
openvpn gives the same clients the same addresses here and the other way round; reading
and writing the file itself stays outside proto/ (:func:`parse_persist` and
:func:`format_persist` turn text into entries and back).
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from ...errors import ConfigError

log = logging.getLogger(__name__)

#: openvpn's IFCONFIG_POOL_MAX: no pool has more handles
IFCONFIG_POOL_MAX = 65536


@dataclass(slots=True)
class PoolEntry:
    """One handle: who had it, whether in use, when released (openvpn's
    ``ifconfig_pool_entry``); ``fixed`` entries come from a read-only persist file."""

    common_name: str | None = None
    in_use: bool = False
    last_release: float = 0.0
    fixed: bool = False


@dataclass(frozen=True, slots=True)
class Lease:
    """What a handle gives a client: ``ipv4`` (its address), ``ipv4_peer`` (net30: the
    /30's gateway it points at, else None) and ``ipv6``."""

    handle: int
    ipv4: ipaddress.IPv4Address | None
    ipv4_peer: ipaddress.IPv4Address | None
    ipv6: ipaddress.IPv6Address | None


class IfconfigPool:
    """openvpn's ``ifconfig_pool``: IPv4 from ``start``..``end`` (one address per handle,
    or one /30 per handle with ``net30``) and/or IPv6 from ``ipv6_base`` (netbits of the
    server's IPv6 network), sized by the smaller of the two (``ifconfig_pool_init``)."""

    def __init__(self, ipv4: tuple[str, str] | None = None, *, net30: bool = False,
                 ipv6: tuple[str, int] | None = None, duplicate_cn: bool = False) -> None:
        if ipv4 is None and ipv6 is None:
            raise ConfigError("ifconfig-pool: neither an IPv4 nor an IPv6 pool")
        self.net30 = net30
        self.duplicate_cn = duplicate_cn
        self.ipv4_base: ipaddress.IPv4Address | None = None
        self.ipv6_base: ipaddress.IPv6Address | None = None
        size4 = size6 = -1
        if ipv4 is not None:
            start, end = (int(ipaddress.IPv4Address(a)) for a in ipv4)
            if start > end or end - start >= IFCONFIG_POOL_MAX:
                raise ConfigError(f"ifconfig-pool: bad range {ipv4[0]} - {ipv4[1]}")
            if net30:
                base = start & ~3
                size4 = (((end | 3) + 1) - base) >> 2
            else:
                base, size4 = start, end - start + 1
            if size4 < 2:
                raise ConfigError(f"IPv4 pool size is too small ({size4}), must be at least 2")
            self.ipv4_base = ipaddress.IPv4Address(base)
        if ipv6 is not None:
            base6, netbits = ipaddress.IPv6Address(ipv6[0]), ipv6[1]
            low = int(base6) & 0xFFFFFFFF
            if 128 - netbits < 32:
                low &= (1 << (128 - netbits)) - 1
            if low == 0:
                # the subnet-router anycast address is never a client's
                low += 1
                base6 += 1
            size6 = (1 << (128 - netbits)) - low if netbits >= 112 else IFCONFIG_POOL_MAX
            if size6 < 2:
                raise ConfigError(f"IPv6 pool size is too small ({size6}), must be at least 2")
            self.ipv6_base = base6
        self.size = size4 if size6 < 0 or 0 < size4 < size6 else size6
        if 0 < size4 and 0 < size6 and size4 > size6:
            log.warning("IPv4 pool size is %d, IPv6 pool size is %d: the IPv6 pool limits "
                        "the clients served from the pool (likely a mistake)", size4, size6)
        self.entries = [PoolEntry() for _ in range(self.size)]

    # -- handles <-> addresses (pool.c's private access functions) -----------------------

    def ipv4_of(self, handle: int) -> ipaddress.IPv4Address | None:
        """The IPv4 *base* of a handle: the client's address, or its /30's network
        (what the persist file holds: ``ifconfig_pool_handle_to_ip_base``)."""
        if self.ipv4_base is None or not 0 <= handle < self.size:
            return None
        return self.ipv4_base + (handle << 2 if self.net30 else handle)

    def ipv6_of(self, handle: int) -> ipaddress.IPv6Address | None:
        if self.ipv6_base is None or not 0 <= handle < self.size:
            return None
        return self.ipv6_base + handle

    def handle_of_ipv4(self, addr: str | ipaddress.IPv4Address) -> int:
        """-1 when outside the pool (``ifconfig_pool_ip_base_to_handle``)."""
        if self.ipv4_base is None:
            return -1
        off = int(ipaddress.IPv4Address(addr)) - int(self.ipv4_base)
        h = off >> 2 if self.net30 else off
        return h if 0 <= h < self.size else -1

    def handle_of_ipv6(self, addr: str | ipaddress.IPv6Address) -> int:
        """-1 when outside the pool; like openvpn, the first 96 bits must match and
        the offset is taken on the last 32 (``ifconfig_pool_ipv6_base_to_handle``)."""
        if self.ipv6_base is None:
            return -1
        a, b = int(ipaddress.IPv6Address(addr)), int(self.ipv6_base)
        if a >> 32 != b >> 32:
            return -1
        h = (a & 0xFFFFFFFF) - (b & 0xFFFFFFFF)
        return h if 0 <= h < self.size else -1

    def lease(self, handle: int) -> Lease:
        v4 = self.ipv4_of(handle)
        if v4 is not None and self.net30:
            return Lease(handle, v4 + 2, v4 + 1, self.ipv6_of(handle))
        return Lease(handle, v4, None, self.ipv6_of(handle))

    # -- acquire / release (ifconfig_pool_find, _acquire, _release) ----------------------

    def _find(self, common_name: str | None) -> int:
        earliest = 0.0
        previous = new = -1
        for i, e in enumerate(self.entries):
            if e.in_use:
                continue
            if self.duplicate_cn:
                return i
            if (new == -1 or e.last_release < earliest) and not e.fixed:
                earliest, new = e.last_release, i
            if previous < 0 and common_name and e.common_name == common_name:
                previous = i
        return previous if previous >= 0 else new

    def acquire(self, common_name: str | None) -> Lease | None:
        """The handle a client had before (by common name, also a ``fixed`` one), else
        the free one released longest ago; None when the pool is full. With
        ``duplicate_cn`` (or no name) the first free handle, remembering no name."""
        i = self._find(None if self.duplicate_cn else common_name)
        if i < 0:
            return None
        self.entries[i] = PoolEntry(None if self.duplicate_cn else common_name, True)
        return self.lease(i)

    def release(self, handle: int, now: float, hard: bool = False) -> None:
        """A client left: soft keeps its name on the handle so it gets it back;
        hard (an ``ifconfig-push`` replaced the pool address) forgets it."""
        if not 0 <= handle < self.size:
            return
        e = self.entries[handle]
        e.in_use = False
        if hard:
            e.common_name, e.last_release = None, 0.0
        else:
            e.last_release = now

    def set(self, common_name: str, handle: int, fixed: bool, now: float) -> None:
        """Reserve ``handle`` for ``common_name`` (a persist file line)."""
        self.entries[handle] = PoolEntry(common_name, False, now, fixed)

    def in_use(self) -> list[int]:
        """Handles held by connected clients."""
        return [i for i, e in enumerate(self.entries) if e.in_use]

    def listing(self) -> list[tuple[str, str, str]]:
        """(CN, IPv4, IPv6) of every handle with a name, "" where that family has no
        pool (``ifconfig_pool_list``)."""
        out = []
        for i, e in enumerate(self.entries):
            if e.common_name:
                v4, v6 = self.ipv4_of(i), self.ipv6_of(i)
                out.append((e.common_name, "" if v4 is None else str(v4),
                            "" if v6 is None else str(v6)))
        return out

    def load(self, entries: list[tuple[str, str, str]], fixed: bool, now: float) -> int:
        """Apply persist-file entries as ``ifconfig_pool_read`` does: an IPv4 outside
        the pool falls back to the IPv6's handle; when both are valid the IPv4 wins.
        ``fixed`` (``ifconfig-pool-persist FILE 0``): those handles go to no one else.
        Returns how many were applied."""
        n = 0
        for cn, ip4, ip6 in entries:
            h = h6 = -1
            if ip4:
                try:
                    h = self.handle_of_ipv4(ip4)
                except ValueError:
                    log.warning("pool: invalid IPv4 (%s) for CN=%s", ip4, cn)
            if ip6:
                try:
                    h6 = self.handle_of_ipv6(ip6)
                except ValueError:
                    log.warning("pool: invalid IPv6 (%s) for CN=%s", ip6, cn)
                if h < 0:
                    h = h6
            if h6 >= 0 and h != h6:
                log.warning("pool: IPv4 (%s) and IPv6 (%s) have different offsets! "
                            "Relying on IPv4", ip4, ip6)
            if h >= 0:
                self.set(cn, h, fixed, now)
                n += 1
        return n


def parse_persist(text: str) -> list[tuple[str, str, str]]:
    """Lines of an ``ifconfig-pool-persist`` file: ``CN,IP4,IP6``, ``CN,IP4`` or
    ``CN,,IP6``; ``#`` and ``;`` lines and lines without a second field are skipped.
    Fields are cut at the next comma as openvpn's ``buf_parse`` does (127 bytes)."""
    out = []
    for line in text.splitlines():
        line = line.rstrip("\r")
        if not line or line[0] in "#;":
            continue
        fields = [f[:127] for f in line.split(",")]
        if len(fields) < 2:
            continue
        out.append((fields[0], fields[1], fields[2] if len(fields) > 2 else ""))
    return out


def format_persist(pool: IfconfigPool) -> str:
    """The file openvpn's ``ifconfig_pool_write`` writes: ``CN,IP4,IP6`` per named
    handle, in handle order, IPv4 being the /30's network for net30."""
    return "".join(f"{cn},{v4},{v6}\n" for cn, v4, v6 in pool.listing())


__all__ = ["IFCONFIG_POOL_MAX", "IfconfigPool", "Lease", "PoolEntry", "format_persist",
           "parse_persist"]
