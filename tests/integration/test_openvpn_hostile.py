"""Hostile peers against OpenVPN static-key tunnels (tunconnector on both ends).

Reflection: without a key direction both directions share the keys, so what the server
sent authenticates at the server. Captured and sent back from a third address, it must
neither move the server's peer nor its replay state.
"""

from __future__ import annotations

import contextlib
import json
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from harness import Env
from netns import Host, wait_for
from test_openvpn_static_interop import _pcap_udp_payloads, genkey, tc_tunnel

SRV_ADDR, CL_ADDR = "10.77.0.1", "10.77.0.2"
ATTACKER = "192.168.100.66"


def _echoes(pcap: Path) -> list[bytes]:
    """The echo datagrams (request or reply) in a capture: 84 bytes + packet id and time +
    HMAC-SHA1 each. The daemons send with UDP GSO: a batch read from the device on a busy
    host leaves as one super-packet of equal segments, which tcpdump sees before the
    segmentation; such a capture is cut back into the datagrams the server received."""
    seg = 84 + 8 + 20
    try:
        payloads = _pcap_udp_payloads(pcap, 1191)
    except (OSError, struct.error):  # still being written
        return []
    return [p[i:i + seg] for p in payloads if len(p) % seg == 0
            for i in range(0, len(p), seg)]


@contextlib.contextmanager
def capture(host: Host, dev: str, pcap: Path, src: str) -> Iterator[None]:
    """tcpdump of SRC's datagrams from port 1191 on DEV, written packet by packet
    (``-U``) and handed over at once (``--immediate-mode``: interrupted, tcpdump drops what
    its ring has not handed over yet); running once the file exists, stopped on exit."""
    cap = host.popen("tcpdump", "--immediate-mode", "-i", dev, "-U", "-w", str(pcap),
                     f"udp and src host {src} and src port 1191",
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: pcap.exists() and pcap.stat().st_size > 0, 10)
        yield
    finally:
        cap.send_signal(signal.SIGINT)
        cap.wait(10)


def test_reflected_server_datagrams_do_not_move_the_peer(env: Env) -> None:
    key = genkey(env)
    a_addr, b_addr = env.lab.a_addrs[0], env.lab.b_addrs[0]
    common = dict(dev_type="tun", device="tun1", openvpn_secret=str(key),
                  openvpn_cipher="none", keepalive=2, dead_after=6)
    cl = env.config_daemon(env.b, [tc_tunnel(
        mode="client", remote=a_addr, remote_port=1191, port=1191, bind=b_addr,
        address=f"{CL_ADDR}/24", **common)], "cl")
    cl.wait_state("down")
    # the client first, then the server: the server's time value is the later one
    started = int(time.time())
    assert wait_for(lambda: int(time.time()) > started, 3)
    pcap = env.workdir / "srv.pcap"
    with capture(env.a, env.lab.links[0][0], pcap, a_addr):
        srv = env.config_daemon(env.a, [tc_tunnel(
            mode="server", port=1191, address=f"{SRV_ADDR}/24", **common)], "srv")
        srv.wait_state("up", timeout=20)

        def captured() -> bool:  # tcpdump -U writes each packet at once
            assert env.b.ping(SRV_ADDR, count=3, interval=0.05) == (3, 3)
            return len(_echoes(pcap)) >= 3

        assert wait_for(captured, 15, interval=0.2), "no datagram of the server captured"
    # the server's echo replies, one datagram each (a GSO capture cut back into them)
    payloads = _echoes(pcap)
    assert len(payloads) >= 3, [len(p) for p in _pcap_udp_payloads(pcap, 1191)]
    before = srv.tunnel()
    assert before is not None and before["state"] == "up"
    # three of the server's own datagrams, sent back to it from a third address
    env.b.run("ip", "addr", "add", f"{ATTACKER}/24", "dev", env.lab.links[0][1])
    script = ("import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
              "s.bind((sys.argv[1],0));"
              "[s.sendto(bytes.fromhex(h),(sys.argv[2],1191)) for h in sys.argv[3:]]")
    env.b.run(sys.executable, "-c", script, ATTACKER, a_addr,
              *[p.hex() for p in payloads[-3:]])

    def settled() -> bool:
        st = srv.tunnel() or {}
        return st.get("peer") != before["peer"] or st.get("drops", {}).get("reflected", 0) >= 3

    assert wait_for(settled, 10), srv.tunnel()
    # the real client is still served, without loss
    pings = env.b.ping(SRV_ADDR, count=20, interval=0.05)
    after = srv.tunnel()
    assert after is not None
    print("reflection:", before["peer"], "->", after["peer"], "pings", pings,
          "drops", after["drops"])
    assert after["peer"] == before["peer"], (before["peer"], after["peer"], pings)
    assert after["drops"].get("reflected") == 3 and not after["drops"].get("replay")
    assert pings == (20, 20)
    assert (cl.tunnel() or {}).get("state") == "up"


