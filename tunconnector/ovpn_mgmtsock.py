"""The socket side of openvpn's management interface, shared by the client's
(:mod:`tunconnector.ovpn_mgmt`) and the server's (:mod:`tunconnector.ovpnserver_mgmt`).

A TCP or unix listener (a stale unix socket is removed first, and the socket on close, as
openvpn does), several connections at once, openvpn's ``ENTER PASSWORD:`` prompt when the
config names a password file (three tries), CRLF line ends, and the daemon's log lines as
``time,FLAG,message`` for ``log``. What a connection is greeted with and what its lines
mean stay with each face: :meth:`ManagementListener._connect`, ``_greeting``, ``_line``.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import contextlib
import hmac
import logging
import os
import socket
from collections.abc import Callable
from typing import ClassVar, Generic, TypeVar

from .errors import TransportError
from .ovpnconfig import Management as Spec

PASSWORD_TRIES = 3

_FLAGS = {logging.DEBUG: "D", logging.INFO: "I", logging.WARNING: "W",
          logging.ERROR: "N", logging.CRITICAL: "F"}


class LogTap(logging.Handler):
    """The daemon's log lines, as ``time,FLAG,message``, for ``log``."""

    def __init__(self, add_log: Callable[[str], None]) -> None:
        super().__init__(logging.DEBUG)
        self.add_log = add_log

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage().replace("\r", " ").replace("\n", " ")
        except Exception:  # a bad format string must not break logging
            return
        self.add_log(f"{int(record.created)},{_FLAGS.get(record.levelno, 'I')},{msg}")


class Conn:
    """One management connection: whether it gave the password yet, and the task that
    sends its ``bytecount`` lines (cancelled when it goes)."""

    def __init__(self, writer: asyncio.StreamWriter, *, authed: bool) -> None:
        self.writer = writer
        self.authed = authed
        self.tries = 0
        self.ticker: asyncio.Task[None] | None = None

    def send(self, *lines: str) -> None:
        if lines and not self.writer.is_closing():
            self.writer.write("".join(f"{line}\r\n" for line in lines).encode())

    def prompt(self) -> None:
        """openvpn's password prompt: no line end (the next reply follows it)."""
        if not self.writer.is_closing():
            self.writer.write(b"ENTER PASSWORD:")


C = TypeVar("C", bound=Conn)


class ManagementListener(abc.ABC, Generic[C]):
    """The listener, its connections, the password and the log lines kept for ``log``."""

    #: where the listener's own lines go (each face logs under its own name)
    _log: ClassVar[logging.Logger]

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.logs: collections.deque[str] = collections.deque(maxlen=max(spec.log_cache, 1))
        self._conns: set[C] = set()
        self._server: asyncio.Server | None = None
        self._tap = LogTap(self.add_log)

    # -- what each face decides -------------------------------------------------------
    @abc.abstractmethod
    def _connect(self, writer: asyncio.StreamWriter) -> C:
        """A new connection (``authed`` when no password is asked)."""

    @abc.abstractmethod
    def _greeting(self, c: C) -> list[str]:
        """What follows a correct password."""

    def _welcome(self, c: C) -> list[str]:
        """What a connection gets at once when no password is asked."""
        return self._greeting(c)

    @abc.abstractmethod
    async def _line(self, c: C, line: str) -> bool:
        """Answer one line (line end removed) of an authed connection; False ends it."""

    @abc.abstractmethod
    def add_log(self, line: str) -> None:
        """One ``time,FLAG,message`` line of the daemon's log."""

    # -- lifecycle --------------------------------------------------------------------
    @property
    def where(self) -> str:
        spec = self.spec
        return spec.address if spec.unix else f"{spec.address}:{spec.port}"

    async def start(self) -> None:
        spec = self.spec
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
        self._log.info("MANAGEMENT: %s listening on %s",
                       "unix domain socket" if spec.unix else "TCP socket", self.where)

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

    # -- one connection ---------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        c = self._connect(writer)
        self._conns.add(c)
        try:
            if c.authed:
                c.send(*self._welcome(c))
            else:
                c.prompt()
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

    def _password(self, c: C, line: str) -> bool:
        if hmac.compare_digest(line.encode(), (self.spec.password or "").encode()):
            c.authed = True
            c.send("SUCCESS: password is correct", *self._greeting(c))
            return True
        c.tries += 1
        c.send("ERROR: bad password")
        if c.tries >= PASSWORD_TRIES:
            self._log.warning("MAN: client connection rejected after %d failed password "
                              "attempts", PASSWORD_TRIES)
            return False
        c.prompt()
        return True
