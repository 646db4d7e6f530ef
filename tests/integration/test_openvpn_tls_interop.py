"""The OpenVPN TLS client against a real ``openvpn --server`` (2.6) in a namespace.

Topology: namespace S runs openvpn; clients C1 and C2 each reach it over their own veth
(192.168.110.0/24 and 192.168.111.0/24). Certificates are made at test time.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import PY, XFER, Daemon  # noqa: E402
from netns import Host, sh, tunconnector_cmd, wait_for  # noqa: E402

pytestmark = [
    pytest.mark.openvpn,
    pytest.mark.skipif(shutil.which("openvpn") is None, reason="needs the openvpn binary"),
]

SERVER_IP = "192.168.110.1"


# ------------------------------------------------------------------ certificates
def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                           serialization.NoEncryption())


def _cert(cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False,
          eku: list[x509.ObjectIdentifier] | None = None) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer.subject if issuer else name).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(hours=1))
         .not_valid_after(now + datetime.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                          False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False,
                                          False, False), critical=True)
    if eku:
        b = b.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    dir: Path
    files: dict[str, Path] = field(default_factory=dict)

    def text(self, name: str) -> str:
        return self.files[name].read_text()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def make_pki(d: Path) -> Pki:
    """A CA, a server, two clients, a certificate without EKU, another CA, a ta.key."""
    p = Pki(d)

    def write(name: str, data: bytes) -> None:
        path = d / name
        path.write_bytes(data)
        p.files[name] = path

    ca_key = _key()
    ca = _cert("Test CA", ca_key, None, ca_key, ca=True)
    other_key = _key()
    other = _cert("Other CA", other_key, None, other_key, ca=True)
    write("ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    write("other-ca.crt", other.public_bytes(serialization.Encoding.PEM))
    for name, eku in (("server", [ExtendedKeyUsageOID.SERVER_AUTH]), ("noeku", None),
                      ("client1", [ExtendedKeyUsageOID.CLIENT_AUTH]),
                      ("client2", [ExtendedKeyUsageOID.CLIENT_AUTH])):
        k = _key()
        c = _cert(name, k, ca, ca_key, eku=eku)
        write(f"{name}.crt", c.public_bytes(serialization.Encoding.PEM))
        write(f"{name}.key", _pem_key(k))
    res = subprocess.run(["openvpn", "--genkey", "secret", str(d / "ta.key")],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    p.files["ta.key"] = d / "ta.key"
    return p


# ------------------------------------------------------------------ lab
@dataclass
class Lab:
    s: Host
    c1: Host
    c2: Host
    dir: Path
    pki: Pki
    server: subprocess.Popen[bytes] | None = None
    server_log: Path | None = None
    server_conf: Path | None = None
    daemons: list[Daemon] = field(default_factory=list)

    # -- the openvpn server
    def start_server(self, proto: str = "udp", dev: str = "tun", extra: str = "",
                     cert: str = "server", mode: str | None = None) -> None:
        conf = self.dir / "server.conf"
        p = self.pki.files
        mode = mode or "topology subnet\nserver 10.8.0.0 255.255.255.0\n"
        conf.write_text(
            f"dev {dev}\nproto {proto}-server\nport 1194\n{mode}client-to-client\n"
            f"ca {p['ca.crt']}\ncert {p[cert + '.crt']}\nkey {p[cert + '.key']}\n"
            "dh none\nkeepalive 2 10\nverb 3\n" + extra)
        if proto == "udp":
            conf.write_text(conf.read_text().replace("proto udp-server", "proto udp"))
        self.server_conf = conf
        self.restart_server()

    def restart_server(self) -> None:
        assert self.server_conf is not None
        self.server_log = self.dir / "server.log"
        log = open(self.server_log, "ab")
        self.server = self.s.popen("openvpn", "--config", str(self.server_conf),
                                   stdout=log, stderr=subprocess.STDOUT)
        log.close()
        ok = wait_for(lambda: "Initialization Sequence Completed" in self.server_text(), 20)
        assert ok, self.server_text()

    def server_text(self) -> str:
        try:
            return self.server_log.read_text(errors="replace") if self.server_log else ""
        except OSError:
            return ""

    def kill_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.kill()
            self.server.wait(10)

    # -- tunconnector clients
    def ovpn(self, name: str, client: str = "client1", proto: str = "udp", dev: str = "tun",
             extra: str = "", ca: str = "ca.crt", inline: bool = False) -> Path:
        p = self.pki.files
        remote_proto = "udp" if proto == "udp" else "tcp-client"
        head = (f"client\ndev {dev}\nproto {remote_proto}\nremote {SERVER_IP} 1194\nnobind\n"
                "remote-cert-tls server\npersist-key\npersist-tun\nverb 3\n")
        if inline:
            body = (f"<ca>\n{p[ca].read_text()}</ca>\n<cert>\n{p[client + '.crt'].read_text()}"
                    f"</cert>\n<key>\n{p[client + '.key'].read_text()}</key>\n")
        else:
            body = f"ca {p[ca]}\ncert {p[client + '.crt']}\nkey {p[client + '.key']}\n"
        path = self.dir / f"{name}.ovpn"
        path.write_text(head + body + extra)
        return path

    def client(self, host: Host, ovpn: Path, name: str, env: dict[str, str] | None = None,
               ) -> Daemon:
        d = Daemon(host, tunconnector_cmd("openvpn", "-c", str(ovpn), "--name", name),
                   self.dir, name)
        if env:
            old = dict(os.environ)
            os.environ.update(env)
            try:
                d.start()
            finally:
                os.environ.clear()
                os.environ.update(old)
        else:
            d.start()
        self.daemons.append(d)
        return d


    def client_toml(self, host: Host, ovpn: Path, name: str, health_file: Path) -> Daemon:
        """The same client as a ``[[tunnel]] openvpn_config`` of ``tunconnector run``, with
        the built-in health check pinging the server's tunnel address."""
        toml = self.dir / f"{name}.toml"
        toml.write_text(
            f'[[tunnel]]\nname = "{name}"\nopenvpn_config = "{ovpn}"\n'
            f'[tunnel.health]\ntarget = "10.8.0.1"\ninterval = 0.5\nprobes = 4\n'
            f'threshold = 0.5\ntimeout = 0.4\nstatus_file = "{health_file}"\n')
        d = Daemon(host, tunconnector_cmd("run", "-c", str(toml)), self.dir, name).start()
        self.daemons.append(d)
        return d


