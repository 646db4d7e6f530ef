"""The one "follow the peer's new address" rule, as a table of the cases its callers pass."""

from __future__ import annotations

import pytest

from tunconnector.proto.connection import Addr, AddressChanged
from tunconnector.proto.roaming import follow_peer

OLD = ("192.0.2.1", 5000)
NEW = ("198.51.100.7", 6000)

CASES = [
    # (case, current, source, authentic, may_move, moves)
    ("client never moves, even on authentic input", OLD, NEW, True, False, False),
    ("configured path remote (fixed) never moves", OLD, NEW, True, False, False),
    ("server moves on authentic input", OLD, NEW, True, True, True),
    ("server stays on input that proves nothing", OLD, NEW, False, True, False),
    ("server learns its first address", None, NEW, True, True, True),
    ("server learns nothing from unproven first input", None, NEW, False, True, False),
    ("raw server: any datagram is authentic", OLD, NEW, True, True, True),
    ("same source: no event", OLD, OLD, True, True, False),
    ("same source, unproven: no event", OLD, OLD, False, True, False),
    ("only the port changed (NAT rebinding)", OLD, (OLD[0], 5001), True, True, True),
    ("hub keys on the raw receive address", ("::ffff:192.0.2.1", 5000, 0, 0),
     ("192.0.2.1", 5000), True, True, True),
]


@pytest.mark.parametrize(("current", "source", "authentic", "may_move", "moves"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_follow_table(current: Addr, source: Addr, authentic: bool, may_move: bool,
                      moves: bool) -> None:
    ev = follow_peer(current, source, authentic=authentic, may_move=may_move, now=7.5)
    if moves:
        assert ev == AddressChanged(7.5, source)
    else:
        assert ev is None


def test_multipath_probe_learns_first_address_only_when_encrypted() -> None:
    """A PROBE is not authenticated: encrypted paths learn from it only with no address
    known yet; plaintext paths follow it (what multipath.py passes as ``authentic``)."""
    for remote, encrypted, moves in ((None, True, True), (OLD, True, False),
                                     (OLD, False, True)):
        ev = follow_peer(remote, NEW, authentic=remote is None or not encrypted,
                         may_move=True, now=1.0)
        assert (ev is not None) is moves
