"""The hub's peer table: who may connect, with which key, address and routes.

Sans-I/O: :meth:`PeerTable.apply` makes the configured peers exactly a given
``[[tunnel.peer]]`` list (add, remove, change; an unchanged peer keeps its object and so
its session), gives every peer its tunnel address (fixed, or leased from the
:class:`~.pool.AddressPool`), its prefixes in the :class:`~.router.Router`, its pinned
MAC in the :class:`~.mactable.MacTable` (TAP) and the :class:`~.assign.Assignment` its
handshake response carries. Keys come from a callable (the hub reads any PSK file), and
what the hub has to act on comes back as :class:`TableChanges`
(:meth:`PeerTable.take_changes`): peers removed (their sessions, sockets and hooks are
the hub's), peers left without an address, leases changed (the hub writes its state file).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from .assign import Assignment
from .mactable import MacTable, parse_mac
from .native import NativeEndpoint
from .pool import AddressPool, PoolExhausted
from .router import Router
from .secure import HandshakeGuard, SecureChannel

if TYPE_CHECKING:
    from ..config import PeerConfig, TunnelConfig

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
#: a peer's public key and optional PSK, from its table entry and where that entry is
#: (``peer[3]``, for error messages)
KeySource = Callable[["PeerConfig", str], tuple[bytes, "bytes | None"]]


@dataclass(slots=True)
class PeerStats:
    rx_bytes: int = 0
    rx_packets: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    drops: collections.Counter[str] = field(default_factory=collections.Counter)


class HubPeer:
    """One configured peer: its key, addresses, protocol state and counters."""

    __slots__ = ("name", "cfg", "key_b64", "public", "psk", "address", "prefixes",
                 "native", "secure", "addr", "raw", "up", "started", "last_handshake",
                 "indices", "stats", "assignment", "guard", "past_handshakes")

    def __init__(self, cfg: PeerConfig, public: bytes, psk: bytes | None) -> None:
        self.name = cfg.name
        self.cfg = cfg
        self.key_b64 = base64.b64encode(public).decode()
        self.public = public
        self.psk = psk
        self.address: Address | None = None
        self.prefixes: list[str] = []
        self.native: NativeEndpoint | None = None
        self.secure: SecureChannel | None = None
        self.addr: tuple[Any, ...] | None = None  # where the peer is now (normalized)
        self.raw: Any = None  # ... as recvfrom() returns it (the fast-path key)
        self.up = False
        self.started = False
        self.last_handshake: float | None = None  # wall clock
        self.indices: set[int] = set()
        self.stats = PeerStats()
        self.assignment: Assignment | None = None
        #: replay and rate state of its initiations, kept when its channel is renewed
        self.guard = HandshakeGuard()
        #: handshakes of its sessions that ended (the count in the status goes on)
        self.past_handshakes = 0

    @property
    def handshakes(self) -> int:
        return self.past_handshakes + (self.secure.handshakes if self.secure else 0)

    def same_as(self, cfg: PeerConfig) -> bool:
        """Whether ``cfg`` describes this peer unchanged (its session may stay)."""
        return (cfg.public_key.strip() == self.cfg.public_key.strip()
                and cfg.address == self.cfg.address
                and list(cfg.allowed_ips) == list(self.cfg.allowed_ips)
                and cfg.key_file == self.cfg.key_file)


@dataclass(slots=True)
class TableChanges:
    """What applying a table did that the hub acts on, in the order it happened."""

    #: peers that left the table (removed, changed, or their key went to another name):
    #: their routes, MAC pins and reserved addresses are gone; their sessions are the
    #: hub's to end
    removed: list[HubPeer] = field(default_factory=list)
    #: peers without a fixed address for which the pool had none left, and why
    no_address: list[tuple[HubPeer, str]] = field(default_factory=list)
    #: the pool's leases changed: worth writing down
    leases_changed: bool = False


def hub_networks(cfg: TunnelConfig) -> list[str]:
    """The networks behind the hub itself: its interfaces' and the pool's (if apart)."""
    ifaces = [i.network for i in cfg.interfaces]
    nets = [str(n) for n in ifaces]
    if cfg.pool:
        pool: Any = ipaddress.ip_network(cfg.pool, strict=False)
        if not any(n.version == pool.version and pool.subnet_of(n) for n in ifaces):
            nets.append(str(pool))
    return nets


def prefix_len_for(cfg: TunnelConfig, addr: Address) -> int:
    """The prefix length a peer's address gets: that of the hub's network holding it."""
    for i in cfg.interfaces:
        if addr in i.network:
            return i.network.prefixlen
    if cfg.pool:
        net = ipaddress.ip_network(cfg.pool, strict=False)
        if addr in net:
            return net.prefixlen
    return addr.max_prefixlen


def _networks(nets: Iterable[str]) -> list[str]:
    return [str(ipaddress.ip_network(n, strict=False)) for n in nets]


class PeerTable:
    """The peers of one hub by name and by public key, kept in step with ``router``,
    ``macs`` and ``pool`` (which the hub also reads on its data path)."""

    def __init__(self, cfg: TunnelConfig, mtu: int, router: Router, macs: MacTable,
                 pool: AddressPool | None) -> None:
        self.cfg = cfg
        self.mtu = mtu
        self.tap = cfg.dev_type == "tap"
        self.router = router
        self.macs = macs
        #: replaced by the hub when it (re)loads its leases
        self.pool = pool
        self.peers: dict[str, HubPeer] = {}
        self._by_key: dict[bytes, HubPeer] = {}
        self._changes = TableChanges()

    def by_key(self, public: bytes) -> HubPeer | None:
        return self._by_key.get(public)

    def take_changes(self) -> TableChanges:
        """What the table did since the last call (also when :meth:`apply` raised)."""
        changes, self._changes = self._changes, TableChanges()
        return changes

    def apply(self, table: Iterable[PeerConfig], keys: KeySource, *, initial: bool = False
              ) -> dict[str, list[str]]:
        """Make the peers exactly ``table``: add, remove, change; unchanged ones keep
        their objects (and so their sessions). Returns the names by outcome. ``initial``:
        ``table`` is the validated config file's, else it is checked the same way."""
        table = list(table)
        if not initial:  # the same checks as the config file's (names, keys, addresses)
            dataclasses.replace(self.cfg, peer=table).validate_hub(self.cfg.name)
        new = {p.name: p for p in table}
        result: dict[str, list[str]] = {"added": [], "removed": [], "changed": [],
                                        "unchanged": []}
        for name in [n for n in self.peers if n not in new]:
            self._remove(name)
            result["removed"].append(name)
        keys_in_use = {p.public_key.strip(): p.name for p in table}
        for i, pc in enumerate(table):
            old = self.peers.get(pc.name)
            if old is not None and old.same_as(pc):
                old.cfg = pc
                result["unchanged"].append(pc.name)
                continue
            if keys_in_use.get(pc.public_key.strip()) != pc.name:
                raise ConfigError(f"peer[{i}].public_key: the same key is given to two peers")
            public, psk = keys(pc, f"peer[{i}]")
            if old is not None:
                self._remove(pc.name)
                result["changed"].append(pc.name)
            else:
                result["added"].append(pc.name)
            other = self._by_key.get(public)
            if other is not None:  # the key moved to a new name
                self._remove(other.name)
            self._add(HubPeer(pc, public, psk))
        self._assign_all()
        return result

    def clear(self) -> None:
        """Forget every peer at once (the hub stopped; its next start applies anew)."""
        self.peers.clear()
        self._by_key.clear()

    def _add(self, p: HubPeer) -> None:
        self.peers[p.name] = p
        self._by_key[p.public] = p
        if self.tap and p.cfg.mac is not None:
            self.macs.pin(parse_mac(p.cfg.mac), p)
        if p.cfg.address is not None and self.pool is not None:
            self.pool.reserve(p.cfg.address.split("/")[0])

    def _remove(self, name: str) -> None:
        p = self.peers.pop(name, None)
        if p is None:
            return
        self._by_key.pop(p.public, None)
        self.router.remove_peer(p)
        self.macs.forget_port(p)
        self.macs.unpin_port(p)
        if p.cfg.address is not None and self.pool is not None:
            self.pool.unreserve(p.cfg.address.split("/")[0])
        self._changes.removed.append(p)

    def _assign_all(self) -> None:
        """Addresses, prefixes and assignments of every peer (after any table change)."""
        active = [p.key_b64 for p in self.peers.values()]
        changed = False
        for p in self.peers.values():
            if p.cfg.address is not None:
                p.address = ipaddress.ip_address(p.cfg.address.split("/")[0])
            elif self.pool is not None:
                before = self.pool.lookup(p.key_b64)
                try:
                    p.address = self.pool.assign(p.key_b64, active=active)
                except PoolExhausted as exc:
                    self._changes.no_address.append((p, str(exc)))
                    p.address = None
                changed = changed or before != p.address
            else:
                p.address = None
            prefixes = [f"{p.address}/{p.address.max_prefixlen}"] if p.address else []
            prefixes += _networks(p.cfg.allowed_ips)
            p.prefixes = prefixes
            self.router.set_peer(p, prefixes)
        for p in self.peers.values():
            p.assignment = self._assignment_for(p)
            if p.secure is not None:
                p.secure.response_extra = p.assignment.encode()
        if changed:
            self._changes.leases_changed = True

    def _assignment_for(self, p: HubPeer) -> Assignment:
        cfg = self.cfg
        address = None
        if p.address is not None:
            address = f"{p.address}/{prefix_len_for(cfg, p.address)}"
        routes = hub_networks(cfg)
        if cfg.client_to_client:
            for q in self.peers.values():
                if q is not p:
                    routes += _networks(q.cfg.allowed_ips)
        routes += _networks(cfg.push_routes)
        own = set(_networks(p.cfg.allowed_ips))
        routes = list(dict.fromkeys(r for r in routes if r not in own))
        gateway = None
        if self.tap and cfg.interfaces:
            gateway = str(cfg.interfaces[0].ip)
        return Assignment(address, tuple(routes), self.mtu, gateway)