@contextlib.contextmanager
def _lab(pki: Pki, tmp: Path) -> Iterator[Lab]:
    tag = secrets.token_hex(3)
    hosts = [Host(f"ovs{tag}"), Host(f"ov1{tag}"), Host(f"ov2{tag}")]
    made: list[str] = []
    lab: Lab | None = None
    try:
        for h in hosts:
            sh("ip", "netns", "add", h.ns)
            made.append(h.ns)
            h.run("ip", "link", "set", "lo", "up")
        s = hosts[0]
        for i, c in enumerate(hosts[1:]):
            va, vb = f"os{i}{tag}", f"oc{i}{tag}"
            sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
            sh("ip", "link", "set", va, "netns", s.ns)
            sh("ip", "link", "set", vb, "netns", c.ns)
            s.run("ip", "addr", "add", f"192.168.{110 + i}.1/24", "dev", va)
            c.run("ip", "addr", "add", f"192.168.{110 + i}.2/24", "dev", vb)
            s.run("ip", "link", "set", va, "up")
            c.run("ip", "link", "set", vb, "up")
        # C2 reaches the server's address on the first veth through S
        hosts[2].run("ip", "route", "add", f"{SERVER_IP}/32", "via", "192.168.111.1")
        lab = Lab(s, hosts[1], hosts[2], tmp, pki)
        yield lab
    finally:
        if lab is not None:
            for d in lab.daemons:
                d.stop()
            lab.kill_server()
        for ns in made:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def lab(pki: Pki, tmp_path: Path) -> Iterator[Lab]:
    with _lab(pki, tmp_path) as lb:
        yield lb


