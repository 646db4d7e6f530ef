"""An OpenVPN server's status (``status FILE [N]``, ``status-version 1|2|3``, and the
management ``status`` command), written as openvpn 2.6's ``multi_print_status`` does.

Operators' tooling (monitoring scripts, openvpn-monitor, exporters) parses these lines
column by column, so the text must match openvpn to the character: the section titles,
the header names, ``UNDEF`` for a missing common name or username, real addresses as
``mroute_addr_print`` prints them (``IP:port``; an IPv6 peer without its port), times as
``time_string`` (local ``YYYY-MM-DD HH:MM:SS``).

Pure: :func:`status_lines` turns a :class:`ServerSnapshot` (taken by the adapter) into
lines; ``localtime`` is passed in so tests do not depend on the machine's zone.
:func:`parse_status` reads versions 2 and 3 back (for tests and tools).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

#: openvpn's ``title_string`` as the status shows it (``TITLE`` in versions 2 and 3)
DEFAULT_TITLE = "OpenVPN 2.6.14 tunconnector [openvpn-compatible server]"
#: the peer id of a client without one (openvpn prints ``UINT32_MAX``)
NO_PEER_ID = 0xFFFFFFFF

Localtime = Callable[[float], time.struct_time]


@dataclass(frozen=True, slots=True)
class ClientRow:
    """One connected client, as ``CLIENT LIST``/``CLIENT_LIST`` shows it."""

    common_name: str
    real_address: str  # as :func:`real_address` prints it
    virtual_address: str = ""
    virtual_ipv6: str = ""
    bytes_received: int = 0
    bytes_sent: int = 0
    connected_since: int = 0  # time_t
    username: str = ""
    client_id: int = 0
    peer_id: int = NO_PEER_ID
    cipher: str = ""  # the data channel cipher, openvpn's name (AES-256-GCM)


@dataclass(frozen=True, slots=True)
class RouteRow:
    """One ``ROUTING TABLE`` entry: a client's virtual address or an ``iroute``."""

    virtual_address: str  # as :func:`route_address` prints it
    common_name: str
    real_address: str
    last_ref: int  # time_t
    cached: bool = False  # openvpn's MULTI_ROUTE_CACHE: printed with a ``C`` suffix


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    """What the status shows, taken at ``now`` (time_t)."""

    now: int
    clients: tuple[ClientRow, ...] = ()
    routes: tuple[RouteRow, ...] = ()
    max_bcast_queue: int = 0
    title: str = DEFAULT_TITLE
    dco: bool = False
    #: bytes read from and written to the link by the whole server (``load-stats``)
    bytes_in: int = 0
    bytes_out: int = 0
    #: (client id, key id) pairs waiting for ``client-auth``/``client-deny``
    pending_auth: frozenset[tuple[int, int]] = field(default_factory=frozenset)


def real_address(host: str, port: int) -> str:
    """A client's address as openvpn 2.6's ``mroute_addr_print``: ``IP:port`` for IPv4
    (and v4-mapped IPv6), the bare address for IPv6 ("v6addr:port is too ambiguous")."""
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is None:
            return str(ip)
        ip = ip.ipv4_mapped
    return f"{ip}:{port}"


def route_address(network: str) -> str:
    """A routing table key as openvpn prints it: a host (an IPv4 /32, a client's learned
    address) bare, a subnet (``iroute``) as ``net/bits``."""
    net = ipaddress.ip_network(network, strict=False)
    if "/" not in network or (net.version == 4 and net.prefixlen == 32):
        return str(net.network_address)
    return str(net)


def time_string(t: float, localtime: Localtime = time.localtime) -> str:
    """openvpn's ``time_string``: local ``YYYY-MM-DD HH:MM:SS``."""
    return time.strftime("%Y-%m-%d %H:%M:%S", localtime(t))


def _undef(s: str) -> str:
    return s or "UNDEF"


