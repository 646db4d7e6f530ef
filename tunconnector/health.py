"""Built-in health check: asyncio side of :mod:`tunconnector.proto.health`.

One :class:`HealthMonitor` per tunnel with a ``[tunnel.health]`` table. It pings the
target (default: the peer's tunnel address) through the tunnel, keeps the verdict, logs
one line per change, calls listeners, and, like TunConnector's timer, keeps ``status_file``
holding ``OK`` or ``NOT_OK`` (written atomically: temp file + ``os.replace``, so a reader
never sees a torn or empty file).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import socket
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .config import HealthConfig, TunnelConfig
from .errors import ConfigError, TunconnectorError
from .io.icmp import Kind, Pinger
from .proto.health import HealthChanged, HealthCheck, HealthState

log = logging.getLogger(__name__)

Listener = Callable[[str, HealthChanged], None]


def default_target(tcfg: TunnelConfig) -> str:
    """Guess the peer's tunnel address from ours when ``health.target`` is not set.

    /31 and /30: the other host. Otherwise the first host of the subnet, or the second
    when we are the first (TunConnector's 10.0.0.1 server / 10.0.0.2 client habit).
    """
    ifaces = tcfg.interfaces
    if not ifaces:
        raise ConfigError(
            f"tunnel {tcfg.name!r}: health.target is required when the tunnel has no address"
        )
    iface = ifaces[0]
    net = iface.network
    ip = iface.ip
    if net.num_addresses <= 2:
        other = [a for a in net if a != ip]
        if other:
            return str(other[0])
    hosts = net.hosts()
    first = next(hosts, None)
    if first is None:
        raise ConfigError(f"tunnel {tcfg.name!r}: cannot derive health.target from {iface}")
    if first != ip:
        return str(first)
    second = next(hosts, None)
    if second is None:
        raise ConfigError(f"tunnel {tcfg.name!r}: cannot derive health.target from {iface}")
    return str(second)


def write_status_file(path: str | os.PathLike[str], text: str) -> None:
    """Atomically replace ``path`` with ``text`` (``OK``/``NOT_OK``, TunConnector's contract)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class HealthMonitor:
    """Runs a :class:`HealthCheck` for one tunnel until cancelled."""

    def __init__(
        self,
        name: str,
        cfg: HealthConfig,
        target: str,
        *,
        netns: str | None = None,
        kind: Kind = "auto",
        pinger_factory: Callable[[], Any] | None = None,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self.target = target
        self.netns = netns
        self.kind: Kind = kind
        self._pinger_factory = pinger_factory
        self.check = HealthCheck(
            interval=cfg.interval, probes=cfg.probes, threshold=cfg.threshold
        )
        self._listeners: list[Listener] = []
        self._pinger: Any = None
        self._written: str | None = None
        self._write_error: str | None = None
        self._probes: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.error: str | None = None
        self._changed = asyncio.Event()

    @classmethod
    def for_tunnel(cls, tcfg: TunnelConfig, **kwargs: Any) -> HealthMonitor:
        if tcfg.health is None:
            raise ConfigError(f"tunnel {tcfg.name!r} has no [tunnel.health]")
        target = tcfg.health.target or default_target(tcfg)
        return cls(tcfg.name, tcfg.health, target, netns=tcfg.netns, **kwargs)

    # -- public --------------------------------------------------------------------------
    @property
    def state(self) -> HealthState:
        return self.check.state

    @property
    def ok(self) -> bool:
        return self.check.state is HealthState.OK

    def add_listener(self, cb: Listener) -> None:
        self._listeners.append(cb)

    def snapshot(self) -> dict[str, Any]:
        snap: dict[str, Any] = self.check.snapshot()
        snap["target"] = self.target
        snap["status_file"] = self.cfg.status_file
        snap["error"] = self.error
        return snap

    async def wait_for(self, state: HealthState, timeout: float) -> None:
        """Wait until the verdict is ``state`` (for tests and start-up ordering)."""
        async with asyncio.timeout(timeout):
            while self.check.state is not state:
                self._changed.clear()
                await self._changed.wait()

    def start(self) -> asyncio.Task[None]:
        if self._task is None or self._task.done():
            # the file exists (NOT_OK) as soon as start() returns: nothing vouches yet,
            # and a privilege drop right after can hand it to the new user
            self._write_status(force="NOT_OK")
            # open the ICMP socket now, while the daemon may still be root (raw socket,
            # setns): a privilege drop may follow before the first probe
            try:
                self._get_pinger()
            except (TunconnectorError, OSError) as exc:
                self.error = str(exc)  # retried at every probe
            self._task = asyncio.create_task(self.run(), name=f"health-{self.name}")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.check.reset(loop.time())
        try:
            while True:
                now = loop.time()
                due = self.check.get_timer()
                if due > now:
                    await asyncio.sleep(due - now)
                    continue
                seq = self.check.send_probe(now)
                t = asyncio.create_task(self._probe(seq), name=f"health-{self.name}-{seq}")
                self._probes.add(t)
                t.add_done_callback(self._probes.discard)
        finally:
            for t in list(self._probes):
                t.cancel()
            if self._pinger is not None:
                self._pinger.close()
                self._pinger = None
            # the daemon no longer vouches for the link
            self._write_status(force="NOT_OK")

    # -- internals -----------------------------------------------------------------------
    def _get_pinger(self) -> Any:
        if self._pinger is None:
            if self._pinger_factory is not None:
                self._pinger = self._pinger_factory()
            else:
                ip = ipaddress.ip_address(self.target)
                family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
                self._pinger = Pinger(family, kind=self.kind, netns=self.netns)
        return self._pinger

    async def _probe(self, seq: int) -> None:
        loop = asyncio.get_running_loop()
        rtt: float | None = None
        try:
            pinger = self._get_pinger()
            rtt = await pinger.ping(self.target, self.cfg.timeout)
            if self.error is not None:
                self.error = None
        except (TunconnectorError, OSError) as exc:
            if self.error != str(exc):
                log.warning("tunnel %s: health probe failed: %s", self.name, exc)
            self.error = str(exc)
        self.check.probe_result(seq, rtt, loop.time())
        while (ev := self.check.next_event()) is not None:
            self._on_change(ev)
        self._write_status()

    def _on_change(self, ev: HealthChanged) -> None:
        log.info(
            "tunnel %s: health %s -> %s (%d/%d answered, target %s)",
            self.name, ev.old.value, ev.new.value, ev.answered, ev.window, self.target,
            extra={"tunnel": self.name, "event": "health"},
        )
        self._changed.set()
        for cb in list(self._listeners):
            try:
                cb(self.name, ev)
            except Exception:  # a listener must not kill the check
                log.exception("tunnel %s: health listener failed", self.name)

    def _write_status(self, force: str | None = None) -> None:
        path = self.cfg.status_file
        if not path:
            return
        text = force or ("OK" if self.check.state is HealthState.OK else "NOT_OK")
        if text == self._written and force is None:
            return
        try:
            write_status_file(path, text)
            self._written = text
            self._write_error = None
        except OSError as exc:
            if self._write_error != str(exc):  # once per distinct error, not per probe
                log.warning("tunnel %s: cannot write status file %s: %s", self.name, path, exc,
                            extra={"tunnel": self.name})
            self._write_error = str(exc)


async def health_service(node: Any) -> Callable[[], Awaitable[None]] | None:
    """Node service: one monitor per tunnel with ``[tunnel.health]`` (``node.health``)."""
    monitors: dict[str, HealthMonitor] = {}
    for name, tunnel in node.tunnels.items():
        if tunnel.config.health is None:
            continue
        mon = HealthMonitor.for_tunnel(tunnel.config)
        monitors[name] = mon
        mon.start()
    node.health = monitors
    if not monitors:
        return None

    async def stop() -> None:
        await asyncio.gather(*(m.stop() for m in monitors.values()))

    return stop
