"""The management interface of an openvpn *server* (``management PATH unix`` /
``management HOST PORT [PWFILE]`` in a server config): the sockets around
:class:`~.proto.openvpn.mgmtserver.ServerManagement`.

The socket side (listener, password prompt, CRLF lines) is the client's too
(:mod:`tunconnector.ovpn_mgmtsock`). Each connection has its own
:class:`ServerManagement`; every line it sends is answered against a fresh
:meth:`snapshot` of the server, and the actions it asks for are carried out here:

- ``kill CN|IP:port`` / ``client-kill CID [MSG]``: the session whose peer-id is the
  client id is ended through the server's ``close_session`` (the client is told to
  reconnect, by explicit-exit-notify over UDP or by the TCP stream closing; the sans-I/O
  session cannot send a custom ``RESTART``/``HALT`` message, so ``MSG`` is only logged);
- ``signal SIGTERM|SIGINT`` stops the process (a SIGTERM to ourselves), ``SIGHUP`` and
  ``SIGUSR1`` read the client-config-dir again, ``SIGUSR2`` logs the status;
- ``client-auth``/``client-auth-nt``/``client-deny``: the server config cannot turn on
  ``management-client-auth``, so no authentication is ever pending and these get
  openvpn's ``ERROR: client-auth command failed``.

``bytecount N`` sends ``>BYTECOUNT_CLI:`` lines from a per-connection task; ``log on``
shows the daemon's log lines as ``>LOG:``. The unix socket is removed on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .errors import TunconnectorError
from .ovpn_mgmtsock import Conn, ManagementListener
from .ovpnconfig import Management as Spec
from .proto.openvpn.mgmt import StateEntry
from .proto.openvpn.mgmtserver import ClientAuth, KillClient, SendSignal, ServerManagement
from .proto.openvpn.serverstatus import ServerSnapshot, status_lines

log = logging.getLogger("tunconnector.openvpn.server.management")

#: the longest a bytecount ticker sleeps before looking at its interval again
_TICK_MAX = 1.0


class Tunnel(Protocol):
    """What the interface needs of :class:`~.ovpnserver.OpenVPNServerTunnel`."""

    server: Any  # the sans-I/O OpenVPNServer: ``sessions``, ``close_session``

    def snapshot(self) -> ServerSnapshot: ...

    def reload_client_configs(self) -> list[str]: ...


def _terminate() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


class _Conn(Conn):
    def __init__(self, writer: asyncio.StreamWriter, mgmt: ServerManagement, *,
                 authed: bool) -> None:
        super().__init__(writer, authed=authed)
        self.mgmt = mgmt
        self.wake = asyncio.Event()  # the bytecount interval changed


class ServerManagementListener(ManagementListener[_Conn]):
    """The listener and its connections. ``settle(now)`` is called after a client was
    ended, for the tunnel to send what the session produced (its exit notice) and arm
    its timer; ``terminate`` is what ``signal SIGTERM`` does (default: a SIGTERM to
    this process, which :func:`~.ovpnserver.serve` turns into a clean stop)."""

    _log = log

    def __init__(self, spec: Spec, tunnel: Tunnel, *,
                 settle: Callable[[float], None] | None = None,
                 terminate: Callable[[], None] = _terminate,
                 local_ip: str = "", status_version: int = 1) -> None:
        super().__init__(spec)
        self.tunnel = tunnel
        self.settle = settle
        self.terminate = terminate
        self.status_version = status_version
        self.states = [StateEntry(int(time.time()), "CONNECTED", "SUCCESS", local_ip)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        await super().start()
        if self.spec.hold:
            log.warning("management-hold: not supported on a server (no hold to release)")

    # -- notifications ----------------------------------------------------------------
    def add_log(self, line: str) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() != self._thread:  # a log line from another thread
            loop.call_soon_threadsafe(self.add_log, line)
            return
        self.logs.append(line)
        keep = self.logs.maxlen or 1
        for c in list(self._conns):
            shown = c.mgmt.add_log(line)
            del c.mgmt.logs[:-keep]
            if c.authed:
                c.send(*shown)

    # -- one connection ---------------------------------------------------------------
    def _connect(self, writer: asyncio.StreamWriter) -> _Conn:
        m = ServerManagement(pid=os.getpid(), status_version=self.status_version)
        m.states = list(self.states)
        m.logs = list(self.logs)
        c = _Conn(writer, m, authed=self.spec.password is None)
        c.ticker = asyncio.get_running_loop().create_task(self._tick(c))
        return c

    def _greeting(self, c: _Conn) -> list[str]:
        return c.mgmt.greeting()

    async def _line(self, c: _Conn, line: str) -> bool:
        """One command; False ends the connection."""
        loop = asyncio.get_running_loop()
        before = c.mgmt.next_timer()
        reply = c.mgmt.receive_line(line, self.tunnel.snapshot(), loop.time())
        c.send(*reply.lines)
        if c.mgmt.next_timer() != before:
            c.wake.set()
        with contextlib.suppress(ConnectionError, OSError):
            await c.writer.drain()  # the answer leaves before what it triggers
        for action in reply.actions:
            try:
                self._act(action)
            except Exception:
                log.exception("management: %s failed", action)
        return not reply.close

    def _act(self, action: KillClient | SendSignal | ClientAuth) -> None:
        if isinstance(action, KillClient):
            self.kill(action.cid, action.message)
        elif isinstance(action, SendSignal):
            self.signal(action.name)
        else:  # never pending without management-client-auth (see the docstring)
            log.warning("management: client-auth for %d/%d ignored: "
                        "management-client-auth is not supported", action.cid, action.kid)

    def kill(self, cid: int, message: str | None = None) -> bool:
        """End the client whose peer-id is ``cid``."""
        server = self.tunnel.server
        found = [s for s in list(server.sessions.values())
                 if s.peer_id == cid and not s.closed]
        now = asyncio.get_running_loop().time()
        for s in found:
            log.info("MAN: client %s (%s) killed%s", cid, s.common_name or s.username,
                     f" ({message}: sent as a restart)" if message else "")
            server.close_session(s, now)
        if found and self.settle is not None:
            self.settle(now)
        return bool(found)

    def signal(self, name: str) -> None:
        log.info("MAN: signal %s received", name)
        if name in ("SIGTERM", "SIGINT"):
            self.terminate()
        elif name in ("SIGHUP", "SIGUSR1"):
            with contextlib.suppress(TunconnectorError):  # logged by the tunnel
                self.tunnel.reload_client_configs()
        elif name == "SIGUSR2":
            for line in status_lines(self.tunnel.snapshot(), self.status_version):
                log.info("%s", line)

    async def _tick(self, c: _Conn) -> None:
        """``bytecount N``: ``>BYTECOUNT_CLI:`` lines every N seconds."""
        loop = asyncio.get_running_loop()
        while not c.writer.is_closing():
            due = c.mgmt.next_timer()
            delay = _TICK_MAX if due is None else min(max(due - loop.time(), 0.0), _TICK_MAX)
            c.wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(c.wake.wait(), delay)
            if c.mgmt.next_timer() is not None:
                c.send(*c.mgmt.tick(self.tunnel.snapshot(), loop.time()))


__all__ = ["ServerManagementListener", "Tunnel"]