def transfer(src: Host, dst: Host, dst_ip: str, nbytes: int, port: int = 5201,
             timeout: float = 120) -> None:
    recv = dst.popen(PY, XFER, "recv", str(port), stdout=subprocess.PIPE,
                     stderr=subprocess.PIPE)
    assert recv.stdout is not None
    assert "listening" in recv.stdout.readline().decode()
    sent = src.run(PY, XFER, "send", dst_ip, str(port), str(nbytes), "7", timeout=timeout)
    out, err = recv.communicate(timeout=timeout)
    got, want = out.decode().split(), sent.stdout.split()
    assert got and int(got[0]) == nbytes, (got, err.decode())
    assert got[1] == want[1], "sha256 differs"


def status(d: Daemon) -> dict[str, Any]:
    """The tunnel's status; generous timeout: CLI start-up is slow on a loaded machine."""
    for _ in range(3):
        try:
            res = subprocess.run(
                tunconnector_cmd("status", "--json", "--control-dir", str(d.ctl)),
                capture_output=True, text=True, timeout=45)
        except subprocess.TimeoutExpired:
            continue
        try:
            replies = json.loads(res.stdout or "[]")
        except ValueError:
            continue
        for r in replies:
            for t in r.get("tunnels", []):
                return dict(t)
    raise AssertionError(f"no status from {d.name}:\n{d.log()}")


def wait_up(d: Daemon, timeout: float = 60) -> dict[str, Any]:
    """Wait for the tunnel's 'up' log line (no status polling), then read its status."""
    assert wait_for(lambda: " -> up" in d.log() or (d.proc and d.proc.poll() is not None),
                    timeout), d.log()
    assert d.proc is not None and d.proc.poll() is None, d.log()
    return status(d)


def tunnel_address(t: dict[str, Any]) -> str:
    return str(t["addresses"][0]).split("/")[0]


# ------------------------------------------------------------------ tests
@pytest.mark.slow
def test_two_clients_pool_addresses_ping_and_transfer(lab: Lab) -> None:
    """UDP/TUN, tls-crypt, the server's default cipher (AES-256-GCM) and TLS-EKM; a pushed
    route is installed and removed on exit."""
    lab.start_server(extra=f"tls-crypt {lab.pki.files['ta.key']}\n"
                     'push "route 10.77.0.0 255.255.0.0"\n')
    extra = f"tls-crypt {lab.pki.files['ta.key']}\n"
    d1 = lab.client(lab.c1, lab.ovpn("c1", "client1", extra=extra), "ovpn1")
    d2 = lab.client(lab.c2, lab.ovpn("c2", "client2", extra=extra), "ovpn2")
    t1 = wait_up(d1)
    t2 = wait_up(d2)
    assert wait_for(lambda: status(d1).get("addresses")
                    and status(d2).get("addresses"), 10)
    t1, t2 = status(d1), status(d2)
    a1, a2 = tunnel_address(t1), tunnel_address(t2)
    assert a1 != a2 and a1.startswith("10.8.0.") and a2.startswith("10.8.0.")
    assert lab.c1.wait_ping("10.8.0.1", 10) and lab.c2.wait_ping("10.8.0.1", 10)
    # client to client through the server (each way); timing-free: the load here is noisy
    assert lab.c1.wait_ping(a2, 15) and lab.c2.wait_ping(a1, 15)
    transfer(lab.c1, lab.c2, a2, 32 << 20)
    t1 = status(d1)
    crypto = t1["crypto"]
    assert t1["state"] == "up" and t1["peer"] and t1["tx_bytes"] > 32 << 20
    assert crypto["cipher"] == "AES-256-GCM" and crypto["key_derivation"] == "tls-ekm"
    assert crypto["key_age"] is not None and isinstance(t1["drops"], dict)
    route = lab.c1.run("ip", "route", "show", "10.77.0.0/16").stdout
    assert t1["device"] in route, route
    d1.stop()
    assert lab.c1.run("ip", "route", "show", "10.77.0.0/16").stdout.strip() == ""
    # explicit-exit-notify: the server drops client1 at once instead of timing it out
    assert wait_for(lambda: "client1" in lab.server_text()
                    and "OCC exit message received" in lab.server_text(), 10)


