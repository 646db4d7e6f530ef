"""The server clamps TCP MSS per client, to the value that client computes itself."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.unit.test_openvpn_mss import _mss, _syn4, _tcp_ok  # noqa: E402
from tests.unit.test_openvpn_server import client_options, connect, server_options  # noqa: E402


def test_server_clamps_syns_to_the_clients_own_value() -> None:
    link = connect()
    assert link.connected()
    session = link.session()
    want = link.client._mss
    assert want and session.mss_clamp() == want == session._mss
    session.send_frames([_syn4(1460)], link.now)
    link.pump(link.now + 0.5)
    got = link.client.frames_to_deliver()
    assert len(got) == 1 and _mss(got[0]) == want and _tcp_ok(got[0])


def test_chacha_and_mssfix_off_change_the_clamp() -> None:
    gcm = connect().session().mss_clamp()
    link = connect(server_options(data_ciphers=("CHACHA20-POLY1305",)),
                   client_options(data_ciphers=("CHACHA20-POLY1305",)))
    assert link.session().mss_clamp() == link.client._mss == gcm  # same AEAD overhead
    assert connect(server_options(mssfix=0)).session().mss_clamp() == 0
    fixed = connect(server_options(mssfix=1400, mssfix_fixed=True)).session()
    assert fixed.mss_clamp() == 1360  # mssfix N fixed: N - 40
