"""The pieces of openvpn's management protocol (``manage.c``) that a client and a server
share: command words, the state and log histories, ``verb``, signal names.

Pure, so the client's interface (:mod:`tunconnector.ovpn_mgmt`, which owns the sockets)
and the server's (:mod:`.mgmtserver`) answer the same commands with the same words.
"""

from __future__ import annotations

from dataclasses import dataclass

from .grammar import split_line

VERSION = 5
GREETING = f">INFO:OpenVPN Management Interface Version {VERSION} -- type 'help' for more info"
#: the names ``signal`` accepts (openvpn's ``parse_signal``)
SIGNALS = ("SIGHUP", "SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT")


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
