"""The Node: one core behind the CLI, the REST API and the library face.

It owns every tunnel of a config, the netlink worker, the control socket and any
services (API, health checks) that other modules attach. ``serve()`` runs a Node until
a shutdown trigger fires or SIGINT/SIGTERM arrives (signals only when no trigger is
given, hypercorn style, so tests can run it in-process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from . import __version__, memory, sched
from .adapter import make_tunnel
from .config import Config, parse_interface_address
from .errors import ConfigError, TunconnectorError
from .hooks import Hooks, peer_env, tunnel_env
from .io.netlink import Netlink
from .status import ControlServer
from .tunnel import State, Tunnel

log = logging.getLogger("tunconnector.node")

Service = Callable[["Node"], Awaitable[Callable[[], Awaitable[None]] | None]]
"""A service starts with the node and returns its async stop function (or None)."""


class Node:
    """Runs the tunnels of one :class:`Config`.

    Library use::

        async with Node(config) as node:
            await node.tunnel("x").wait_up(timeout=5)
            print(node.tunnel("x").stats.rx_bytes)

    ``strict=True`` (the default for library use) makes :meth:`start` raise if any
    enabled tunnel fails to start; the daemon uses ``strict=False``: a broken tunnel is
    logged and the others keep running.
    """

    def __init__(
        self,
        config: Config | Mapping[str, Any],
        *,
        strict: bool = True,
        control_socket: bool = False,
        config_path: str | None = None,
    ) -> None:
        if not isinstance(config, Config):
            config = Config.from_mapping(config)
        else:
            config.validate()
        self.config = config
        #: the file ``reload`` (SIGHUP, ``tunconnector reload``) reads again
        self.config_path = config_path
        self.strict = strict
        self.netlink = Netlink()
        self.tunnels: dict[str, Tunnel] = {
            t.name: make_tunnel(t, netlink=self.netlink) for t in config.tunnel
        }
        # hub clients (public-key clients) take the address and routes a hub assigns
        self._assigners: list[Any] = []
        for t in self.tunnels.values():
            if t.config.mode == "client" and t.config.private_key_file:
                from .client_assign import ClientAssignment

                self._assigners.append(ClientAssignment(t))
        self._control = ControlServer(config.control_dir, self._control_request) \
            if control_socket else None
        self._services: list[Service] = []
        self._stoppers: list[Callable[[], Awaitable[None]]] = []
        self.started = False
        # operations: health checks, then the control API, when configured
        self.health: dict[str, Any] = {}
        # [tunnel.hooks]: programs run on up/down (and peer_up/peer_down in hubs)
        self.hooks: dict[str, Hooks] = {}
        for tcfg in config.tunnel:
            if tcfg.hooks is not None:
                self.hooks[tcfg.name] = Hooks(tcfg.hooks, tunnel=tcfg.name)
                self.tunnels[tcfg.name].add_listener(self._hook_listener)
                hub = self.tunnels[tcfg.name]
                if hub.peer_table is not None:  # a hub: peer_up / peer_down per peer
                    from .hubcontrol import PeerHooks

                    hub.peer_table.set_hooks(PeerHooks(
                        self.hooks[tcfg.name], lambda hub=hub: self.hook_env(hub)))  # type: ignore[misc]
        self.api_server: Any = None
        if any(t.health is not None for t in config.tunnel):
            from .health import health_service

            self.add_service(health_service)
        # multi-link bonds: [[bond]] sections and the API's saved state, before
        # the API so a restored bond is there when the first request arrives
        self.multilink: Any = None
        if config.bond or config.api is not None:
            from .bond import multilink_service

            self.add_service(multilink_service)
        if config.api is not None:
            from .api import api_service

            self.add_service(api_service)

    # -- services ----------------------------------------------------------------------
    def add_service(self, service: Service) -> None:
        """Register something that starts after the tunnels (API, health, bonds)."""
        self._services.append(service)

    # -- lifecycle ---------------------------------------------------------------------
    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self.started:
            return
        self.started = True
        try:
            names = [n for n, t in self.tunnels.items() if t.config.enabled]
            results = await asyncio.gather(
                *(self.tunnels[n].start() for n in names), return_exceptions=True
            )
            failed = []
            for name, res in zip(names, results, strict=True):
                if isinstance(res, BaseException):
                    failed.append((name, res))
                    # with nothing else running the caller reports it (one line, not two)
                    lvl = logging.ERROR if len(names) > 1 else logging.DEBUG
                    log.log(lvl, "tunnel %s failed to start: %s", name, res,
                            extra={"tunnel": name})
            if failed and self.strict:
                name, exc = failed[0]
                if isinstance(exc, TunconnectorError):
                    raise type(exc)(f"tunnel {name}: {exc}") from exc
                raise exc
            if self._control is not None:
                try:
                    await self._control.start()
                except TunconnectorError as exc:
                    log.warning("%s; `tunconnector status` will not see this daemon", exc)
                    self._control = None
            for service in self._services:
                stop = await service(self)
                if stop is not None:
                    self._stoppers.append(stop)
            if self.config.nice:
                _renice(self.config.nice)  # before root goes: below 0 needs it
            if self.config.sched_slice_us:
                _set_slice(self.config.sched_slice_us)
            if self.config.privileges is not None and self.config.privileges.user:
                # last: everything that needs root is open now
                from .privileges import privileges_service

                await privileges_service(self)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for stop in reversed(self._stoppers):
            try:
                await stop()
            except Exception:
                log.exception("service failed to stop")
        self._stoppers.clear()
        await asyncio.gather(*(t.stop() for t in self.tunnels.values()), return_exceptions=True)
        # the down hooks the stops just queued run before the process goes away
        await asyncio.gather(*(h.close() for h in self.hooks.values()), return_exceptions=True)
        if self._control is not None:
            await self._control.stop()
        for a in self._assigners:
            await a.settle()
        self.netlink.close()
        self.netlink = Netlink()
        for t in self.tunnels.values():
            t.netlink = self.netlink
        self.started = False

    # -- per tunnel --------------------------------------------------------------------
    def tunnel(self, name: str) -> Tunnel:
        try:
            return self.tunnels[name]
        except KeyError:
            raise ConfigError(f"no tunnel named {name!r}") from None

    async def start_tunnel(self, name: str) -> Tunnel:
        t = self.tunnel(name)
        await t.start()
        return t

    async def stop_tunnel(self, name: str) -> Tunnel:
        t = self.tunnel(name)
        await t.stop()
        return t

    def status(self) -> list[dict[str, Any]]:
        out = []
        for name, t in self.tunnels.items():
            st = t.status()
            mon = self.health.get(name)
            if mon is not None:  # [tunnel.health] verdict
                st["health"] = mon.snapshot()
            hooks = self.hooks.get(name)
            if hooks is not None:
                st["hooks"] = hooks.snapshot()
            out.append(st)
        return out

    def _control_request(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd", "status")
        if cmd == "status":
            return {"pid": os.getpid(), "version": __version__, "malloc": memory.state,
                    "nice": os.nice(0), "sched_slice_us": sched.current_slice_us(),
                    "tunnels": self.status()}
        if cmd == "reload":
            return self.reload()  # type: ignore[return-value]  # awaited by the server
        raise ConfigError(f"unknown control command {cmd!r}")

    def _hook_listener(self, tunnel: Any, old: State, new: State) -> None:
        """Entering ``up`` fires the up hook; leaving it (peer dead, stop) fires down."""
        if new == State.UP and old != State.UP:
            event = "up"
        elif old == State.UP and new != State.UP:
            event = "down"
        else:
            return
        hooks = self.hooks.get(tunnel.name)
        if hooks is not None:
            hooks.fire(event, self.hook_env(tunnel))

    def peer_hook(self, tunnel: str, event: str, *, name: str | None = None,
                  endpoint: str | None = None, remote_address: str | None = None) -> bool:
        """Fire a hub's ``peer_up``/``peer_down`` hook for one peer of ``tunnel``.

        The environment is the tunnel's (device, local address) plus the peer's name,
        underlay endpoint (``host:port``) and tunnel address. False when no hook is set.
        """
        hooks = self.hooks.get(tunnel)
        if hooks is None:
            return False
        env = self.hook_env(self.tunnel(tunnel), with_peer=False)
        env.update(peer_env(name=name, endpoint=endpoint, remote_address=remote_address))
        return hooks.fire(event, env)

    def hook_env(self, tunnel: Any, *, with_peer: bool = True) -> dict[str, str]:
        """What a point-to-point tunnel's hook learns: names, device, addresses, peer."""
        cfg = tunnel.config
        local = cfg.address[0] if cfg.address else None
        remote = None
        if with_peer and cfg.health is not None and cfg.health.target:
            remote = cfg.health.target
        elif with_peer and local is not None:
            from .health import default_target

            with contextlib.suppress(TunconnectorError):
                remote = default_target(cfg)
        env = tunnel_env(tunnel=tunnel.name, device=getattr(tunnel, "device_name", None),
                         local_address=str(parse_interface_address(local, "address"))
                         if local else None,
                         remote_address=remote, mtu=getattr(tunnel, "mtu", None),
                         dev_type=cfg.dev_type)
        peer = getattr(tunnel, "peer", None) if with_peer else None
        if peer:
            env.update(peer_env(endpoint=_fmt_endpoint(peer)))
        return env

    async def reload(self) -> dict[str, Any]:
        """Read the config file again and apply what can change live: the peers of each
        hub (added, removed, changed; unchanged peers keep their sessions). A bad file
        changes nothing (the error is returned and logged)."""
        if self.config_path is None:
            # `tunconnector openvpn --config server.conf`: no TOML, the server config's
            # client-config-dir (and CRL) are what a reload reads again
            servers: dict[str, Callable[[], list[str]]] = {
                n: reread for n, srv in self.tunnels.items()
                if (reread := getattr(srv, "reload_client_configs", None)) is not None}
            if not servers:
                return {"pid": os.getpid(), "error": "no config file to reload"}
            done: dict[str, Any] = {}
            for n, reread in servers.items():
                try:
                    done[n] = {"reconnected": reread()}
                except TunconnectorError as exc:
                    done[n] = {"error": str(exc)}
            return {"pid": os.getpid(), "reloaded": done}
        try:
            new = Config.from_toml(self.config_path)
        except ConfigError as exc:
            log.error("reload: %s (nothing changed)", exc)
            return {"pid": os.getpid(), "error": str(exc)}
        result: dict[str, Any] = {}
        for tcfg in new.tunnel:
            t = self.tunnels.get(tcfg.name)
            if t is None or t.peer_table is None:
                continue
            try:
                result[tcfg.name] = await t.peer_table.apply_peers(tcfg.peer)
            except TunconnectorError as exc:
                log.error("reload: tunnel %s: %s", tcfg.name, exc)
                result[tcfg.name] = {"error": str(exc)}
        log.info("reload of %s done", self.config_path)
        return {"pid": os.getpid(), "reloaded": result}

    @property
    def all_up(self) -> bool:
        return all(t.state == State.UP for t in self.tunnels.values() if t.config.enabled)


