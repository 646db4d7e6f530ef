"""framing = "openvpn" (static-key mode) against the real openvpn 2.6 from Debian.

The openvpn side runs the Multi-link enabler's configs verbatim (dev tap, proto udp4,
port 1191, secret, cipher none, keepalive 15 60 / ping 15) or the variants the tests name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, Env
from netns import Host, tunconnector_cmd, wait_for

pytestmark = [
    pytest.mark.openvpn,
    pytest.mark.skipif(shutil.which("openvpn") is None, reason="needs openvpn (Debian package)"),
]

TC_ADDR = "10.77.0.2"
OV_ADDR = "10.77.0.1"


def genkey(env: Env, name: str = "ta.key") -> Path:
    path = env.workdir / name
    res = subprocess.run(tunconnector_cmd("genkey", "--openvpn", str(path)),
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert os.stat(path).st_mode & 0o777 == 0o600
    return path


class OpenVPN:
    """One openvpn process in a namespace, its device addressed by the test."""

    def __init__(self, env: Env, host: Host, name: str, lines: list[str], dev: str,
                 addr: str | None, bridge: str | None = None) -> None:
        self.env, self.host, self.name, self.dev, self.addr = env, host, name, dev, addr
        self.bridge = bridge
        self.conf = env.workdir / f"{name}.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log_path = env.workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OpenVPN:
        log = open(self.log_path, "ab")
        self.proc = self.host.popen("openvpn", "--config", str(self.conf), "--verb", "4",
                                    stdout=log, stderr=subprocess.STDOUT)
        assert wait_for(lambda: self.host.run("ip", "link", "show", self.dev,
                                              check=False).returncode == 0, 15), self.log()
        if self.bridge:  # the enabler's server: taps in a bridge that holds the address
            if self.host.run("ip", "link", "show", self.bridge, check=False).returncode:
                self.host.run("ip", "link", "add", self.bridge, "address", "02:00:00:00:77:01",
                              "type", "bridge")
                if self.addr:
                    self.host.run("ip", "addr", "add", f"{self.addr}/24", "dev", self.bridge)
                self.host.run("ip", "link", "set", self.bridge, "up")
            self.host.run("ip", "link", "set", self.dev, "master", self.bridge)
        elif self.addr:
            self.host.run("ip", "addr", "replace", f"{self.addr}/24", "dev", self.dev)
        self.host.run("ip", "link", "set", self.dev, "up")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def openvpns(env: Env) -> Any:
    started: list[OpenVPN] = []

    def make(host: Host, name: str, lines: list[str], dev: str,
             addr: str | None = None, bridge: str | None = None) -> OpenVPN:
        o = OpenVPN(env, host, name, lines, dev, addr, bridge).start()
        started.append(o)
        return o

    yield make
    for o in started:
        o.stop()


def enabler_server(key: Path, dev: str = "tap1", port: int = 1191) -> list[str]:
    """The enabler's server config (deployment/docker/server), verbatim but for paths."""
    return [f"dev {dev}", "proto udp4", f"port {port}", f"secret {key}", "cipher none",
            "keepalive 15 60"]


def enabler_client(key: Path, remote: str, local: str, dev: str = "tap1",
                   port: int = 1191) -> list[str]:
    """The enabler's client config: remote, local bound, ping 15."""
    return [f"dev {dev}", "proto udp4", f"remote {remote} {port}", f"local {local}",
            f"port {port}", f"secret {key}", "cipher none", "ping 15"]


def tc_tunnel(**kw: Any) -> dict[str, Any]:
    t = {"name": "ov", "framing": "openvpn", "keepalive": 15, "dead_after": 60}
    t.update(kw)
    return t


def check_traffic(env: Env, tc_host: Host, ov_host: Host, *, to_openvpn: bool,
                  nbytes: int = 32 << 20) -> None:
    """Ping both ways without loss, then ``nbytes`` one way, sha256 compared."""
    assert tc_host.ping(OV_ADDR, count=20, interval=0.05) == (20, 20)
    assert ov_host.ping(TC_ADDR, count=20, interval=0.05) == (20, 20)
    if to_openvpn:
        want, have, _ = env.transfer(tc_host, ov_host, OV_ADDR, nbytes=nbytes)
    else:
        want, have, _ = env.transfer(ov_host, tc_host, TC_ADDR, nbytes=nbytes)
    assert want == have


