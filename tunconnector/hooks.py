"""Event hooks: run operator programs when a tunnel or a hub's peer comes up or goes down.

OpenVPN's ``--up``/``--down`` habit, which routing daemons (BIRD) and scripts rely on,
without its shell: every hook is an argv list started with ``execve`` semantics (no
shell, so no quoting bugs and no injection through peer names), with a timeout after
which its whole process group is killed. Facts about the event travel in the
environment (``TUNCONNECTOR_*``, plus OpenVPN's own names such as ``dev`` and
``ifconfig_local`` so existing scripts work unchanged).

A hook is advice, never a dependency: a hook that fails, hangs or cannot be started is
logged once and counted (``status`` and ``/metrics``), and the tunnel goes on. Hooks of
one tunnel run one after another in event order, so a ``down`` never overtakes the
``up`` it follows; a hook that hangs delays the next by at most its timeout.

Hub mode calls the same runner per peer::

    hooks.fire("peer_up", peer_env(name="alice", endpoint="192.0.2.7:55556",
                                   remote_address="10.8.0.7"))
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping
from typing import Any

from .config import HooksConfig

log = logging.getLogger("tunconnector.hooks")

EVENTS = ("up", "down", "peer_up", "peer_down")

#: environment variables of the daemon a hook does not inherit (API credentials)
SECRET_ENV = ("API_PASSWORD", "API_TOKEN", "API_USERNAME")

#: most events waiting to run per tunnel; beyond that new ones are dropped and counted
MAX_PENDING = 256


def peer_env(
    *,
    name: str | None = None,
    endpoint: str | None = None,
    remote_address: str | None = None,
) -> dict[str, str]:
    """The per-peer part of a hook's environment (hub ``peer_up``/``peer_down``)."""
    env: dict[str, str] = {}
    if name is not None:
        env["TUNCONNECTOR_PEER_NAME"] = name
        env["common_name"] = name
    if endpoint is not None:
        env["TUNCONNECTOR_PEER"] = endpoint
        host, _, port = endpoint.rpartition(":")
        if host:
            env["trusted_ip"] = host.strip("[]")
            env["trusted_port"] = port
    if remote_address is not None:
        env["TUNCONNECTOR_REMOTE_ADDRESS"] = remote_address
        env["ifconfig_remote"] = remote_address.split("/")[0]
    return env


def tunnel_env(
    *,
    tunnel: str,
    device: str | None,
    local_address: str | None = None,
    remote_address: str | None = None,
    mtu: int | None = None,
    dev_type: str | None = None,
) -> dict[str, str]:
    """The per-tunnel part of a hook's environment."""
    env = {"TUNCONNECTOR_TUNNEL": tunnel, "TUNCONNECTOR_DEVICE": device or "",
           "dev": device or ""}
    if local_address is not None:
        env["TUNCONNECTOR_LOCAL_ADDRESS"] = local_address
        ip, _, plen = local_address.partition("/")
        env["ifconfig_local"] = ip
        if plen:
            env["TUNCONNECTOR_PREFIXLEN"] = plen
    if remote_address is not None:
        env.update(peer_env(remote_address=remote_address))
    if mtu is not None:
        env["TUNCONNECTOR_MTU"] = str(mtu)
        env["tun_mtu"] = str(mtu)
    if dev_type is not None:
        env["dev_type"] = dev_type
    return env


class Hooks:
    """Runs the ``[tunnel.hooks]`` of one tunnel. ``fire()`` never raises and never blocks."""

    def __init__(self, cfg: HooksConfig, *, tunnel: str) -> None:
        self.cfg = cfg
        self.tunnel = tunnel
        self.counts: dict[str, collections.Counter[str]] = {
            e: collections.Counter() for e in EVENTS
        }
        self.last_error: str | None = None
        self._queue: collections.deque[tuple[str, list[str], dict[str, str]]] = \
            collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._log = logging.LoggerAdapter(log, {"tunnel": tunnel})

    def argv(self, event: str) -> list[str]:
        return list(getattr(self.cfg, event, None) or [])

    def fire(self, event: str, env: Mapping[str, str] | None = None) -> bool:
        """Queue ``event``'s hook with ``env`` added to the base environment.

        Returns False when the event has no hook (or cannot be queued). Safe to call from
        a state listener: the hook runs later on the running loop.
        """
        if event not in EVENTS:
            raise ValueError(f"unknown hook event {event!r}")
        argv = self.argv(event)
        if not argv:
            return False
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._fail(event, "no running event loop", "not_run")
            return False
        if len(self._queue) >= MAX_PENDING:
            self._fail(event, f"more than {MAX_PENDING} hooks waiting", "dropped")
            return False
        full = dict(env or {})
        full["TUNCONNECTOR_EVENT"] = event
        full["script_type"] = event
        full.setdefault("TUNCONNECTOR_TUNNEL", self.tunnel)
        self._queue.append((event, argv, full))
        self._idle.clear()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain(), name=f"hooks-{self.tunnel}")
        return True

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued hook has finished; False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """Let queued hooks finish (``down`` on stop must run), each bounded by its timeout."""
        bound = self.cfg.timeout * (len(self._queue) + 1) + 1.0
        if not await self.wait_idle(bound) and self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._worker

    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            e: dict(self.counts[e]) for e in EVENTS if self.argv(e) or self.counts[e]
        }
        out["failures"] = sum(c["failed"] + c["timeout"] + c["not_run"] + c["dropped"]
                              for c in self.counts.values())
        out["last_error"] = self.last_error
        return out

    # -- internals ------------------------------------------------------------------
    def _fail(self, event: str, why: str, result: str) -> None:
        self.counts[event][result] += 1
        self.last_error = f"{event}: {why}"
        self._log.warning("hook %s of tunnel %s: %s", event, self.tunnel, why)

    async def _drain(self) -> None:
        try:
            while self._queue:
                event, argv, env = self._queue.popleft()
                await self._run(event, argv, env)
        finally:
            if not self._queue:
                self._idle.set()

    async def _run(self, event: str, argv: list[str], extra: Mapping[str, str]) -> None:
        self.counts[event]["runs"] += 1
        started = time.monotonic()
        result, why = await run_program(argv, extra, self.cfg.timeout)
        if result != "ok":
            self._fail(event, why, result)
            return
        self.counts[event]["ok"] += 1
        self._log.info("hook %s of tunnel %s ran in %.2fs", event, self.tunnel,
                       time.monotonic() - started)


async def run_program(argv: list[str], extra: Mapping[str, str], timeout: float,
                      *, cwd: str | None = None) -> tuple[str, str]:
    """Run ``argv`` (no shell) with the daemon's environment minus secrets plus ``extra``;
    its own process group, killed whole after ``timeout``. Returns ``("ok", "")`` or
    ``("failed" | "timeout", why)``. Also runs openvpn's up/down scripts (ovpn_scripts)."""
    env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
    env.update(extra)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdin=asyncio.subprocess.DEVNULL, cwd=cwd,
            start_new_session=True,  # its own process group: the timeout kills it all
        )
    except OSError as exc:
        return "failed", f"cannot start {argv[0]!r}: {exc.strerror or exc}"
    try:
        rc = await asyncio.wait_for(proc.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 5.0)
        return "timeout", f"{argv[0]!r} still running after {timeout:g}s, killed"
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        raise
    if rc != 0:
        what = f"killed by signal {-rc}" if rc < 0 else f"exit status {rc}"
        return "failed", f"{argv[0]!r} failed: {what}"
    return "ok", ""