def _fmt_endpoint(addr: Any) -> str:
    """``host:port`` (``[v6]:port``) from a socket address tuple."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(addr)


async def serve(
    config: Config,
    *,
    shutdown_trigger: Callable[[], Awaitable[Any]] | None = None,
    control_socket: bool = True,
    services: list[Service] | None = None,
    config_path: str | None = None,
) -> None:
    """Run a daemon until ``shutdown_trigger`` returns, or SIGINT/SIGTERM without one
    (then SIGHUP reloads ``config_path``)."""
    node = Node(config, strict=False, control_socket=control_socket, config_path=config_path)
    for s in services or []:
        node.add_service(s)
    loop = asyncio.get_running_loop()
    stop_event = asyncio.Event()
    installed: list[signal.Signals] = []
    if shutdown_trigger is None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop_event.set)
                installed.append(sig)
        reloads: set[asyncio.Task[Any]] = set()

        def _hup() -> None:
            task = loop.create_task(node.reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGHUP, _hup)
            installed.append(signal.SIGHUP)

        async def _wait() -> Any:
            await stop_event.wait()

        trigger: Callable[[], Awaitable[Any]] = _wait
    else:
        trigger = shutdown_trigger
    await node.start()
    try:
        if node.tunnels and not any(t.is_running for t in node.tunnels.values()) \
                and not node.config.api and not node.config.bond:
            errors = [f"{t.name}: {t.error}" for t in node.tunnels.values() if t.error]
            raise TunconnectorError("; ".join(errors) or "no tunnel could be started")
        await trigger()
        log.info("shutting down")
    finally:
        await node.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)


def _set_slice(us: int) -> None:
    """The event loop's thread asks the scheduler for a slice of ``us`` (see sched.py)."""
    try:
        got = sched.set_slice(us)
    except sched.SchedError as exc:
        log.warning("sched_slice_us %d: %s; the kernel's default stays", us, exc)
        return
    if got is None:
        log.warning("sched_slice_us %d: this kernel does not report a slice (no EEVDF): "
                    "it may not take one", us)
    elif got != us:
        log.warning("sched_slice_us %d: the kernel keeps a slice of %d us (custom slices "
                    "need Linux 6.12)", us, got)
    else:
        log.info("scheduler slice: %d us", got)


def _renice(inc: int) -> None:
    """Add ``inc`` to the nice value of the event loop's thread (on Linux a nice value is
    per thread; threads started later inherit it), as openvpn's ``nice`` does."""
    try:
        now = os.nice(inc)
    except OSError as exc:
        log.warning("nice %d: %s; the priority stays", inc, exc.strerror)
        return
    log.info("process priority: nice %d", now)
