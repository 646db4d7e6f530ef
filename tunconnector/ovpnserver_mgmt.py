"""The management interface of an openvpn *server* (``management PATH unix`` /
``management HOST PORT [PWFILE]`` in a server config): the sockets around
:class:`~.proto.openvpn.mgmtserver.ServerManagement`.

The same socket side as the client's (:mod:`tunconnector.ovpn_mgmt`): a TCP or unix
listener, several connections at once, openvpn's ``ENTER PASSWORD:`` prompt when the
config names a password file (three tries), CRLF line ends. Each connection has its own
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
import collections
import contextlib
import hmac
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .errors import TransportError, TunconnectorError
from .ovpn_mgmt import PASSWORD_TRIES
from .ovpnconfig import Management as Spec
from .proto.openvpn.mgmt import StateEntry
from .proto.openvpn.mgmtserver import ClientAuth, KillClient, SendSignal, ServerManagement
from .proto.openvpn.serverstatus import ServerSnapshot, status_lines

log = logging.getLogger("tunconnector.openvpn.server.management")

_FLAGS = {logging.DEBUG: "D", logging.INFO: "I", logging.WARNING: "W",
          logging.ERROR: "N", logging.CRITICAL: "F"}
#: the longest a bytecount ticker sleeps before looking at its interval again
_TICK_MAX = 1.0


class Tunnel(Protocol):
    """What the interface needs of :class:`~.ovpnserver.OpenVPNServerTunnel`."""

    server: Any  # the sans-I/O OpenVPNServer: ``sessions``, ``close_session``

    def snapshot(self) -> ServerSnapshot: ...

    def reload_client_configs(self) -> list[str]: ...


def _terminate() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


class _LogTap(logging.Handler):
    """The daemon's log lines, as ``time,FLAG,message``, for ``log``."""

    def __init__(self, owner: ServerManagementListener) -> None:
        super().__init__(logging.DEBUG)
        self.owner = owner

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage().replace("\r", " ").replace("\n", " ")
        except Exception:  # a bad format string must not break logging
            return
        self.owner.add_log(f"{int(record.created)},{_FLAGS.get(record.levelno, 'I')},{msg}")


class _Conn:
    def __init__(self, writer: asyncio.StreamWriter, mgmt: ServerManagement) -> None:
        self.writer = writer
        self.mgmt = mgmt
        self.authed = False
        self.tries = 0
        self.wake = asyncio.Event()  # the bytecount interval changed
        self.ticker: asyncio.Task[None] | None = None

    def send(self, *lines: str) -> None:
        if lines and not self.writer.is_closing():
            self.writer.write("".join(f"{line}\r\n" for line in lines).encode())

    def prompt(self) -> None:
        """openvpn's password prompt: no line end."""
        if not self.writer.is_closing():
            self.writer.write(b"ENTER PASSWORD:")


class ServerManagementListener:
    """The listener and its connections. ``settle(now)`` is called after a client was
    ended, for the tunnel to send what the session produced (its exit notice) and arm
    its timer; ``terminate`` is what ``signal SIGTERM`` does (default: a SIGTERM to
    this process, which :func:`~.ovpnserver.serve` turns into a clean stop)."""

    def __init__(self, spec: Spec, tunnel: Tunnel, *,
                 settle: Callable[[float], None] | None = None,
                 terminate: Callable[[], None] = _terminate,
                 local_ip: str = "", status_version: int = 1) -> None:
        self.spec = spec
        self.tunnel = tunnel
        self.settle = settle
        self.terminate = terminate
        self.status_version = status_version
        self.states = [StateEntry(int(time.time()), "CONNECTED", "SUCCESS", local_ip)]
        self.logs: collections.deque[str] = collections.deque(maxlen=max(spec.log_cache, 1))
        self._conns: set[_Conn] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = 0
        self._tap = _LogTap(self)

    # -- lifecycle --------------------------------------------------------------------
    @property
    def where(self) -> str:
        spec = self.spec
        return spec.address if spec.unix else f"{spec.address}:{spec.port}"

    async def start(self) -> None:
        spec = self.spec
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        try:
            if spec.unix:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(spec.address)  # a stale socket, as openvpn
                self._server = await asyncio.start_unix_server(self._serve, path=spec.address)
            else:
                self._server = await asyncio.start_server(
                    self._serve, host=spec.address, port=spec.port,
                    family=socket.AF_UNSPEC, reuse_address=True)
        except OSError as exc:
            raise TransportError(f"management {self.where}: {exc.strerror or exc}") from exc
        logging.getLogger("tunconnector").addHandler(self._tap)
        log.info("MANAGEMENT: %s listening on %s",
                 "unix domain socket" if spec.unix else "TCP socket", self.where)
        if spec.hold:
            log.warning("management-hold: not supported on a server (no hold to release)")

    async def close(self) -> None:
        logging.getLogger("tunconnector").removeHandler(self._tap)
        if self._server is not None:
            self._server.close()
        for c in list(self._conns):
            if c.ticker is not None:
                c.ticker.cancel()
            c.writer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        if self.spec.unix:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spec.address)

    @property
    def bound_port(self) -> int | None:
        """The TCP port (useful with port 0)."""
        if self._server is None or self.spec.unix or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

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
    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        m = ServerManagement(pid=os.getpid(), status_version=self.status_version)
        m.states = list(self.states)
        m.logs = list(self.logs)
        c = _Conn(writer, m)
        self._conns.add(c)
        try:
            if self.spec.password is None:
                c.authed = True
                c.send(*m.greeting())
            else:
                c.prompt()
            c.ticker = asyncio.get_running_loop().create_task(self._tick(c))
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                line = raw.decode(errors="replace").rstrip("\r\n")
                if not c.authed:
                    if not self._password(c, line.strip()):
                        break
                    await writer.drain()
                    continue
                if not await self._line(c, line):
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self._conns.discard(c)
            if c.ticker is not None:
                c.ticker.cancel()
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()

    def _password(self, c: _Conn, line: str) -> bool:
        if hmac.compare_digest(line.encode(), (self.spec.password or "").encode()):
            c.authed = True
            c.send("SUCCESS: password is correct", *c.mgmt.greeting())
            return True
        c.tries += 1
        c.send("ERROR: bad password")
        if c.tries >= PASSWORD_TRIES:
            log.warning("MAN: client connection rejected after %d failed password attempts",
                        PASSWORD_TRIES)
            return False
        c.prompt()
        return True

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
