"""openvpn's management interface (``management PATH unix`` / ``management HOST PORT``).

The line protocol of openvpn's ``manage.c`` and ``doc/management-notes.txt``, for the
tools that drive an openvpn client through it (PEERING's ``echo quit | socat -
UNIX:var/MUX.sock``, ``signal SIGTERM``; GUIs; monitoring): a ``>INFO:`` greeting,
``SUCCESS:``/``ERROR:`` replies, multi-line replies ending in ``END``, and the real-time
``>STATE:``, ``>LOG:``, ``>BYTECOUNT:`` and ``>HOLD:`` notifications.

Commands: ``help``, ``version [N]``, ``pid``, ``state [on|off|all|N] [...]``,
``status [1|2|3]``, ``bytecount N``, ``signal SIGTERM|SIGHUP|SIGUSR1|SIGUSR2|SIGINT``,
``hold [on|off|release]``, ``log on|off|all|N [...]``, ``verb [N]``, ``mute [N]``,
``quit``/``exit``. With a password file a client must send the password first.
:class:`Management` holds no tunnel state: the process (:mod:`ovpn_process`) calls
:meth:`Management.set_state` and answers through :class:`Backend`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import __version__
from .errors import TransportError
from .ovpnconfig import Management as Spec
from .proto.openvpn.mgmt import GREETING, VERSION, StateEntry, history, parse_command
from .proto.openvpn.mgmt import signal_name as _signal_name
from .proto.openvpn.mgmt import verb as _verb

log = logging.getLogger("tunconnector.openvpn.management")

#: what `version` reports as openvpn's title (tools parse the "OpenVPN 2.x" prefix)
TITLE = f"OpenVPN 2.6.14 tunconnector-{__version__} [openvpn-compatible client]"
PASSWORD_TRIES = 3

HELP = [
    f"Management Interface for {TITLE}",
    "Commands:",
    "bytecount n            : Show bytes in/out, update every n secs (0=off).",
    "echo [on|off] [N|all]  : Like log, but only show messages in echo buffer.",
    "exit|quit              : Close management session.",
    "forget-passwords       : Forget passwords entered so far.",
    "help                   : Print this message.",
    "hold [on|off|release]  : Set/show hold flag to on/off state, or",
    "                         release current hold and start tunnel.",
    "log [on|off] [N|all]   : Turn on/off realtime log display",
    "                         + show last N lines or 'all' for entire history.",
    "mute [n]               : Set log mute level to n, or show level if n is absent.",
    "pid                    : Show process ID of the current OpenVPN process.",
    "signal s               : Send signal s to daemon,",
    "                         s = SIGHUP|SIGTERM|SIGUSR1|SIGUSR2.",
    "state [on|off] [N|all] : Like log, but show state history.",
    "status [n]             : Show current daemon status info using format #n.",
    "verb [n]               : Set log verbosity level to n, or show if n is absent.",
    "version [n]            : Set client's version to n or show current version of daemon.",
    "END",
]
_FLAGS = {logging.DEBUG: "D", logging.INFO: "I", logging.WARNING: "W",
          logging.ERROR: "N", logging.CRITICAL: "F"}


@dataclass(slots=True)
class Backend:
    """What the management interface asks of the process."""

    status_lines: Callable[[], list[str]]
    bytecount: Callable[[], tuple[int, int]]
    signal: Callable[[str], None]
    hold_release: Callable[[], None]
    verb: list[int] = field(default_factory=lambda: [1])


def _query_line(kind: str) -> str:
    return f">PASSWORD:Need '{kind}' username/password"


class _LogTap(logging.Handler):
    def __init__(self, mgmt: Management) -> None:
        super().__init__(logging.DEBUG)
        self.mgmt = mgmt

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage().replace("\r", " ").replace("\n", " ")
        except Exception:  # a bad format string must not break logging
            return
        flag = _FLAGS.get(record.levelno, "I")
        self.mgmt.add_log(f"{int(record.created)},{flag},{msg}")


class _Client:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.state_rt = False
        self.log_rt = False
        self.bytecount = 0
        self.bytecount_task: asyncio.Task[None] | None = None
        self.authed = False
        self.tries = 0

    def send(self, *lines: str) -> None:
        if self.writer.is_closing():
            return
        self.writer.write("".join(f"{line}\r\n" for line in lines).encode())

    def prompt(self) -> None:
        """openvpn's password prompt: no line end (the next reply follows it)."""
        if not self.writer.is_closing():
            self.writer.write(b"ENTER PASSWORD:")