def test_replay_persist_after_a_server_crash(env: Env) -> None:
    key = genkey(env)
    a_addr, b_addr = env.lab.a_addrs[0], env.lab.b_addrs[0]
    state = env.workdir / "srv.replay"
    common = dict(dev_type="tun", device="tun1", openvpn_secret=str(key),
                  openvpn_cipher="none", keepalive=2, dead_after=6)
    server = tc_tunnel(mode="server", port=1191, address=f"{SRV_ADDR}/24",
                       openvpn_replay_persist=str(state), **common)
    srv = env.config_daemon(env.a, [server], "srv")
    cl = env.config_daemon(env.b, [tc_tunnel(
        mode="client", remote=a_addr, remote_port=1191, port=1191, bind=b_addr,
        address=f"{CL_ADDR}/24", **common)], "cl")
    srv.wait_state("up", timeout=20)
    pcap = env.workdir / "cl.pcap"
    with capture(env.b, env.lab.links[0][1], pcap, b_addr):
        assert env.b.ping(SRV_ADDR, count=200, interval=0.01) == (200, 200)
        # stopped only once the capture holds them
        wait_for(lambda: len(_echoes(pcap)) >= 200, 5)
    echoes = _echoes(pcap)
    assert len(echoes) >= 150, len(echoes)  # tcpdump may miss the first few

    def saved_pid() -> int:
        try:
            return int(json.loads(state.read_text()).get("peer_pid") or 0)
        except (OSError, ValueError):
            return 0

    # the state is saved once a second: crash the server only once it covers every
    # captured datagram (HMAC-SHA1, then the 4-byte packet id)
    last = max(struct.unpack_from("!I", p, 20)[0] for p in echoes)
    assert wait_for(lambda: saved_pid() >= last, 5), (last, state.read_text())
    srv.kill9()
    assert cl.proc is not None
    cl.proc.send_signal(signal.SIGSTOP)  # the new server hears nobody but the attacker
    try:
        srv2 = env.config_daemon(env.a, [server], "srv2")
        srv2.wait_state("down", timeout=20)
        env.b.run("ip", "addr", "add", f"{ATTACKER}/24", "dev", env.lab.links[0][1])
        script = ("import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
                  "s.bind((sys.argv[1],0));"
                  "[s.sendto(bytes.fromhex(h),(sys.argv[2],1191)) for h in sys.argv[3:]]")
        env.b.run(sys.executable, "-c", script, ATTACKER, a_addr, *[p.hex() for p in echoes])
        assert wait_for(lambda: (srv2.tunnel() or {}).get("drops", {}).get("replay", 0)
                        + (srv2.tunnel() or {}).get("rx_packets", 0) >= len(echoes), 10), \
            srv2.tunnel()
        st = srv2.tunnel()
        assert st is not None
        print(f"replayed {len(echoes)}: delivered {st['rx_packets']}, drops {st['drops']}, "
              f"peer {st['peer']}")
        assert st["rx_packets"] == 0 and st["drops"]["replay"] == len(echoes), st
        assert st["state"] == "down" and not st["peer"], st
    finally:
        cl.proc.send_signal(signal.SIGCONT)
    srv2.wait_state("up", timeout=20)
    assert env.b.wait_ping(SRV_ADDR, timeout=10)
    assert env.b.ping(SRV_ADDR, count=10, interval=0.05) == (10, 10)
