"""A hostile OpenVPN server's pushes against the TLS client (real openvpn 2.6 server).

Pushed routes that cover the server's own address, a pushed ifconfig equal to it, an
ifconfig inside the client's underlay subnet, a pushed route the kernel already has.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netns import wait_for  # noqa: E402
from test_openvpn_tls_interop import (  # noqa: E402, F401
    SERVER_IP,
    Lab,
    lab,
    pki,
    status,
    wait_up,
)

pytestmark = [
    pytest.mark.openvpn,
    pytest.mark.skipif(shutil.which("openvpn") is None, reason="needs the openvpn binary"),
]


def _via(lab: Lab, dst: str) -> str:  # noqa: F811
    return lab.c1.run("ip", "route", "get", dst).stdout


def test_pushed_routes_over_the_server_keep_the_underlay_path(lab: Lab) -> None:  # noqa: F811
    # the server's own address as a host route, and a /16 it sits in; plus a route the
    # client already has (the kernel refuses it as a duplicate)
    lab.start_server(extra=f'push "route {SERVER_IP} 255.255.255.255"\n'
                     'push "route 192.168.0.0 255.255.0.0"\n'
                     'push "route 10.77.0.0 255.255.0.0"\n')
    lab.c1.run("ip", "route", "add", "blackhole", "10.77.0.0/16")
    d1 = lab.client(lab.c1, lab.ovpn("c1"), "ovpn1")
    t1 = wait_up(d1)
    dev = t1["device"]
    assert lab.c1.wait_ping("10.8.0.1", 10), d1.log()
    assert lab.c1.ping("10.8.0.1", count=20, interval=0.05) == (20, 20)
    assert dev not in _via(lab, SERVER_IP), _via(lab, SERVER_IP)
    assert dev in _via(lab, "192.168.50.1")  # the pushed /16 is there for the rest
    log = d1.log()
    assert log.count("cover the server") == 1, log
    assert "10.77.0.0/16 already exist" in log, log
    assert not any("routes" in line and "10.77.0.0/16" in line and "assigned" in line
                   for line in log.splitlines()), log
    t1 = status(d1)
    assert t1["state"] == "up" and t1["tx_bytes"] < 1 << 20, t1  # no loop
    d1.stop()
    # our host route and pushed routes are gone; the blackhole we did not add stays
    assert f"{SERVER_IP} via" not in lab.c1.run("ip", "route", "show").stdout
    assert "blackhole 10.77.0.0/16" in lab.c1.run("ip", "route", "show").stdout


def test_pushed_ifconfig_equal_to_the_server_is_refused(lab: Lab) -> None:  # noqa: F811
    ccd = lab.dir / "ccd"
    ccd.mkdir()
    (ccd / "client1").write_text(f"ifconfig-push {SERVER_IP} 255.255.255.0\n")
    # client2 reaches the server through S from 192.168.111.0/24: an address in there
    (ccd / "client2").write_text("ifconfig-push 192.168.111.50 255.255.255.0\n")
    lab.start_server(extra=f"client-config-dir {ccd}\n")
    d1 = lab.client(lab.c1, lab.ovpn("c1"), "ovpn1")
    assert wait_for(lambda: "that is the server's own address" in d1.log(), 30), d1.log()
    addrs = lab.c1.run("ip", "-4", "addr", "show").stdout
    assert addrs.count(f"{SERVER_IP}/") == 0, addrs  # never on our device
    assert lab.c1.ping(SERVER_IP, count=5, interval=0.1) == (5, 5)  # the path is intact
    d2 = lab.client(lab.c2, lab.ovpn("c2", "client2"), "ovpn2")
    wait_up(d2)
    assert wait_for(lambda: "overlaps the underlay's 192.168.111.2/24" in d2.log(), 10), \
        d2.log()