def test_client_against_enabler_openvpn_server(env: Env, openvpns: Any) -> None:
    key = genkey(env)
    ov = openvpns(env.b, "ovs", enabler_server(key), "tap1", OV_ADDR)
    tc = env.config_daemon(env.a, [tc_tunnel(
        mode="client", dev_type="tap", device="tap1", remote=env.lab.b_addrs[0],
        remote_port=1191, port=1191, bind=env.lab.a_addrs[0], openvpn_secret=str(key),
        openvpn_cipher="none", address=f"{TC_ADDR}/24")], "tc")
    tc.wait_state("up")
    check_traffic(env, env.a, env.b, to_openvpn=True)
    assert ov.alive()
    assert "Peer Connection Initiated" in ov.log()
    st = tc.tunnel()
    assert st is not None  # our options string is openvpn's own for this config
    assert st["crypto"]["peer_options"] == (
        "V4,dev-type tap,link-mtu 1560,tun-mtu 1500,proto UDPv4,cipher [null-cipher],"
        "auth SHA1,keysize 0,secret")


def test_openvpn_enabler_client_against_server(env: Env, openvpns: Any) -> None:
    key = genkey(env)
    tc = env.config_daemon(env.a, [tc_tunnel(
        mode="server", dev_type="tap", device="tap1", port=1191, openvpn_secret=str(key),
        openvpn_cipher="none", address=f"{TC_ADDR}/24")], "tc")
    tc.wait_state("down")
    openvpns(env.b, "ovc", enabler_client(key, env.lab.a_addrs[0], env.lab.b_addrs[0]),
             "tap1", OV_ADDR)
    tc.wait_state("up")
    check_traffic(env, env.a, env.b, to_openvpn=False)


def wait_down_then_stop(d: Daemon) -> None:
    d.stop()


@pytest.mark.parametrize("proto,tc_dir,tc_mode", [
    ("udp", 0, "client"), ("udp", 1, "server"), ("tcp", 0, "server"), ("tcp", 1, "client"),
])
def test_tun_aes256_sha256_key_directions(env: Env, openvpns: Any, proto: str, tc_dir: int,
                                          tc_mode: str) -> None:
    key = genkey(env)
    ov_lines = [f"secret {key} {1 - tc_dir}", "dev tun1", "cipher AES-256-CBC", "auth SHA256",
                "keepalive 2 20", "port 1191"]
    if tc_mode == "client":  # openvpn is the server: no remote
        ov_lines.append(f"proto {proto}4" + ("-server" if proto == "tcp" else ""))
    else:
        ov_lines += [f"proto {proto}4" + ("-client" if proto == "tcp" else ""),
                     f"remote {env.lab.a_addrs[0]} 1191"]
        if proto == "udp":
            ov_lines.append(f"local {env.lab.b_addrs[0]}")
    t = tc_tunnel(mode=tc_mode, dev_type="tun", device="tun1", proto=proto,
                  openvpn_secret=str(key), key_direction=tc_dir, openvpn_cipher="AES-256-CBC",
                  openvpn_auth="SHA256", address=f"{TC_ADDR}/24", keepalive=2, dead_after=20)
    if tc_mode == "client":
        t.update(remote=env.lab.b_addrs[0], remote_port=1191)
        tc = env.config_daemon(env.a, [t], "tc")
        ov = openvpns(env.b, "ov", ov_lines, "tun1", OV_ADDR)
    else:
        t.update(port=1191)
        tc = env.config_daemon(env.a, [t], "tc")
        tc.wait_state("down")
        ov = openvpns(env.b, "ov", ov_lines, "tun1", OV_ADDR)
    tc.wait_state("up", timeout=20)
    assert env.a.ping(OV_ADDR, count=10, interval=0.05) == (10, 10)
    assert env.b.ping(TC_ADDR, count=10, interval=0.05) == (10, 10)
    want, have, _ = env.transfer(env.a, env.b, OV_ADDR, nbytes=4 << 20)
    assert want == have
    st = tc.tunnel()
    assert st is not None and st["crypto"]["cipher"] == "AES-256-CBC" and st["encrypted"]
    assert not {k for k in st["drops"] if k in ("bad_hmac", "bad_padding", "replay")}, st
    tc.stop()  # a clean stop tells openvpn (OCC EXIT; over TCP the stream closes)
    assert wait_for(lambda: "exit message received" in ov.log()
                    or "Connection reset" in ov.log() or "restarting" in ov.log(), 10), ov.log()


def test_wrong_key_no_traffic_both_alive(env: Env, openvpns: Any) -> None:
    key, other = genkey(env), genkey(env, "other.key")
    ov = openvpns(env.b, "ovs", enabler_server(key), "tap1", OV_ADDR)
    tc = env.config_daemon(env.a, [tc_tunnel(
        mode="client", dev_type="tap", device="tap1", remote=env.lab.b_addrs[0],
        remote_port=1191, openvpn_secret=str(other), openvpn_cipher="none",
        address=f"{TC_ADDR}/24")], "tc")
    tc.wait_state("down")
    assert env.a.ping(OV_ADDR, count=5, interval=0.2) == (5, 0)
    assert env.b.ping(TC_ADDR, count=5, interval=0.2) == (5, 0)
    assert ov.alive() and tc.proc is not None and tc.proc.poll() is None
    st = tc.wait_state("down")
    assert "Authenticate/Decrypt packet error" in ov.log(), ov.log()
    # our hellos reached openvpn and were refused; openvpn sent nothing authentic back
    assert st["rx_packets"] == 0


