"""A hostile OpenVPN server's pushes against the TLS client (real openvpn 2.6 server).

Pushed routes that cover the server's own address, a pushed ifconfig equal to it, an
ifconfig inside the client's underlay subnet, a pushed route the kernel already has.
"""

from __future__ import annotations

import json
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


#: pushed routes over the server's own address (a host route, a /16 holding it), and one
#: the client already has (bench/hostile.py pushes the same under load)
PUSH_OVER_SERVER = (f'push "route {SERVER_IP} 255.255.255.255"\n'
                    'push "route 192.168.0.0 255.255.0.0"\n'
                    'push "route 10.77.0.0 255.255.0.0"\n')
#: a client-config-dir entry pushing the server's own address as the client's
IFCONFIG_SERVER = f"ifconfig-push {SERVER_IP} 255.255.255.0\n"


def _via(lab: Lab, dst: str) -> str:  # noqa: F811
    return lab.c1.run("ip", "route", "get", dst).stdout


def test_pushed_routes_over_the_server_keep_the_underlay_path(lab: Lab) -> None:  # noqa: F811
    # the server's own address as a host route, and a /16 it sits in; plus a route the
    # client already has (the kernel refuses it as a duplicate)
    lab.start_server(extra=PUSH_OVER_SERVER)
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
    (ccd / "client1").write_text(IFCONFIG_SERVER)
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


def _server_packets(pcap: Path) -> list[tuple[int, bytes]]:
    """(UDP destination port, payload) of what the server sent (source port 1194)."""
    import struct

    data, out, off = pcap.read_bytes(), [], 24
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(pkt) < 42 or pkt[12:14] != b"\x08\x00" or pkt[23] != 17:
            continue
        udp = 14 + (pkt[14] & 0x0F) * 4
        sport, dport = struct.unpack_from("!HH", pkt, udp)
        if sport == 1194:
            out.append((dport, pkt[udp + 8:]))
    return out


def test_junk_control_packets_from_a_stranger_do_not_tear_down(lab: Lab) -> None:  # noqa: F811
    import signal
    import subprocess

    lab.start_server()  # no tls-auth: nothing but the source tells the junk apart
    veth = next(i["ifname"] for i in json.loads(lab.c1.run("ip", "-j", "addr").stdout)
                if any(a.get("local") == "192.168.110.2" for a in i.get("addr_info", [])))
    pcap = lab.dir / "c1.pcap"
    cap = lab.c1.popen("tcpdump", "-i", veth, "-U", "-w", str(pcap), "udp and src port 1194",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: pcap.exists() and pcap.stat().st_size > 0, 10)
        d1 = lab.client(lab.c1, lab.ovpn("c1"), "ovpn1")
        wait_up(d1)
        assert lab.c1.wait_ping("10.8.0.1", 10), d1.log()
        assert wait_for(lambda: any(p[0] >> 3 == 8 for _, p in _server_packets(pcap)), 10)
    finally:
        cap.send_signal(signal.SIGINT)
        cap.wait(10)
    port, reset = next((d, p) for d, p in _server_packets(pcap) if p[0] >> 3 == 8)
    sid = reset[1:9]  # the server's session id, from its HARD_RESET_SERVER_V2
    # 60 P_CONTROL_V1 with that session id and a junk TLS record, from another address
    lab.s.run("ip", "addr", "add", "192.168.110.77/32", "dev", "lo")
    script = ("import os,socket,struct,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
              "s.bind(('192.168.110.77',0));sid=bytes.fromhex(sys.argv[2]);"
              "[s.sendto(bytes([4<<3])+sid+b'\\x00'+struct.pack('!I',i)"
              "+b'\\x17\\x03\\x03\\x00\\x20'+os.urandom(32),(sys.argv[1],int(sys.argv[3])))"
              " for i in range(1,61)]")
    lab.s.run(sys.executable, "-c", script, "192.168.110.2", sid.hex(), str(port))
    assert wait_for(lambda: status(d1)["drops"].get("unknown_peer", 0) >= 60
                    or "up -> down" in d1.log(), 10), status(d1)
    pings = lab.c1.ping("10.8.0.1", count=20, interval=0.05)
    t1 = status(d1)
    print("junk control:", t1["drops"], "reconnects", t1["crypto"]["reconnects"], "pings", pings)
    assert "up -> down" not in d1.log() and t1["crypto"]["reconnects"] == 0, d1.log()
    assert pings == (20, 20)