class Management:
    def __init__(self, spec: Spec, backend: Backend) -> None:
        self.spec = spec
        self.backend = backend
        self.hold = spec.hold
        self.states: collections.deque[StateEntry] = collections.deque(maxlen=1000)
        self.logs: collections.deque[str] = collections.deque(maxlen=max(spec.log_cache, 1))
        self._clients: set[_Client] = set()
        self._server: asyncio.Server | None = None
        self._tap = _LogTap(self)
        self._holding: asyncio.Event | None = None
        #: a >PASSWORD: query waiting for its answer: (type, username, password, done)
        self._query: tuple[str, list[str], asyncio.Event] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle --------------------------------------------------------------------
    async def start(self) -> None:
        spec = self.spec
        try:
            if spec.unix:
                path = spec.address
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # openvpn deletes a stale socket too
                self._server = await asyncio.start_unix_server(self._serve, path=path)
            else:
                self._server = await asyncio.start_server(
                    self._serve, host=spec.address, port=spec.port,
                    family=socket.AF_UNSPEC, reuse_address=True)
        except OSError as exc:
            where = spec.address if spec.unix else f"{spec.address}:{spec.port}"
            raise TransportError(f"management {where}: {exc.strerror or exc}") from exc
        logging.getLogger("tunconnector").addHandler(self._tap)
        log.info("MANAGEMENT: %s listening on %s", "unix domain socket" if spec.unix
                 else "TCP socket", spec.address if spec.unix else f"{spec.address}:"
                 f"{spec.port}")

    async def close(self) -> None:
        logging.getLogger("tunconnector").removeHandler(self._tap)
        if self._server is not None:
            self._server.close()
        for c in list(self._clients):
            if c.bytecount_task is not None:
                c.bytecount_task.cancel()
            c.writer.close()
        for t in list(self._tasks):
            t.cancel()
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

    async def wait_hold_release(self) -> None:
        """``management-hold``: wait for ``hold release``, telling clients we wait."""
        if not self.hold:
            return
        self._holding = asyncio.Event()
        self._broadcast(">HOLD:Waiting for hold release:0")
        await self._holding.wait()
        self._holding = None

    async def query_user_pass(self, kind: str = "Auth") -> tuple[str, str]:
        """``management-query-passwords``: ask the clients for a username and password
        (``>PASSWORD:Need 'Auth' username/password``), as openvpn does."""
        got: list[str] = ["", ""]
        done = asyncio.Event()
        self._query = (kind, got, done)
        self._broadcast(_query_line(kind))
        await done.wait()
        self._query = None
        return got[0], got[1]

    # -- notifications ----------------------------------------------------------------
    def set_state(self, name: str, desc: str = "", *, local_ip: str = "", remote: str = "",
                  remote_port: str = "", local_ip6: str = "") -> None:
        entry = StateEntry(int(time.time()), name, desc, local_ip, remote, remote_port,
                           "", "", local_ip6)
        self.states.append(entry)
        for c in self._clients:
            if c.state_rt and self._ready(c):
                c.send(f">STATE:{entry.line()}")

    def add_log(self, line: str) -> None:
        self.logs.append(line)
        for c in self._clients:
            if c.log_rt and self._ready(c):
                c.send(f">LOG:{line}")

    def _broadcast(self, line: str) -> None:
        for c in self._clients:
            if self._ready(c):
                c.send(line)

    def _ready(self, c: _Client) -> bool:
        return c.authed or self.spec.password is None

    # -- one client -------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c = _Client(writer)
        self._clients.add(c)
        try:
            if self.spec.password is None:
                c.send(GREETING)
                if self._holding is not None:
                    c.send(">HOLD:Waiting for hold release:0")
                if self._query is not None:
                    c.send(_query_line(self._query[0]))
            else:
                c.prompt()
            while not reader.at_eof():
                raw = await reader.readline()
                if not raw:
                    break
                line = raw.decode(errors="replace").strip()
                if not self._ready(c):
                    if not self._password(c, line):
                        break
                    continue
                if not line:
                    continue
                if not self._command(c, line):
                    break
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._clients.discard(c)
            if c.bytecount_task is not None:
                c.bytecount_task.cancel()
            with contextlib.suppress(Exception):
                await writer.drain()
            writer.close()

    def _password(self, c: _Client, line: str) -> bool:
        if hmac.compare_digest(line.encode(), (self.spec.password or "").encode()):
            c.authed = True
            c.send("SUCCESS: password is correct", GREETING)
            return True
        c.tries += 1
        c.send("ERROR: bad password")
        if c.tries >= PASSWORD_TRIES:
            log.warning("MAN: client connection rejected after %d failed password attempts",
                        PASSWORD_TRIES)
            return False
        c.prompt()
        return True

    def _command(self, c: _Client, line: str) -> bool:  # noqa: C901
        """Run one command; False closes the connection."""
        try:
            p = parse_command(line)
        except ValueError as exc:
            c.send(f"ERROR: {exc}")
            return True
        if p is None:
            return True
        cmd, args = p

        def need(n: int) -> bool:
            if len(args) < n:
                c.send(f"ERROR: The '{cmd}' command needs {n} parameter(s)")
                return False
            return True

        if cmd in ("quit", "exit"):
            return False
        if cmd == "help":
            c.send(*HELP)
        elif cmd == "version":
            if args:
                return True  # the client's version: accepted, no reply (as openvpn)
            c.send(f"OpenVPN Version: {TITLE}", f"Management Version: {VERSION}", "END")
        elif cmd == "pid":
            c.send(f"SUCCESS: pid={os.getpid()}")
        elif cmd == "state":
            for parm in (args or ["1"])[:2]:
                self._history(c, parm, "state", [e.line() for e in self.states])
        elif cmd == "log":
            if need(1):
                for parm in args[:2]:
                    self._history(c, parm, "log", list(self.logs))
        elif cmd == "status":
            if args and args[0] not in ("1", "2", "3"):
                c.send("ERROR: status version must be 1, 2 or 3")
            else:
                c.send(*self.backend.status_lines())
        elif cmd == "bytecount":
            if need(1):
                try:
                    n = int(args[0])
                except ValueError:
                    n = 0
                self._bytecount(c, n)
                c.send("SUCCESS: bytecount interval changed")
        elif cmd == "signal":
            if need(1):
                name = _signal_name(args[0])
                if name is None:
                    c.send(f"ERROR: signal '{args[0]}' is not a known signal type")
                else:
                    c.send(f"SUCCESS: signal {name} thrown")
                    self.backend.signal(name)
        elif cmd in ("username", "password"):
            if need(2):
                self._answer(c, cmd, args[0], args[1])
        elif cmd == "hold":
            self._hold(c, args[0] if args else None)
        elif cmd == "verb":
            reply, self.backend.verb[0] = _verb(args, self.backend.verb[0])
            c.send(reply)
        elif cmd == "echo":
            if need(1):
                for parm in args[:2]:
                    self._history(c, parm, "echo", [])  # nothing is echoed to GUIs
        elif cmd == "forget-passwords":
            # answered as openvpn; the credentials stay loaded for reconnects (documented)
            c.send("SUCCESS: Passwords were forgotten")
        elif cmd == "mute":
            c.send("SUCCESS: mute level changed" if args else "SUCCESS: mute=0")
        else:
            c.send("ERROR: unknown command, enter 'help' for more options")
        return True

    def _history(self, c: _Client, parm: str, kind: str, lines: list[str]) -> None:
        reply, realtime = history(parm, kind, lines)
        if realtime is not None:
            if kind == "state":
                c.state_rt = realtime
            elif kind == "log":
                c.log_rt = realtime
        c.send(*reply)

    def _answer(self, c: _Client, what: str, kind: str, value: str) -> None:
        q = self._query
        if q is None:
            c.send(f"ERROR: no {what} is currently needed at this time")
            return
        if kind != q[0]:
            c.send(f"ERROR: {what} of type '{kind}' entered, but we need one of type "
                   f"'{q[0]}'")
            return
        q[1][0 if what == "username" else 1] = value
        c.send(f"SUCCESS: '{kind}' {what} entered, but not yet verified")
        if q[1][0] and q[1][1]:
            q[2].set()

    def _hold(self, c: _Client, parm: str | None) -> None:
        if parm is None:
            c.send(f"SUCCESS: hold={int(self.hold)}")
        elif parm in ("on", "off"):
            self.hold = parm == "on"
            c.send(f"SUCCESS: hold flag set to {parm.upper()}")
        elif parm == "release":
            if self._holding is not None:
                self._holding.set()
            self.backend.hold_release()
            c.send("SUCCESS: hold release succeeded")
        else:
            c.send("ERROR: bad hold command parameter")

    def _bytecount(self, c: _Client, seconds: int) -> None:
        if c.bytecount_task is not None:
            c.bytecount_task.cancel()
            c.bytecount_task = None
        c.bytecount = max(seconds, 0)
        if c.bytecount:
            c.bytecount_task = asyncio.get_running_loop().create_task(self._tick(c))

    async def _tick(self, c: _Client) -> None:
        while c.bytecount and not c.writer.is_closing():
            await asyncio.sleep(c.bytecount)  # the interval the client asked for
            rx, tx = self.backend.bytecount()
            c.send(f">BYTECOUNT:{rx},{tx}")