@pytest.mark.slow
@pytest.mark.parametrize(("cipher", "keys"), [
    # every cipher once, both key derivations (the first test covers EKM without force)
    ("AES-256-GCM", "prf"), ("AES-128-GCM", "force-ekm"), ("CHACHA20-POLY1305", "prf"),
])
def test_ciphers_and_key_derivation(lab: Lab, cipher: str, keys: str) -> None:
    extra = f"data-ciphers {cipher}\ntls-auth {lab.pki.files['ta.key']} 0\n"
    if keys == "force-ekm":
        extra += "force-tls-key-material-export\n"
    lab.start_server(extra=extra)
    env = {"TUNCONNECTOR_OPENVPN_NO_EKM": "1"} if keys == "prf" else None
    d = lab.client(lab.c1, lab.ovpn("c1", extra=f"tls-auth {lab.pki.files['ta.key']} 1\n"),
                   "ovpn1", env=env)
    wait_up(d)
    assert lab.c1.wait_ping("10.8.0.1", 10)
    transfer(lab.c1, lab.s, "10.8.0.1", 4 << 20)
    crypto = status(d)["crypto"]
    assert crypto["cipher"] == cipher
    assert crypto["key_derivation"] == ("prf" if keys == "prf" else "tls-ekm")


@pytest.mark.slow
def test_tcp_tls_auth_net30(lab: Lab) -> None:
    """TCP, tls-auth with key-direction, and the net30 topology (openvpn 2.6's default)."""
    ta = lab.pki.files["ta.key"]
    lab.start_server(proto="tcp", extra=f"tls-auth {ta} 0\n",
                     mode="server 10.8.0.0 255.255.255.0\n")
    d = lab.client(lab.c1, lab.ovpn("c1", proto="tcp", extra=f"tls-auth {ta}\nkey-direction 1\n"),
                   "ovpn1")
    wait_up(d)
    assert wait_for(lambda: status(d).get("addresses"), 10)
    assert status(d)["addresses"][0].endswith("/30")
    assert lab.c1.wait_ping("10.8.0.1", 10)
    transfer(lab.c1, lab.s, "10.8.0.1", 32 << 20)
    assert status(d)["proto"] == "tcp"


@pytest.mark.slow
def test_peering_style_tap_server_bridge(lab: Lab) -> None:
    """client, dev tap, proto udp, remote-cert-tls server, cipher AES-128-GCM, inline certs."""
    lab.start_server(dev="tap", mode="server-bridge 10.8.0.1 255.255.255.0 10.8.0.50 10.8.0.99\n",
                     extra="data-ciphers AES-128-GCM\n")
    assert wait_for(lambda: lab.s.run("ip", "link", "show", "tap0", check=False).returncode == 0)
    lab.s.run("ip", "addr", "add", "10.8.0.1/24", "dev", "tap0")
    lab.s.run("ip", "link", "set", "tap0", "up")
    ovpn = lab.ovpn("peering", dev="tap", extra="cipher AES-128-GCM\n", inline=True)
    d1 = lab.client(lab.c1, ovpn, "ovpn1")
    d2 = lab.client(lab.c2, lab.ovpn("c2", "client2", dev="tap", inline=True), "ovpn2")
    wait_up(d1)
    wait_up(d2)
    assert lab.c1.wait_ping("10.8.0.1", 10)
    t2 = status(d2)
    assert wait_for(lambda: status(d2).get("addresses"), 10)
    t2 = status(d2)
    a2 = tunnel_address(t2)
    assert lab.c1.wait_ping(a2, 10)
    transfer(lab.c1, lab.c2, a2, 8 << 20)
    t1 = status(d1)
    assert t1["dev_type"] == "tap" and t1["crypto"]["cipher"] == "AES-128-GCM"


