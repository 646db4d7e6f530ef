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
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import __version__
from .ovpn_mgmtsock import PASSWORD_TRIES as PASSWORD_TRIES
from .ovpn_mgmtsock import Conn, ManagementListener
from .ovpnconfig import Management as Spec
from .proto.openvpn.mgmt import GREETING, VERSION, StateEntry, help_lines, history, parse_command
from .proto.openvpn.mgmt import signal_name as _signal_name
from .proto.openvpn.mgmt import verb as _verb

log = logging.getLogger("tunconnector.openvpn.management")

#: what `version` reports as openvpn's title (tools parse the "OpenVPN 2.x" prefix)
TITLE = f"OpenVPN 2.6.14 tunconnector-{__version__} [openvpn-compatible client]"
HELP = [f"Management Interface for {TITLE}", "Commands:",
        *help_lines("bytecount", "echo", "exit", "forget-passwords", "help", "hold", "log",
                    "mute", "pid", "signal", "state", "status", "verb", "version"),
        "END"]


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


class _Client(Conn):
    def __init__(self, writer: asyncio.StreamWriter, *, authed: bool) -> None:
        super().__init__(writer, authed=authed)
        self.state_rt = False
        self.log_rt = False
        self.bytecount = 0


class Management(ManagementListener[_Client]):
    _log = log

    def __init__(self, spec: Spec, backend: Backend) -> None:
        super().__init__(spec)
        self.backend = backend
        self.hold = spec.hold
        self.states: collections.deque[StateEntry] = collections.deque(maxlen=1000)
        self._holding: asyncio.Event | None = None
        #: a >PASSWORD: query waiting for its answer: (type, username, password, done)
        self._query: tuple[str, list[str], asyncio.Event] | None = None

    # -- lifecycle --------------------------------------------------------------------
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
        for c in self._conns:
            if c.state_rt and c.authed:
                c.send(f">STATE:{entry.line()}")

    def add_log(self, line: str) -> None:
        self.logs.append(line)
        for c in self._conns:
            if c.log_rt and c.authed:
                c.send(f">LOG:{line}")

    def _broadcast(self, line: str) -> None:
        for c in self._conns:
            if c.authed:
                c.send(line)

    # -- one client -------------------------------------------------------------------
    def _connect(self, writer: asyncio.StreamWriter) -> _Client:
        return _Client(writer, authed=self.spec.password is None)

    def _greeting(self, c: _Client) -> list[str]:
        return [GREETING]

    def _welcome(self, c: _Client) -> list[str]:
        """The greeting and the notices still pending (after the password prompt, the
        greeting alone follows)."""
        out = [GREETING]
        if self._holding is not None:
            out.append(">HOLD:Waiting for hold release:0")
        if self._query is not None:
            out.append(_query_line(self._query[0]))
        return out

    async def _line(self, c: _Client, line: str) -> bool:
        line = line.strip()
        if not line:
            return True
        if not self._command(c, line):
            return False
        await c.writer.drain()
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
        if c.ticker is not None:
            c.ticker.cancel()
            c.ticker = None
        c.bytecount = max(seconds, 0)
        if c.bytecount:
            c.ticker = asyncio.get_running_loop().create_task(self._tick(c))

    async def _tick(self, c: _Client) -> None:
        while c.bytecount and not c.writer.is_closing():
            await asyncio.sleep(c.bytecount)  # the interval the client asked for
            rx, tx = self.backend.bytecount()
            c.send(f">BYTECOUNT:{rx},{tx}")
