"""The management interface of an OpenVPN *server*, sans I/O: one
:class:`ServerManagement` per management connection.

The adapter feeds each received line to :meth:`ServerManagement.receive_line` with a
:class:`~.serverstatus.ServerSnapshot` of the server and the time, sends back the reply
lines, and carries out the actions (end a client, throw a signal, answer an
authentication). Replies are openvpn 2.6's (``manage.c``) word for word, since GUIs and
scripts match on them; the command words, the ``state``/``log`` histories, ``verb`` and
signal names are shared with the client's interface (:mod:`.mgmt`).

Commands: ``help``, ``version [N]``, ``pid``, ``status [N]``, ``load-stats``,
``kill CN|IP:port``, ``client-kill CID [MSG]``, ``client-auth CID KID`` (config lines up
to ``END``), ``client-auth-nt CID KID``, ``client-deny CID KID REASON [CLIENT_REASON]``,
``signal``, ``verb [N]``, ``mute [N]``, ``state``, ``log``, ``echo``, ``bytecount N``
(then ``>BYTECOUNT_CLI:CID,in,out`` per client from :meth:`ServerManagement.tick`),
``quit``/``exit``. The password prompt stays with the socket side.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, field

from .mgmt import VERSION, StateEntry, help_lines, history, parse_command, signal_name, verb
from .serverstatus import DEFAULT_TITLE, Localtime, ServerSnapshot, status_lines

HELP_COMMANDS = help_lines(
    "bytecount", "echo", "exit", "help", "kill", "load-stats", "log", "mute", "pid",
    "client-auth", "client-auth-nt", "client-deny", "client-kill", "signal", "state", "status",
    "verb", "version")


@dataclass(frozen=True, slots=True)
class KillClient:
    """End client ``cid``: with ``message`` None at once (``kill``, openvpn's SIGTERM to
    the instance), else after sending it (``client-kill``: RESTART, HALT, ...)."""

    cid: int
    message: str | None = None


@dataclass(frozen=True, slots=True)
class SendSignal:
    """Throw ``name`` (SIGHUP, SIGTERM, SIGUSR1, SIGUSR2, SIGINT) at the daemon."""

    name: str


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """The answer to a pending authentication (``client-auth``/``-nt``/``-deny``);
    ``config`` holds the client-config lines given with ``client-auth``."""

    cid: int
    kid: int
    allow: bool
    config: tuple[str, ...] = ()
    reason: str = ""
    client_reason: str | None = None


Action = KillClient | SendSignal | ClientAuth


@dataclass(slots=True)
class Reply:
    """What one line produced: lines to send, actions for the adapter, and whether the
    management connection ends (``quit``/``exit``)."""

    lines: list[str] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    close: bool = False


def _need(cmd: str, args: list[str], n: int, at_least: bool = False) -> str | None:
    if len(args) >= n:
        return None
    return (f"ERROR: the '{cmd}' command requires {'at least ' if at_least else ''}{n} "
            f"parameter{'s' if n > 1 else ''}")


def _uint(s: str) -> int | None:
    """sscanf("%lu"): leading digits, else None."""
    digits = ""
    for ch in s.strip():
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def _atoi(s: str) -> int:
    n = _uint(s.lstrip("-+"))
    return 0 if n is None else (-n if s.lstrip().startswith("-") else n)


class ServerManagement:
    """One management connection to a server: its real-time flags, its ``bytecount``
    interval and a pending ``client-auth`` block; the histories are the server's."""

    def __init__(self, *, pid: int, title: str = DEFAULT_TITLE, status_version: int = 1,
                 verb_level: int = 1, localtime: Localtime = time.localtime) -> None:
        self.pid = pid
        self.title = title
        self.status_version = status_version
        self.verb = verb_level
        self.localtime = localtime
        self.states: list[StateEntry] = []
        self.logs: list[str] = []
        self.state_rt = False
        self.log_rt = False
        self.bytecount = 0
        self._next_bytecount: float | None = None
        self._auth: tuple[int, int, list[str]] | None = None  # client-auth lines

    def greeting(self) -> list[str]:
        return [f">INFO:OpenVPN Management Interface Version {VERSION} -- type 'help' "
                "for more info"]

    # -- notifications ----------------------------------------------------------------
    def add_state(self, entry: StateEntry) -> list[str]:
        """Record a state change; the ``>STATE:`` line to send when real-time is on."""
        self.states.append(entry)
        return [f">STATE:{entry.line()}"] if self.state_rt else []

    def add_log(self, line: str) -> list[str]:
        """Record a ``time,FLAG,message`` log line; the ``>LOG:`` line when on."""
        self.logs.append(line)
        return [f">LOG:{line}"] if self.log_rt else []

    def next_timer(self) -> float | None:
        """When :meth:`tick` has ``>BYTECOUNT_CLI:`` lines to give (None: never)."""
        return self._next_bytecount

    def tick(self, snap: ServerSnapshot, now: float) -> list[str]:
        """``>BYTECOUNT_CLI:CID,in,out`` for every client, once per interval."""
        due = self._next_bytecount
        if due is None or now < due:
            return []
        self._next_bytecount = now + self.bytecount
        return [f">BYTECOUNT_CLI:{c.client_id},{c.bytes_received},{c.bytes_sent}"
                for c in snap.clients]

    # -- commands ---------------------------------------------------------------------
    def receive_line(self, line: str, snap: ServerSnapshot, now: float) -> Reply:
        """Run one line received from the management client."""
        out = Reply()
        if self._auth is not None:
            cid, kid, lines = self._auth
            if line.strip() != "END":
                lines.append(line.strip())
            else:
                self._auth = None
                self._answer("client-auth", ClientAuth(cid, kid, True, tuple(lines)),
                             snap, out)
            return out
        try:
            p = parse_command(line)
        except ValueError as exc:
            out.lines.append(f"ERROR: {exc}")
            return out
        if p is not None:
            self._command(p[0], p[1], snap, now, out)
        return out

    def _command(self, cmd: str, args: list[str], snap: ServerSnapshot,  # noqa: C901
                 now: float, out: Reply) -> None:
        send = out.lines.append
        need = {"kill": (1, False), "client-kill": (1, True), "client-deny": (3, True),
                "client-auth": (2, False), "client-auth-nt": (2, False),
                "bytecount": (1, False), "signal": (1, False), "log": (1, True),
                "echo": (1, True)}.get(cmd)
        if need is not None and (err := _need(cmd, args, *need)) is not None:
            send(err)
            return
        if cmd in ("quit", "exit"):
            out.close = True
        elif cmd == "help":
            out.lines += [f"Management Interface for {self.title}", "Commands:",
                          *HELP_COMMANDS, "END"]
        elif cmd == "version":
            if not args:  # `version N` sets the client's version: no reply
                out.lines += [f"OpenVPN Version: {self.title}",
                              f"Management Version: {VERSION}", "END"]
        elif cmd == "pid":
            send(f"SUCCESS: pid={self.pid}")
        elif cmd == "status":
            version = _atoi(args[0]) if args else 0
            out.lines += status_lines(snap, version or self.status_version, self.localtime)
        elif cmd == "load-stats":
            send(f"SUCCESS: nclients={len(snap.clients)},bytesin={snap.bytes_in},"
                 f"bytesout={snap.bytes_out}")
        elif cmd == "kill":
            self._kill(args[0], snap, out)
        elif cmd == "client-kill":
            cid = self._cid(args[0], out)
            if cid is not None:
                if any(c.client_id == cid for c in snap.clients):
                    out.actions.append(KillClient(cid, args[1] if len(args) > 1
                                                  else "RESTART"))
                    send("SUCCESS: client-kill command succeeded")
                else:
                    send("ERROR: client-kill command failed")
        elif cmd in ("client-auth", "client-auth-nt", "client-deny"):
            self._client_auth(cmd, args, snap, out)
        elif cmd == "signal":
            name = signal_name(args[0])
            if name is None:
                send(f"ERROR: signal '{args[0]}' is not a known signal type")
            else:
                out.actions.append(SendSignal(name))
                send(f"SUCCESS: signal {name} thrown")
        elif cmd == "verb":
            answer, self.verb = verb(args, self.verb)
            send(answer)
        elif cmd == "mute":
            send("SUCCESS: mute level changed" if args else "SUCCESS: mute=0")
        elif cmd in ("state", "log", "echo"):
            lines = {"state": [e.line() for e in self.states], "log": self.logs,
                     "echo": []}[cmd]
            for parm in (args or ["1"])[:2]:
                shown, realtime = history(parm, cmd, lines)
                if realtime is not None and cmd == "state":
                    self.state_rt = realtime
                elif realtime is not None and cmd == "log":
                    self.log_rt = realtime
                out.lines += shown
        elif cmd == "bytecount":
            self.bytecount = max(_atoi(args[0]), 0)
            self._next_bytecount = now + self.bytecount if self.bytecount else None
            send("SUCCESS: bytecount interval changed")
        else:
            send("ERROR: unknown command, enter 'help' for more options")

    def _kill(self, victim: str, snap: ServerSnapshot, out: Reply) -> None:
        """``kill CN`` or ``kill IP:port`` (openvpn splits at the first two colons)."""
        p = victim.split(":")
        p1, p2 = p[0], (p[1] if len(p) > 1 else "")
        if p1 and p2:
            try:
                addr = ipaddress.IPv4Address(p1)
            except ValueError:
                out.lines.append(f"ERROR: error parsing IP address: {p1}")
                return
            port = _atoi(p2)
            if not 0 < port < 65536:
                out.lines.append(f"ERROR: port number is out of range: {p2}")
                return
            where = f"{addr}:{port}"
            hit = [c.client_id for c in snap.clients if c.real_address == where]
            out.lines.append(f"SUCCESS: {len(hit)} client(s) at address {where} killed"
                             if hit else f"ERROR: client at address {where} not found")
        elif p1:
            hit = [c.client_id for c in snap.clients if (c.common_name or "UNDEF") == p1]
            out.lines.append(f"SUCCESS: common name '{p1}' found, {len(hit)} client(s) "
                             "killed" if hit else f"ERROR: common name '{p1}' not found")
        else:
            out.lines.append("ERROR: kill parse")
            return
        out.actions += [KillClient(cid) for cid in hit]

    @staticmethod
    def _cid(s: str, out: Reply) -> int | None:
        cid = _uint(s)
        if cid is None:
            out.lines.append("ERROR: cannot parse CID")
        return cid

    def _client_auth(self, cmd: str, args: list[str], snap: ServerSnapshot,
                     out: Reply) -> None:
        cid = self._cid(args[0], out)
        if cid is None:
            return
        kid = _uint(args[1])
        if kid is None:
            out.lines.append("ERROR: cannot parse KID")
            return
        if cmd == "client-auth":
            self._auth = (cid, kid, [])  # the client config follows, up to END
            return
        allow = cmd == "client-auth-nt"
        action = ClientAuth(cid, kid, allow, reason="" if allow else args[2],
                            client_reason=None if allow or len(args) < 4 else args[3])
        # openvpn answers client-auth-nt as client-auth
        self._answer("client-deny" if cmd == "client-deny" else "client-auth", action, snap,
                     out)

    @staticmethod
    def _answer(cmd: str, action: ClientAuth, snap: ServerSnapshot, out: Reply) -> None:
        if (action.cid, action.kid) in snap.pending_auth:
            out.actions.append(action)
            out.lines.append(f"SUCCESS: {cmd} command succeeded")
        else:
            out.lines.append(f"ERROR: {cmd} command failed")