@pytest.mark.slow
def test_renegotiation_every_5s_under_load(lab: Lab) -> None:
    """reneg-sec 5 on the server under a 20 s iperf3 (at least three renegotiations, no
    reconnect), then a sha256-checked transfer."""
    if shutil.which("iperf3") is None:
        pytest.skip("needs iperf3")
    lab.start_server(extra="reneg-sec 5\n")
    d = lab.client(lab.c1, lab.ovpn("c1"), "ovpn1")
    wait_up(d)
    assert lab.c1.wait_ping("10.8.0.1", 10)
    srv = lab.s.popen("iperf3", "-s", "-1", "-B", "10.8.0.1", stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
    try:
        # iperf3 prints nothing when ready: its listening socket is the signal
        assert wait_for(lambda: ":5201 " in lab.s.run("ss", "-ltn", check=False).stdout, 10)
        res = lab.c1.run("iperf3", "-c", "10.8.0.1", "-t", "20", "-b", "100M",
                         check=False, timeout=90)
        assert res.returncode == 0, res.stderr + res.stdout[-2000:]
    finally:
        srv.kill()
        srv.wait(5)
    transfer(lab.c1, lab.s, "10.8.0.1", 32 << 20)
    t = status(d)
    assert t["state"] == "up"
    assert t["crypto"]["renegotiations"] >= 3 and t["crypto"]["reconnects"] == 0


@pytest.mark.slow
def test_server_killed_and_restarted(lab: Lab) -> None:
    """Run from a TOML ``openvpn_config`` tunnel with [tunnel.health]: the health check
    follows the server going away and coming back."""
    lab.start_server(extra="keepalive 1 4\n")
    health = lab.dir / "health"
    d = lab.client_toml(lab.c1, lab.ovpn("c1"), "ovpn1", health)

    def health_is(want: str) -> bool:
        try:
            return health.read_text().strip() == want
        except OSError:
            return False

    wait_up(d)
    assert lab.c1.wait_ping("10.8.0.1", 10)
    assert wait_for(lambda: health_is("OK"), 20), d.log()
    lab.kill_server()
    assert wait_for(lambda: "ping-restart" in d.log(), 20), d.log()
    assert wait_for(lambda: health_is("NOT_OK"), 20), d.log()
    lab.restart_server()
    t0 = time.monotonic()
    assert lab.c1.wait_ping("10.8.0.1", 15)
    back = time.monotonic() - t0
    assert back < 10, f"back after {back:.1f} s"
    assert status(d)["state"] == "up"
    assert wait_for(lambda: health_is("OK"), 20), d.log()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["wrong-ca", "no-server-eku"])
def test_refused_server(lab: Lab, case: str) -> None:
    lab.start_server(cert="noeku" if case == "no-server-eku" else "server")
    ca = "other-ca.crt" if case == "wrong-ca" else "ca.crt"
    d = lab.client(lab.c1, lab.ovpn("c1", ca=ca), "ovpn1")
    want = ("does not lead to the configured CA" if case == "wrong-ca"
            else "(remote-cert-tls server)")
    assert wait_for(lambda: want in d.log(), 40), d.log()
    assert "refused server" in d.log()
    t = status(d)
    assert t.get("state") != "up" and not t.get("addresses")
    # no address, so no route: nothing is even sent (ping reports (0, 0) then)
    assert lab.c1.ping("10.8.0.1", count=2, interval=0.2)[1] == 0
    assert "Peer Connection Initiated" not in lab.server_text()
