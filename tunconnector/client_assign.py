"""A hub client applies what its hub assigned: address, MTU, routes (pyroute2).

The hub puts an :class:`~.proto.assign.Assignment` in its handshake response; the
client's secure channel hands it here (``SecureChannel.on_assigned``). We configure the
tunnel's device: the address (only when the config sets none: a configured address
wins), the MTU (unless configured), and the routes (the hub's subnet, other peers'
networks, pushed routes), and remove the routes when the tunnel stops. Repeated
handshakes carry the same assignment: applied once, changes applied as a diff.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from typing import Any

from .errors import RemoteProtocolError, TunconnectorError
from .io import routes as rt
from .keys import ASSIGNMENT_HANDLERS
from .proto.assign import Assignment

log = logging.getLogger("tunconnector.client_assign")


class ClientAssignment:
    """Watches one client tunnel; see the module docstring."""

    def __init__(self, tunnel: Any) -> None:
        self.tunnel = tunnel
        self.cfg = tunnel.config
        self.current: Assignment | None = None
        self.address: str | None = None
        self.routes: list[str] = []
        self.gateway: str | None = None
        self.errors = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock() if _has_loop() else None
        ASSIGNMENT_HANDLERS[id(self.cfg)] = self.on_assigned
        tunnel.add_listener(self._on_state)

    def detach(self) -> None:
        if ASSIGNMENT_HANDLERS.get(id(self.cfg)) == self.on_assigned:
            del ASSIGNMENT_HANDLERS[id(self.cfg)]

    async def settle(self) -> None:
        """Wait for the address/route changes already queued (a stopping node)."""
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def snapshot(self) -> dict[str, Any] | None:
        if self.current is None:
            return None
        return {"address": self.address, "routes": list(self.routes),
                "mtu": self.current.mtu}

    # -- from the secure channel (event loop thread) ------------------------------------
    def on_assigned(self, payload: bytes) -> None:
        try:
            a = Assignment.decode(payload)
        except RemoteProtocolError:
            self.errors += 1
            return
        if a == self.current:
            return
        task = asyncio.get_running_loop().create_task(self._apply(a))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply(self, a: Assignment) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            t = self.tunnel
            dev = t.device_name
            if dev is None or not t.is_running:
                return
            nl = t.netlink
            netns = self.cfg.netns
            try:
                if not self.cfg.address and a.address != self.address:
                    await nl.call(rt.set_addresses, dev, add=[a.address] if a.address else [],
                                  remove=[self.address] if self.address else [], netns=netns)
                    self.address = a.address
                if self.cfg.mtu is None and a.mtu is not None and a.mtu != t.mtu:
                    await nl.call(rt.set_mtu, dev, a.mtu, netns)
                connected = self._connected()
                want = [r for r in a.routes if r not in connected]
                gone = [r for r in self.routes if r not in want]
                if gone or (self.gateway != a.gateway and self.routes):
                    await nl.call(rt.del_routes, dev, gone if self.gateway == a.gateway
                                  else self.routes, gateway=self.gateway, netns=netns)
                    if self.gateway != a.gateway:
                        self.routes = []
                add = [r for r in want if r not in self.routes or r in gone]
                if add:
                    await nl.call(rt.add_routes, dev, add, gateway=a.gateway, netns=netns)
                self.routes = want
                self.gateway = a.gateway
                self.current = a
            except TunconnectorError as exc:
                self.errors += 1
                log.warning("tunnel %s: cannot apply the hub's assignment: %s",
                            t.name, exc, extra={"tunnel": t.name})
                return
        log.info("tunnel %s: hub assigned %s, %d routes, mtu %s", t.name,
                 self.address or "(configured address)", len(self.routes), a.mtu,
                 extra={"tunnel": t.name})

    def _connected(self) -> set[str]:
        nets = set()
        for text in ([self.address] if self.address else []) + list(self.cfg.address):
            try:
                nets.add(str(ipaddress.ip_interface(text).network))
            except ValueError:
                continue
        return nets

    def _on_state(self, tunnel: Any, old: Any, new: Any) -> None:
        if getattr(new, "value", new) != "stopped":
            return
        dev, routes, gw = tunnel.device_name, list(self.routes), self.gateway
        self.routes, self.address, self.current = [], None, None
        if dev is None or not routes:
            return

        async def _cleanup() -> None:
            try:
                await tunnel.netlink.call(rt.del_routes, dev, routes, gateway=gw,
                                           netns=self.cfg.netns)
            except TunconnectorError:
                pass

        try:
            task = asyncio.get_running_loop().create_task(_cleanup())
        except RuntimeError:
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _has_loop() -> bool:
    try:
        asyncio.get_running_loop()
        return True
    except RuntimeError:
        return False
