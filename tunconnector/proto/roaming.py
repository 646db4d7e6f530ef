"""Following the peer to a new address: the one rule, asked by every connection.

A datagram from a source other than the peer's address moves the peer only when the
side may move at all (``may_move``) and the datagram proved it comes from the peer
(``authentic``). Everything that differs between callers is what they pass in, never
the rule:

=====================  ==========================  ====================================
caller                 ``may_move``                ``authentic``
=====================  ==========================  ====================================
native UDP             server (a client listens     encrypted: the message authenticated;
                       only to its remote)          plaintext: a well-formed KEEPALIVE
raw UDP                server                       True: nothing to prove with (the
                                                    documented raw server behaviour)
hub, DATA              True (a hub is a server)     the message authenticated
hub, initiation        True                         the peer's channel accepted it
multi-path, DATA       not a configured remote      as native UDP
multi-path, PROBE      not a configured remote      plaintext, or no address known yet
OpenVPN static key     ``--float`` or peer dead     authenticated, not replayed,
                                                    not reflected, not an OCC EXIT
OpenVPN TLS server     True                         DATA that authenticates (peer-id)
=====================  ==========================  ====================================

Callers compare what they key on: the hub its raw receive address (before
``normalize``), the OpenVPN server session ``(host, port)``, the others the normalized
address. Bookkeeping stays with the caller (re-indexing, a socket of its own, the log
line, whether the first address is announced as an event).
"""

from __future__ import annotations

from typing import Any

from .connection import Addr, AddressChanged


def follow_peer(current: Addr, source: Addr, *, authentic: bool, may_move: bool,
                now: float) -> AddressChanged | None:
    """The event that moves the peer from ``current`` to ``source``, or None to stay.

    None when ``source`` is ``current``, when the side may not move (a client, a
    configured path remote) or when the datagram proved nothing. ``current`` None is
    the first address learnt: that is a move too. The caller sets its peer to
    ``ev.addr``.
    """
    if source == current or not may_move or not authentic:
        return None
    return AddressChanged(now, source)


def normalize(addr: tuple[Any, ...]) -> tuple[Any, Any]:
    """Compare addresses by (host, port); map IPv4-mapped IPv6 to plain IPv4."""
    host, port = addr[0], addr[1]
    if isinstance(host, str) and host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return (host, port)


__all__ = ["follow_peer", "normalize"]
