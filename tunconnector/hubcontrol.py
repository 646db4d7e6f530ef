"""A hub's peer table at run time: keys, the pool's leases, kernel routes, live changes.

The data path of a hub (:class:`~.hub.Hub`) reads the peer table on every datagram; this
module is what changes it, outside the data path: the hub's private key and the peers'
keys at start, the address pool's leases and the state file that keeps them across
restarts, the kernel routes for the peers' ``allowed_ips``, live changes of the table
(reload, the REST API's peer endpoints) and the ``peer_up``/``peer_down`` hooks.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import PeerConfig
from .errors import ConfigError, CryptoError
from .io import routes as rt
from .keys import decode_key, load_key_file
from .proto.hubacceptor import NativeHubAcceptor
from .proto.hubtable import HubPeer
from .proto.pool import AddressPool
from .tunnel import fmt_addr

if TYPE_CHECKING:
    from .hub import Hub

DEFAULT_STATE_DIR = "/var/lib/tunconnector"


def _peer_key(cfg: PeerConfig, where: str) -> tuple[bytes, bytes | None]:
    try:
        public = decode_key(cfg.public_key, f"{where}.public_key")
        psk = load_key_file(cfg.key_file) if cfg.key_file else None
    except CryptoError as exc:
        raise ConfigError(str(exc)) from exc
    return public, psk



class HubControl:
    """A hub's peer table at run time (``hub.peer_table``): the hub's key, the peers'
    keys, the pool's leases (the state file), the peers' kernel routes, and live
    changes of the table (reload, the REST API's peer endpoints)."""

    def __init__(self, hub: Hub, acceptor: NativeHubAcceptor, *,
                 removed: Callable[[HubPeer], None], changed: Callable[[], None]) -> None:
        self.hub = hub
        self.table = hub.table
        self.acceptor = acceptor
        #: called for each peer a change removed (its session ends), and after a change
        self.removed = removed
        self.changed = changed
        self.kernel_routes: dict[str, list[str]] = {}
        self.hooks: Any = None

    def set_hooks(self, hooks: Any) -> None:
        """Something with ``peer_up(hub, peer)`` / ``peer_down(hub, peer)`` methods."""
        self.hooks = hooks

    def load(self) -> None:
        """At start: the hub's private key, the pool with its leases, the configured
        peers."""
        cfg = self.hub.config
        try:
            priv = load_key_file(cfg.private_key_file or "")
        except CryptoError as exc:
            raise ConfigError(f"{cfg.name}.private_key_file: {exc}") from exc
        self.acceptor.set_static(priv)
        self._setup_pool()
        self.apply(cfg.peer, initial=True)

    def state_path(self) -> Path:
        cfg = self.hub.config
        if cfg.state_file:
            return Path(cfg.state_file)
        return Path(DEFAULT_STATE_DIR) / f"{cfg.name}.json"

    def _setup_pool(self) -> None:
        cfg, log = self.hub.config, self.hub.log
        if cfg.pool is None:
            self.table.pool = None
            return
        reserved: list[Any] = [i.ip for i in cfg.interfaces]
        reserved += [p.address.split("/")[0] for p in cfg.peer if p.address]
        pool = self.table.pool = AddressPool(cfg.pool, reserved=reserved)
        path = self.state_path()
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("hub %s: state file %s unreadable (%s): starting afresh",
                        cfg.name, path, exc)
            return
        n = pool.load(data.get("pool") if isinstance(data, dict) else None)
        log.info("hub %s: %d address leases restored from %s", cfg.name, n, path)

    def _save_pool(self) -> None:
        pool = self.table.pool
        if pool is None:
            return
        path = self.state_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({"pool": pool.dump()}, indent=1))
            os.replace(tmp, path)
        except OSError as exc:
            self.hub.stats.drops["state_file_error"] += 1
            self.hub.log.warning("hub %s: cannot write state file %s: %s",
                                 self.hub.name, path, exc)

    def apply(self, table: Iterable[PeerConfig], *, initial: bool = False
              ) -> dict[str, list[str]]:
        """Make the peers exactly ``table`` (see :meth:`PeerTable.apply`), then end the
        sessions of the peers it removed and write down changed leases."""
        try:
            result = self.table.apply(table, _peer_key, initial=initial)
        finally:
            changes = self.table.take_changes()
            for p in changes.removed:
                self.removed(p)
        for p, why in changes.no_address:
            self.hub.log.warning("hub %s: peer %s gets no address: %s", self.hub.name,
                                 p.name, why)
        self.acceptor.refresh_mac_keys()
        if changes.leases_changed or not initial:
            self._save_pool()
        return result

    async def device_opened(self) -> None:
        """A new device carries none of the routes the old one had."""
        self.kernel_routes.clear()
        await self.sync_kernel_routes()

    def closed(self) -> None:
        self.kernel_routes.clear()  # they went with the device

    async def sync_kernel_routes(self) -> None:
        """Kernel routes for the peers' allowed_ips via the hub's device (while the device
        is missing there is nothing to change: its reopening adds what is then wanted)."""
        hub = self.hub
        name, netns, have_routes = hub.device_name, hub.config.netns, self.kernel_routes
        if hub.device is None or name is None or hub.tap:
            return
        want = {p.name: [str(ipaddress.ip_network(n, strict=False))
                         for n in p.cfg.allowed_ips] for p in self.table.peers.values()}
        for peer, nets in list(have_routes.items()):
            gone = [n for n in nets if n not in want.get(peer, [])]
            if gone:
                await hub.netlink.call(rt.del_routes, name, gone, netns=netns)
            have_routes[peer] = [n for n in nets if n not in gone]
        for peer, nets in want.items():
            add = [n for n in nets if n not in have_routes.get(peer, [])]
            if add:
                await hub.netlink.call(rt.add_routes, name, add, netns=netns)
            have_routes[peer] = nets
        for peer in [n for n in have_routes if n not in want]:
            del have_routes[peer]

    async def apply_peers(self, table: Iterable[PeerConfig]) -> dict[str, list[str]]:
        """Live change: the peer table becomes ``table`` (reload, API)."""
        hub = self.hub
        table = list(table)
        result = self.apply(table)
        hub.config.peer = table  # a later stop/start keeps the live table
        if hub.is_running:
            await self.sync_kernel_routes()
        changed = {k: v for k, v in result.items() if v and k != "unchanged"}
        if changed:
            hub.log.info("hub %s: peers %s", hub.name,
                         ", ".join(f"{k} {' '.join(v)}" for k, v in changed.items()))
        self.changed()
        return result

    async def put_peer(self, cfg: PeerConfig) -> str:
        """Add or replace one peer; returns ``added``, ``changed`` or ``unchanged``."""
        table = [p.cfg for p in self.table.peers.values() if p.name != cfg.name] + [cfg]
        result = await self.apply_peers(table)
        for k in ("added", "changed", "unchanged"):
            if cfg.name in result[k]:
                return k
        return "unchanged"  # pragma: no cover

    async def delete_peer(self, name: str) -> bool:
        peers = self.table.peers
        if name not in peers:
            return False
        await self.apply_peers([p.cfg for p in peers.values() if p.name != name])
        return True


class PeerHooks:
    """Fires ``[tunnel.hooks]`` ``peer_up``/``peer_down`` for a hub's peers: the
    tunnel's hook environment plus the peer's name, endpoint and tunnel address."""

    def __init__(self, hooks: Any, base_env: Callable[[], dict[str, str]]) -> None:
        self.hooks = hooks
        self.base_env = base_env

    def _fire(self, event: str, p: HubPeer) -> None:
        from .hooks import peer_env

        env = dict(self.base_env())
        env.update(peer_env(name=p.name, endpoint=fmt_addr(p.addr) if p.addr else None,
                            remote_address=str(p.address) if p.address else None))
        env["TUNCONNECTOR_PEER_PUBLIC_KEY"] = p.key_b64
        self.hooks.fire(event, env)

    def peer_up(self, hub: Hub, p: HubPeer) -> None:
        self._fire("peer_up", p)

    def peer_down(self, hub: Hub, p: HubPeer) -> None:
        self._fire("peer_down", p)