def status_lines(snap: ServerSnapshot, version: int = 1,
                 localtime: Localtime = time.localtime) -> list[str]:
    """The status in format ``version`` (1, 2 or 3), one string per line, ``END`` last;
    another version gives openvpn's one error line."""
    ts = lambda t: time_string(t, localtime)  # noqa: E731
    if version == 1:
        out = ["OpenVPN CLIENT LIST", f"Updated,{ts(snap.now)}",
               "Common Name,Real Address,Bytes Received,Bytes Sent,Connected Since"]
        out += [f"{_undef(c.common_name)},{c.real_address},{c.bytes_received},"
                f"{c.bytes_sent},{ts(c.connected_since)}" for c in snap.clients]
        out += ["ROUTING TABLE", "Virtual Address,Common Name,Real Address,Last Ref"]
        out += [f"{r.virtual_address}{'C' if r.cached else ''},{_undef(r.common_name)},"
                f"{r.real_address},{ts(r.last_ref)}" for r in snap.routes]
        out += ["GLOBAL STATS", f"Max bcast/mcast queue length,{snap.max_bcast_queue}",
                "END"]
        return out
    if version not in (2, 3):
        return ["ERROR: bad status format version number"]
    sep = "\t" if version == 3 else ","

    def row(*cols: object) -> str:
        return sep.join(str(c) for c in cols)

    out = [row("TITLE", snap.title), row("TIME", ts(snap.now), snap.now),
           row("HEADER", "CLIENT_LIST", *CLIENT_HEADER)]
    out += [row("CLIENT_LIST", _undef(c.common_name), c.real_address, c.virtual_address,
                c.virtual_ipv6, c.bytes_received, c.bytes_sent, ts(c.connected_since),
                c.connected_since, _undef(c.username), c.client_id, c.peer_id, c.cipher)
            for c in snap.clients]
    out.append(row("HEADER", "ROUTING_TABLE", *ROUTE_HEADER))
    out += [row("ROUTING_TABLE", r.virtual_address + ("C" if r.cached else ""),
                _undef(r.common_name), r.real_address, ts(r.last_ref), r.last_ref)
            for r in snap.routes]
    out += [row("GLOBAL_STATS", "Max bcast/mcast queue length", snap.max_bcast_queue),
            row("GLOBAL_STATS", "dco_enabled", int(snap.dco)), "END"]
    return out


def status_text(snap: ServerSnapshot, version: int = 1,
                localtime: Localtime = time.localtime) -> str:
    """The status file's content (openvpn ends every line with ``\\n``)."""
    return "".join(f"{line}\n" for line in status_lines(snap, version, localtime))


CLIENT_HEADER = ("Common Name", "Real Address", "Virtual Address", "Virtual IPv6 Address",
                 "Bytes Received", "Bytes Sent", "Connected Since",
                 "Connected Since (time_t)", "Username", "Client ID", "Peer ID",
                 "Data Channel Cipher")
ROUTE_HEADER = ("Virtual Address", "Common Name", "Real Address", "Last Ref",
                "Last Ref (time_t)")


def parse_status(text: str | Iterable[str]) -> ServerSnapshot:
    """Read a version 2 or 3 status back (the separator is found on the ``TITLE`` line).

    ``UNDEF`` reads back as an empty name. Raises ValueError on anything else."""
    lines = text.splitlines() if isinstance(text, str) else list(text)
    if not lines or not lines[0].startswith(("TITLE,", "TITLE\t")):
        raise ValueError("not a status-version 2 or 3 file")
    sep = lines[0][5]
    title, now, dco, bcast = lines[0][6:], 0, False, 0
    clients: list[ClientRow] = []
    routes: list[RouteRow] = []
    ended = False
    for line in lines[1:]:
        if line == "END":
            ended = True
            break
        f = line.split(sep)
        kind = f[0]
        try:
            if kind == "TIME":
                now = int(f[2])
            elif kind == "HEADER":
                want = CLIENT_HEADER if f[1] == "CLIENT_LIST" else ROUTE_HEADER
                if tuple(f[2:]) != want:
                    raise ValueError(f"unexpected header: {line!r}")
            elif kind == "CLIENT_LIST" and len(f) == 13:
                clients.append(ClientRow(
                    _def(f[1]), f[2], f[3], f[4], int(f[5]), int(f[6]), int(f[8]),
                    _def(f[9]), int(f[10]), int(f[11]), f[12]))
            elif kind == "ROUTING_TABLE" and len(f) == 6:
                cached = f[1].endswith("C")
                routes.append(RouteRow(f[1][:-1] if cached else f[1], _def(f[2]), f[3],
                                       int(f[5]), cached))
            elif kind == "GLOBAL_STATS" and len(f) == 3:
                if f[1] == "dco_enabled":
                    dco = f[2] == "1"
                elif f[1] == "Max bcast/mcast queue length":
                    bcast = int(f[2])
            else:
                raise ValueError(f"unexpected status line: {line!r}")
        except IndexError as exc:
            raise ValueError(f"short status line: {line!r}") from exc
    if not ended:
        raise ValueError("status without END")
    return ServerSnapshot(now, tuple(clients), tuple(routes), bcast, title, dco)


def _def(s: str) -> str:
    return "" if s == "UNDEF" else s