def _pcap_udp_payloads(path: Path, sport: int, *, either: bool = False) -> list[bytes]:
    """UDP payloads with source port ``sport`` (or, ``either``, source or destination
    port) from a pcap of an Ethernet link."""
    import struct

    data = path.read_bytes()
    out = []
    off = 24
    while off + 16 <= len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if len(pkt) < 42 or pkt[12:14] != b"\x08\x00" or pkt[23] != 17:
            continue
        ihl = (pkt[14] & 0x0F) * 4
        udp = 14 + ihl
        ports = struct.unpack_from("!HH", pkt, udp)
        if ports[0] == sport or (either and ports[1] == sport):
            out.append(pkt[udp + 8:])
    return out


def test_replayed_datagrams_dropped(env: Env, openvpns: Any) -> None:
    key = genkey(env)
    tc = env.config_daemon(env.a, [tc_tunnel(
        mode="server", dev_type="tap", device="tap1", port=1191, openvpn_secret=str(key),
        openvpn_cipher="none", address=f"{TC_ADDR}/24")], "tc")
    tc.wait_state("down")
    pcap = env.workdir / "cap.pcap"
    # captured where openvpn sends (one datagram per packet; the receiving side may show
    # GRO-coalesced runs), only what openvpn sent
    cap = env.b.popen("tcpdump", "-i", env.lab.links[0][1], "-U", "-w", str(pcap),
                      f"udp and src host {env.lab.b_addrs[0]} and src port 1191",
                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert cap.stderr is not None
        line = cap.stderr.readline().decode()  # "listening on ..." once the filter is on
        assert "listening" in line, line
        openvpns(env.b, "ovc", enabler_client(key, env.lab.a_addrs[0], env.lab.b_addrs[0]),
                 "tap1", OV_ADDR)
        tc.wait_state("up")
        assert env.b.ping(TC_ADDR, count=5, interval=0.05) == (5, 5)
        # openvpn's 5 echo replies (and what came before) are in the file (-U: written
        # packet by packet)
        assert wait_for(lambda: len(_pcap_udp_payloads(pcap, 1191)) >= 5, 10)
    finally:
        cap.send_signal(signal.SIGINT)
        cap.wait(10)
    payloads = _pcap_udp_payloads(pcap, 1191)
    assert payloads, "no datagram of openvpn captured"
    before = tc.tunnel()
    assert before is not None
    # the same authentic datagrams again, 1,000 of them, from another source port
    script = ("import socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
              "ps=[bytes.fromhex(h) for h in sys.argv[2:]];"
              "[s.sendto(ps[i%len(ps)],(sys.argv[1],1191)) for i in range(1000)]")
    env.b.run(sys.executable, "-c", script, env.lab.a_addrs[0], *[p.hex() for p in payloads])
    assert wait_for(lambda: (tc.tunnel() or {}).get("drops", {}).get("replay", 0) >= 1000,
                    20), str((tc.tunnel() or {}).get("drops"))
    after = tc.tunnel()
    assert after is not None
    assert after["peer"] == before["peer"]
    assert after["state"] == "up"
    assert env.b.ping(TC_ADDR, count=5, interval=0.05) == (5, 5)


def test_openvpn_killed_and_restarted(env: Env, openvpns: Any) -> None:
    key = genkey(env)
    # as the enabler's server runs it: the tap in bridge br0, which holds the address
    ov = openvpns(env.b, "ovs", enabler_server(key), "tap1", OV_ADDR, bridge="br0")
    tc = env.config_daemon(env.a, [tc_tunnel(
        mode="client", dev_type="tap", device="tap1", remote=env.lab.b_addrs[0],
        remote_port=1191, openvpn_secret=str(key), openvpn_cipher="none",
        address=f"{TC_ADDR}/24")], "tc")
    tc.wait_state("up")
    assert env.a.ping(OV_ADDR, count=3, interval=0.1) == (3, 3)
    ov.stop(signal.SIGKILL)
    assert env.a.ping(OV_ADDR, count=2, interval=0.2) == (2, 0)
    ov2 = openvpns(env.b, "ovs2", enabler_server(key), "tap1", OV_ADDR, bridge="br0")
    t0 = time.monotonic()
    assert env.a.wait_ping(OV_ADDR, timeout=5.0), ov2.log()
    assert time.monotonic() - t0 < 5.0
    assert env.a.ping(OV_ADDR, count=10, interval=0.05) == (10, 10)


def test_occ_exit_marks_peer_down_at_once(env: Env, openvpns: Any) -> None:
    key = genkey(env)
    tc = env.config_daemon(env.a, [tc_tunnel(
        mode="server", dev_type="tap", device="tap1", port=1191, openvpn_secret=str(key),
        openvpn_cipher="none", address=f"{TC_ADDR}/24")], "tc")
    tc.wait_state("down")
    ov = openvpns(env.b, "ovc", enabler_client(key, env.lab.a_addrs[0], env.lab.b_addrs[0])
                  + ["explicit-exit-notify 1"], "tap1", OV_ADDR)
    tc.wait_state("up")
    assert ov.proc is not None
    t0 = time.monotonic()
    ov.proc.send_signal(signal.SIGTERM)  # openvpn sends its EXIT, then lingers a moment
    tc.wait_state("down", timeout=5)  # dead_after is 60 s: only the EXIT explains this
    assert time.monotonic() - t0 < 5
    assert "peer exit (OCC EXIT)" in tc.log()
    ov.stop()


def _http(host: Host, method: str, url: str, body: dict[str, Any] | None = None,
          auth: tuple[str, str] | None = None) -> tuple[int, Any]:
    """One HTTP request made from inside ``host`` (a python process in its namespace)."""
    script = (
        "import base64,json,sys,urllib.request,urllib.error\n"
        "m,u,b,a=sys.argv[1:5]\n"
        "h={'Content-Type':'application/json'}\n"
        "if a: h['Authorization']='Basic '+base64.b64encode(a.encode()).decode()\n"
        "r=urllib.request.Request(u,data=b.encode() if b else None,method=m,headers=h)\n"
        "try:\n"
        "  with urllib.request.urlopen(r,timeout=20) as f:\n"
        "    print(f.status); print(f.read().decode())\n"
        "except urllib.error.HTTPError as e: print(e.code); print(e.read().decode())\n")
    res = host.run(sys.executable, "-c", script, method, url,
                   json.dumps(body) if body is not None else "",
                   ":".join(auth) if auth else "", timeout=30, check=False)
    if res.returncode != 0:  # not listening yet
        return 0, None
    code, _, text = res.stdout.partition("\n")
    return int(code), json.loads(text) if text.strip() else None


def test_enabler_api_openvpn_wire(env: Env, openvpns: Any) -> None:
    from netns import free_port

    user, pw = "admin", "pw-ovpn-7"
    port = free_port()
    api = f"http://{env.lab.a_addrs[0]}:{port}"
    extra = (f'[api]\nlisten = "{env.lab.a_addrs[0]}:{port}"\nusername = "{user}"\n'
             f'password = "{pw}"\nenabler_wire = "openvpn"\nauth_max_failures = 1000\n')
    srv = env.config_daemon(env.a, [], "srv", extra)
    assert wait_for(lambda: _http(env.b, "GET", f"{api}/version")[0] == 200, 60), srv.log()
    code, _ = _http(env.b, "POST", f"{api}/v1/server/start",
                    {"bridge_interface": "br0", "bridge_ip": "10.8.0.254", "links": "2"},
                    auth=(user, pw))
    assert code == 200, srv.log()
    # the key: never to anonymous or wrong credentials; to the right ones, verbatim
    assert _http(env.b, "GET", f"{api}/v1/server/key")[0] == 401
    assert _http(env.b, "GET", f"{api}/v1/server/key", auth=(user, "nope"))[0] == 401
    code, body = _http(env.b, "GET", f"{api}/v1/server/key", auth=(user, pw))
    assert code == 200 and "BEGIN OpenVPN Static key V1" in body["key"]
    # what /v1/client/start does with server_api_url (credentials in the URL)
    key = env.workdir / "fetched.key"
    fetch = ("import sys;from tunconnector.api.enabler import fetch_openvpn_key as f;"
             "open(sys.argv[2],'w').write(f(sys.argv[1]))")
    bad = env.b.run(sys.executable, "-c", fetch, api, str(key), check=False)
    assert bad.returncode != 0 and "HTTP 401" in bad.stderr
    env.b.run(sys.executable, "-c", fetch, f"http://{user}:{pw}@{api[7:]}", str(key))
    os.chmod(key, 0o600)
    # a real openvpn with the enabler's client config reaches tap1 of the server
    openvpns(env.b, "ovc", enabler_client(key, env.lab.a_addrs[0], env.lab.b_addrs[0]),
             "tap1", "10.8.0.1")
    assert env.b.wait_ping("10.8.0.254", timeout=15), srv.log()
    assert env.b.ping("10.8.0.254", count=20, interval=0.05) == (20, 20)
    assert env.a.run("ip", "-j", "link", "show", "tap1").returncode == 0
    status = json.loads(env.a.run("ip", "-j", "link", "show", "tap1").stdout)[0]
    assert status.get("master") == "br0"
