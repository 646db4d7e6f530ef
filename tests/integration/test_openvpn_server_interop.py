"""Real openvpn 2.6 clients against an OpenVPN server: the real ``openvpn`` or
``tunconnector openvpn`` on the same server.conf (``-k openvpn`` / ``-k tunconnector``).

The lab (namespaces, PKI with a CRL, the server's start-up, the refusal matcher) is
:mod:`ovpnserverlab`.
"""

from __future__ import annotations

import shutil
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netns import wait_for  # noqa: E402
from ovpnserverlab import (  # noqa: E402
    IMPLS,
    LAN_HOST,
    SERVER_TUN_IP,
    ServerLab,
    make_server_pki,
    refusal_lines,
    server_lab,
)
from test_openvpn_tls_interop import Pki, transfer  # noqa: E402

pytestmark = [
    pytest.mark.openvpn,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("openvpn") is None, reason="needs the openvpn binary"),
]

CLIENTS = ["c1", "c2", "c3"]


@pytest.fixture(scope="module")
def spki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_server_pki(tmp_path_factory.mktemp("spki"))


@pytest.fixture(params=IMPLS, ids=IMPLS)
def slab(request: pytest.FixtureRequest, spki: Pki, tmp_path: Path) -> Iterator[ServerLab]:
    with server_lab(request.param, spki, tmp_path) as lb:
        yield lb


def _up(lab: ServerLab, ccd: dict[str, str] | None = None) -> dict[str, str]:
    """Server conf + server + c1..c3; returns each client's tun0 address."""
    lab.write_server_conf(ccd=ccd)
    lab.start_server()
    for n in CLIENTS:
        lab.start_client(n)
    return {n: lab.wait_connected(n) for n in CLIENTS}


def _status_names(lab: ServerLab) -> set[str]:
    """Common names in the status file's (version 1) CLIENT LIST."""
    try:
        text = (lab.dir / "status.log").read_text()
    except OSError:
        return set()
    names, inside = set(), False
    for line in text.splitlines():
        if line.startswith("Common Name,"):
            inside = True
        elif line.startswith("ROUTING TABLE"):
            inside = False
        elif inside and "," in line:
            names.add(line.split(",")[0])
    return names


def test_three_clients_pool_ping_and_transfer(slab: ServerLab) -> None:
    addrs = _up(slab)
    assert len(set(addrs.values())) == 3, addrs
    assert all(a.startswith("10.8.0.") and a != SERVER_TUN_IP for a in addrs.values()), addrs
    for n in CLIENTS:
        for m in CLIENTS:
            if m != n:  # client-to-client through the server
                assert slab.clients[n].host.wait_ping(addrs[m], 15), (n, m, slab.why(n))
    transfer(slab.clients["c1"].host, slab.clients["c2"].host, addrs["c2"], 8 << 20)
    assert wait_for(lambda: _status_names(slab) >= set(CLIENTS), 10), (
        (slab.dir / "status.log").read_text() if (slab.dir / "status.log").exists() else "")


def test_ccd_ifconfig_push_and_iroute(slab: ServerLab) -> None:
    ccd = {"c1": "ifconfig-push 10.8.0.50 255.255.255.0\n"
                 "iroute 192.168.50.0 255.255.255.0\n"}
    addrs = _up(slab, ccd=ccd)
    assert addrs["c1"] == "10.8.0.50", addrs
    assert "10.8.0.50" not in (addrs["c2"], addrs["c3"]), addrs
    # the server reaches the LAN behind C1 through the tunnel (route + iroute)
    assert slab.s.wait_ping(LAN_HOST, 15), slab.why("c1")


def test_refused_revoked_certificate_and_wrong_password(slab: ServerLab) -> None:
    addrs = _up(slab)
    revoked = slab.start_client("c4")  # in crl.pem
    badpw = slab.start_client("c5", password="bad")
    t0 = time.monotonic()
    # the server reports each refusal on a line naming the client
    assert wait_for(lambda: refusal_lines(slab.server_log(), "revoked", "c4", revoked.my_ip),
                    20), slab.why("c4")
    assert wait_for(lambda: refusal_lines(slab.server_log(), "password", "c5", badpw.my_ip),
                    20), slab.why("c5")
    # ~15 s in all: neither refused client ever gets an address; the others keep pinging
    while time.monotonic() - t0 < 15:
        assert revoked.tun_addr() is None, slab.why("c4")
        assert badpw.tun_addr() is None, slab.why("c5")
        for n in CLIENTS:
            assert slab.clients[n].host.wait_ping(SERVER_TUN_IP, 5), slab.why(n)
        time.sleep(0.5)  # pacing of the checks, not a wait for a condition
    assert revoked.tun_addr() is None and badpw.tun_addr() is None
    for n in CLIENTS:
        assert slab.clients[n].tun_addr() == addrs[n], slab.why(n)
    assert "c4" not in _status_names(slab) and "c5" not in _status_names(slab)


def _ipp(lab: ServerLab) -> dict[str, str]:
    """ipp.txt: ``CN,IPv4[,IPv6]`` lines."""
    try:
        text = (lab.dir / "ipp.txt").read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) >= 2 and parts[1]:
            out[parts[0]] = parts[1]
    return out


def test_server_restart_clients_back_with_same_addresses(slab: ServerLab) -> None:
    addrs = _up(slab)
    # the pool is persisted (every second) before the server goes
    assert wait_for(lambda: all(_ipp(slab).get(n) == addrs[n] for n in CLIENTS), 10), (
        _ipp(slab), addrs)
    assert slab.server is not None
    rc = slab.server.stop(signal.SIGTERM)
    assert rc is not None
    slab.start_server()
    t0 = time.monotonic()
    deadline = t0 + 10
    for n in CLIENTS:
        host = slab.clients[n].host
        assert host.wait_ping(SERVER_TUN_IP, max(0.5, deadline - time.monotonic())), (
            f"{n} not back {time.monotonic() - t0:.1f} s after the restart\n{slab.why(n)}")
    for n in CLIENTS:
        assert slab.clients[n].tun_addr() == addrs[n], (n, slab.why(n))
