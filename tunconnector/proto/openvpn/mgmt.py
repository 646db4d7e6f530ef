"""The pieces of openvpn's management protocol (``manage.c``) that a client and a server
share: command words, ``help`` lines, the state and log histories, ``verb``, signal names.

Pure, so the client's interface (:mod:`tunconnector.ovpn_mgmt`) and the server's
(:mod:`.mgmtserver`) answer the same commands with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass

from .grammar import split_line

VERSION = 5
GREETING = f">INFO:OpenVPN Management Interface Version {VERSION} -- type 'help' for more info"
#: the names ``signal`` accepts (openvpn's ``parse_signal``)
SIGNALS = ("SIGHUP", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")
#: each command's lines in ``help`` (openvpn's ``man_help``); a face lists the ones it
#: answers with :func:`help_lines`, so the words shared by client and server are one text
HELP_LINES: dict[str, tuple[str, ...]] = {
    "bytecount": ("bytecount n            : Show bytes in/out, update every n secs (0=off).",),
    "echo": ("echo [on|off] [N|all]  : Like log, but only show messages in echo buffer.",),
    "exit": ("exit|quit              : Close management session.",),
    "forget-passwords": ("forget-passwords       : Forget passwords entered so far.",),
    "help": ("help                   : Print this message.",),
    "hold": ("hold [on|off|release]  : Set/show hold flag to on/off state, or",
             "                         release current hold and start tunnel."),
    "kill": ("kill cn                : Kill the client instance(s) having common name cn.",
             "kill IP:port           : Kill the client instance connecting from IP:port."),
    "load-stats": ("load-stats             : Show global server load stats.",),
    "log": ("log [on|off] [N|all]   : Turn on/off realtime log display",
            "                         + show last N lines or 'all' for entire history."),
    "mute": ("mute [n]               : Set log mute level to n, or show level if n is absent.",),
    "pid": ("pid                    : Show process ID of the current OpenVPN process.",),
    "client-auth": ("client-auth CID KID    : Authenticate client-id/key-id CID/KID "
                    "(MULTILINE)",),
    "client-auth-nt": ("client-auth-nt CID KID : Authenticate client-id/key-id CID/KID",),
    "client-deny": ("client-deny CID KID R [CR] : Deny auth client-id/key-id CID/KID with log "
                    "reason",
                    "                             text R and optional client reason text CR"),
    "client-kill": ("client-kill CID [M]    : Kill client instance CID with message M "
                    "(def=RESTART)",),
    "signal": ("signal s               : Send signal s to daemon,",
               "                         s = SIGHUP|SIGTERM|SIGUSR1|SIGUSR2."),
    "state": ("state [on|off] [N|all] : Like log, but show state history.",),
    "status": ("status [n]             : Show current daemon status info using format #n.",),
    "verb": ("verb [n]               : Set log verbosity level to n, or show if n is absent.",),
    "version": ("version [n]            : Set client's version to n or show current version "
                "of daemon.",),
}


@dataclass(slots=True)
class StateEntry:
    """One ``state`` history line (openvpn's ``man_state_info``)."""

    when: int
    name: str
    desc: str = ""
    local_ip: str = ""
    remote: str = ""
    remote_port: str = ""
    local_addr: str = ""
    local_port: str = ""
    local_ip6: str = ""

    def line(self) -> str:
        out = (f"{self.when},{self.name},{self.desc},{self.local_ip},{self.remote},"
               f"{self.remote_port},{self.local_addr},{self.local_port}")
        return out + (f",{self.local_ip6}" if self.local_ip6 else "")


def parse_command(line: str) -> tuple[str, list[str]] | None:
    """A command line's name and arguments, split as openvpn splits config lines; None
    for a blank or comment line. Raises ValueError with openvpn's reason."""
    p = split_line(line)
    if not p:
        return None
    return p[0], p[1:]


def history(parm: str, kind: str, lines: list[str]) -> tuple[list[str], bool | None]:
    """Answer one ``state``/``log``/``echo`` parameter: the reply lines, and the new
    real-time flag for ``on``/``off`` (None when the parameter asked for history)."""
    if parm in ("on", "off"):
        return [f"SUCCESS: real-time {kind} notification set to {parm.upper()}"], parm == "on"
    n = 0
    if parm != "all":
        try:
            n = int(parm)
        except ValueError:
            n = 0
        if n <= 0:
            return [f"ERROR: {kind} parameter must be 'on' or 'off' or some number n "
                    "or 'all'"], None
    return [*(lines[-n:] if n else lines), "END"], None


def verb(args: list[str], level: int) -> tuple[str, int]:
    """``verb [N]``: the reply and the (possibly new) level."""
    if not args:
        return f"SUCCESS: verb={level}", level
    try:
        return "SUCCESS: verb level changed", int(args[0])
    except ValueError:
        return "ERROR: verb level is out of range", level


def signal_name(arg: str) -> str | None:
    """The canonical name of a ``signal`` argument, None when openvpn would not know it."""
    name = arg.upper()
    return name if name in SIGNALS else None


def help_lines(*commands: str) -> tuple[str, ...]:
    """The ``help`` lines of ``commands`` (keys of :data:`HELP_LINES`), in that order."""
    return tuple(line for cmd in commands for line in HELP_LINES[cmd])
