"""The hub's address pool: one tunnel address per public key, stable across restarts.

Sans-I/O: the pool is a mapping kept in memory; :meth:`AddressPool.dump` and
:meth:`AddressPool.load` turn its leases into JSON-able data that the hub writes to its
state file, so a key that reconnects, or comes back after the hub restarted, gets the
address it had. Fixed addresses (a peer's ``address``) and the hub's own address are
reserved: never leased to anyone else. When the pool runs out, leases of keys that are
no longer configured are reclaimed, oldest first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class PoolExhausted(ConfigError):
    """No free address is left in the pool."""


class AddressPool:
    """Leases ``network``'s host addresses to keys (base64 public keys, any string)."""

    def __init__(self, network: str | ipaddress.IPv4Network | ipaddress.IPv6Network,
                 *, reserved: Iterable[str | Address] = ()) -> None:
        self.network = ipaddress.ip_network(network, strict=False)
        self._reserved: set[Address] = {ipaddress.ip_address(a) for a in reserved}
        self._leases: dict[str, Address] = {}  # insertion order = age
        self._by_addr: dict[Address, str] = {}
        self._cursor = 0  # next host offset to try (wraps)

    @property
    def size(self) -> int:
        """Usable host addresses (network and broadcast excluded for IPv4)."""
        n = self.network.num_addresses
        return n - 2 if self.network.version == 4 and n > 2 else n - 1

    def leases(self) -> dict[str, str]:
        return {k: str(a) for k, a in self._leases.items()}

    def reserve(self, address: str | Address) -> None:
        """Keep ``address`` out of the pool (a fixed peer address, the hub's own)."""
        a = ipaddress.ip_address(address)
        self._reserved.add(a)
        owner = self._by_addr.pop(a, None)
        if owner is not None:
            del self._leases[owner]  # leased before it was fixed: the owner gets another

    def unreserve(self, address: str | Address) -> None:
        self._reserved.discard(ipaddress.ip_address(address))

    def lookup(self, key: str) -> Address | None:
        return self._leases.get(key)

    def assign(self, key: str, *, active: Iterable[str] = ()) -> Address:
        """The address of ``key``: its lease, else the first free one.

        ``active`` are the keys currently configured: when the pool is full, the oldest
        lease of a key not among them is reclaimed. :class:`PoolExhausted` otherwise.
        """
        have = self._leases.get(key)
        if have is not None and have not in self._reserved:
            return have
        if have is not None:
            self._release(key)
        addr = self._free()
        if addr is None:
            keep = set(active) | {key}
            stale = next((k for k in self._leases if k not in keep), None)
            if stale is None:
                raise PoolExhausted(f"address pool {self.network} is exhausted "
                                    f"({len(self._leases)} leases)")
            addr = self._leases[stale]
            self._release(stale)
        self._leases[key] = addr
        self._by_addr[addr] = key
        return addr

    def release(self, key: str) -> None:
        """Forget ``key``'s lease (kept by default, so a returning key gets it back)."""
        self._release(key)

    def _release(self, key: str) -> None:
        addr = self._leases.pop(key, None)
        if addr is not None:
            self._by_addr.pop(addr, None)

    def _free(self) -> Address | None:
        net = self.network
        base = int(net.network_address)
        first = 1
        last = net.num_addresses - (2 if net.version == 4 and net.num_addresses > 2 else 1)
        span = last - first + 1
        if span <= 0:
            return None
        cls = type(net.network_address)
        for i in range(span):
            off = first + (self._cursor + i) % span
            addr = cls(base + off)
            if addr not in self._reserved and addr not in self._by_addr:
                self._cursor = (off - first + 1) % span
                return addr
        return None

    # -- persistence (the hub writes these to its state file) --------------------------
    def dump(self) -> dict[str, Any]:
        return {"network": str(self.network), "leases": self.leases()}

    def load(self, data: Any) -> int:
        """Restore leases saved by :meth:`dump`; entries outside the pool, reserved or
        malformed are skipped. Returns how many were restored."""
        if not isinstance(data, dict) or not isinstance(data.get("leases"), dict):
            return 0
        n = 0
        for key, text in data["leases"].items():
            try:
                addr = ipaddress.ip_address(text)
            except (TypeError, ValueError):
                continue
            if (not isinstance(key, str) or addr not in self.network
                    or addr in self._reserved or addr in self._by_addr
                    or addr == self.network.network_address
                    or (self.network.version == 4 and addr == self.network.broadcast_address)):
                continue
            self._release(key)
            self._leases[key] = addr
            self._by_addr[addr] = key
            n += 1
        return n


__all__ = ["AddressPool", "PoolExhausted"]
