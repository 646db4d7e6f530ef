"""The things measured: direct veth, kernel vxlan, OpenVPN, socat and tunconnector.

Each peer builds a tunnel between ``ns_a`` (client, sender) and ``ns_b`` (server,
receiver) of a :class:`~bench.netns.Topology`, exposes ``target`` (the receiver's address
reachable from ``ns_a``) and ``pids`` (the user-space tunnel processes, for CPU), and
removes what it made in :meth:`Peer.stop`.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .measure import cpu_seconds, ping_rtt_ms
from .netns import UNDERLAY_A, UNDERLAY_B, Topology, sh

REPO = Path(__file__).resolve().parent.parent
#: how peers start tunconnector: ``python -m tunconnector`` of the interpreter running the
#: bench (any install: editable, a venv elsewhere, the system), or $BENCH_TUNCONNECTOR
#: (a command line, e.g. another build's ``/opt/x/bin/tunconnector``)
TUNCONNECTOR: list[str] = (shlex.split(os.environ["BENCH_TUNCONNECTOR"])
                           if os.environ.get("BENCH_TUNCONNECTOR")
                           else [sys.executable, "-m", "tunconnector"])


class PeerError(Exception):
    """A peer could not be brought up (the row is reported as failed, the run goes on)."""


@dataclass
class Peer:
    name: str
    kind: str  # "baseline" | "openvpn" | "socat" | "tunconnector"
    layer: str = "tun"  # tun | tap | none
    encrypted: bool = False
    baseline: str | None = None  # the OpenVPN row this one is compared with
    description: str = ""
    target: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def start(self, topo: Topology, index: int, workdir: Path) -> None:
        raise NotImplementedError

    def stop(self, topo: Topology) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        self.procs.clear()

    def spawn(self, topo: Topology, ns: str, args: Sequence[str], tag: str) -> None:
        assert self.workdir is not None
        log = self.workdir / f"{self.name}-{tag}.log"
        self.logs.append(log)
        with log.open("wb") as fh:
            p = subprocess.Popen(topo.exec_args(ns, args), stdout=fh, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(p)

    def log_tail(self, lines: int = 8) -> str:
        out = []
        for log in self.logs:
            try:
                text = log.read_text(errors="replace").strip().splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(out)

    def wait_ready(self, topo: Topology, timeout: float = 20.0) -> None:
        """Ping through the tunnel until it answers (the only readiness signal all share)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise PeerError(f"{self.name}: a tunnel process exited with "
                                    f"{p.returncode}\n{self.log_tail()}")
            r = topo.run(topo.ns_a, ["ping", "-c", "1", "-W", "0.3", "-n", self.target],
                         check=False, timeout=5)
            if r.returncode == 0:
                return
        raise PeerError(f"{self.name}: no ping through the tunnel in {timeout:.0f}s\n"
                        f"{self.log_tail()}")


def subnet(index: int) -> tuple[str, str]:
    """Tunnel addresses for the peer with this index: (client side A, server side B)."""
    return f"10.81.{index}.1", f"10.81.{index}.2"


class VethPeer(Peer):
    def start(self, topo: Topology, index: int, workdir: Path) -> None:
        self.target = UNDERLAY_B


class VxlanPeer(Peer):
    def start(self, topo: Topology, index: int, workdir: Path) -> None:
        a, b = subnet(index)
        dev = topo.name("vx")
        for ns, veth, local, remote, addr in (
                (topo.ns_a, topo.veth_a, UNDERLAY_A, UNDERLAY_B, a),
                (topo.ns_b, topo.veth_b, UNDERLAY_B, UNDERLAY_A, b)):
            sh(["ip", "-n", ns, "link", "add", dev, "type", "vxlan", "id", "42", "local", local,
                "remote", remote, "dstport", "4789", "dev", veth])
            sh(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
            sh(["ip", "-n", ns, "link", "set", dev, "up"])
        self._dev = dev
        self.target = b
        self.wait_ready(topo)

    def stop(self, topo: Topology) -> None:
        for ns in (topo.ns_a, topo.ns_b):
            sh(["ip", "-n", ns, "link", "del", self._dev], check=False)


def make_certs(workdir: Path) -> Path:
    """Throw-away CA, server and client certificates for OpenVPN TLS (openssl CLI)."""
    d = workdir / "pki"
    if (d / "client.crt").exists():
        return d
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*args: str) -> None:
        sh(["openssl", *args], timeout=30)

    ossl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"), "-days", "2",
         "-subj", "/CN=bench-ca")
    for name, ext in (("server", "serverAuth"), ("client", "clientAuth")):
        ossl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(d / f"{name}.key"), "-out", str(d / f"{name}.csr"),
             "-subj", f"/CN=bench-{name}")
        extfile = d / f"{name}.ext"
        extfile.write_text(f"extendedKeyUsage={ext}\nkeyUsage=digitalSignature,keyAgreement\n")
        ossl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-out", str(d / f"{name}.crt"),
             "-days", "2", "-extfile", str(extfile))
    for key in d.glob("*.key"):
        key.chmod(0o600)
    return d


#: the usual throughput tuning (measured here: about 2-3x the defaults), so the ratios
#: compare with OpenVPN at its best rather than with its defaults
OPENVPN_TUNING = ["--fast-io", "--sndbuf", "4194304", "--rcvbuf", "4194304",
                  "--txqueuelen", "1000"]


class OpenVPNPeer(Peer):
    """OpenVPN 2.6 point-to-point over UDP: no crypto, AES-256-GCM over TLS, or TAP."""

    def start(self, topo: Topology, index: int, workdir: Path) -> None:
        self.workdir = workdir
        a, b = subnet(index)
        dev = topo.name("ov")
        port = "1194"
        common = ["openvpn", "--dev", dev, "--dev-type", self.layer, "--proto", "udp",
                  "--lport", port, "--rport", port, "--verb", "3", "--ping", "10",
                  "--ping-exit", "120", "--persist-tun",
                  *([] if os.environ.get("BENCH_OPENVPN_DEFAULTS") else OPENVPN_TUNING),
                  *os.environ.get("BENCH_OPENVPN_EXTRA", "").split()]
        if self.encrypted:
            pki = make_certs(workdir)
            crypto_a = ["--tls-client", "--ca", str(pki / "ca.crt"), "--cert",
                        str(pki / "client.crt"), "--key", str(pki / "client.key"),
                        "--data-ciphers", "AES-256-GCM", "--remote-cert-tls", "server"]
            crypto_b = ["--tls-server", "--dh", "none", "--ca", str(pki / "ca.crt"), "--cert",
                        str(pki / "server.crt"), "--key", str(pki / "server.key"),
                        "--data-ciphers", "AES-256-GCM", "--remote-cert-tls", "client"]
        else:
            crypto_a = crypto_b = ["--cipher", "none", "--data-ciphers", "none", "--auth",
                                   "none"]
        if self.layer == "tap":
            if_a = ["--ifconfig", a, "255.255.255.0"]
            if_b = ["--ifconfig", b, "255.255.255.0"]
        else:
            if_a = ["--ifconfig", a, b]
            if_b = ["--ifconfig", b, a]
        self.spawn(topo, topo.ns_b, [*common, "--remote", UNDERLAY_A, *if_b, *crypto_b], "b")
        self.spawn(topo, topo.ns_a, [*common, "--remote", UNDERLAY_B, *if_a, *crypto_a], "a")
        self.target = b
        self.wait_ready(topo, timeout=30)


class OpenVPNServerPeer(Peer):
    """A real ``openvpn --server`` (topology subnet, AES-256-GCM) in B and a client in A:
    openvpn's own client, or tunconnector's OpenVPN TLS client with the same .ovpn."""

    client: str = "openvpn"  # | "tunconnector"

    def start(self, topo: Topology, index: int, workdir: Path) -> None:
        self.workdir = workdir
        pki = make_certs(workdir)
        net = f"10.82.{index}.0"
        tuning = [] if os.environ.get("BENCH_OPENVPN_DEFAULTS") else OPENVPN_TUNING
        self.spawn(topo, topo.ns_b, [
            "openvpn", "--dev", topo.name("ovs"), "--dev-type", "tun", "--proto", "udp",
            "--port", "1194", "--server", net, "255.255.255.0", "--topology", "subnet",
            "--dh", "none", "--ca", str(pki / "ca.crt"), "--cert", str(pki / "server.crt"),
            "--key", str(pki / "server.key"), "--data-ciphers", "AES-256-GCM",
            "--keepalive", "10", "60", "--verb", "3", *tuning], "server")
        time.sleep(1.0)  # openvpn has no readiness signal; the client retries anyway
        ovpn = workdir / f"{self.name}.ovpn"
        ovpn.write_text(
            f"client\ndev tun\nproto udp\nremote {UNDERLAY_B} 1194\nnobind\n"
            f"ca {pki / 'ca.crt'}\ncert {pki / 'client.crt'}\nkey {pki / 'client.key'}\n"
            "remote-cert-tls server\ndata-ciphers AES-256-GCM\nverb 3\n")
        dev = topo.name("ovc")
        if self.client == "tunconnector":
            self.spawn(topo, topo.ns_a, [*TUNCONNECTOR, "openvpn", "-c", str(ovpn),
                                         "--device", dev, "--log-level", "info"], "client")
        else:
            self.spawn(topo, topo.ns_a, ["openvpn", "--config", str(ovpn), "--dev", dev,
                                         "--dev-type", "tun",
                                         *tuning], "client")
        self.target = f"10.82.{index}.1"
        self.wait_ready(topo, timeout=40)


#: OpenVPN static-key settings the static rows use: (row suffix, cipher, auth)
STATIC_KEY_MODES = (("none-sha1", "none", "SHA1"), ("aes256-sha256", "AES-256-CBC", "SHA256"))


def write_openvpn_key(path: Path) -> Path:
    """An OpenVPN static key file (what ``tunconnector genkey --openvpn`` writes)."""
    if not path.exists():
        sh([*TUNCONNECTOR, "genkey", "--openvpn", str(path)], timeout=30)
    return path


class OpenVPNStaticPeer(Peer):
    """Point-to-point OpenVPN static key (``--secret``) over UDP, TUN, key directions 0/1:
    openvpn at both ends, tunconnector (``--framing openvpn``) at both ends, or ``mixed``:
    tunconnector in B (the receiver) against openvpn in A (the sender)."""

    cipher: str = "none"
    auth: str = "SHA1"
    impl: str = "openvpn"  # | "tunconnector" | "mixed"

    def start(self, topo: Topology, index: int, workdir: Path) -> None:
        self.workdir = workdir
        a, b = subnet(index)
        key = write_openvpn_key(workdir / "static.key")
        port = "1195" if self.impl == "openvpn" else str(56500 + index)
        extra = ["--framing", "openvpn", "--openvpn-secret", str(key), "--openvpn-cipher",
                 self.cipher, "--openvpn-auth", self.auth, "--log-level", "info"]
        common = ["openvpn", "--dev", topo.name("os"), "--dev-type", "tun", "--proto", "udp",
                  "--lport", port, "--rport", port, "--verb", "3", "--ping", "10",
                  "--cipher", self.cipher, "--auth", self.auth,
                  *([] if os.environ.get("BENCH_OPENVPN_DEFAULTS") else OPENVPN_TUNING)]
        if self.impl in ("tunconnector", "mixed"):
            self.spawn(topo, topo.ns_b, [*TUNCONNECTOR, "-m", "server", "-p", topo.name("ts"),
                                         "-s", f"{b}/24", "-i", port, "--key-direction", "0",
                                         *extra], "server")
        else:
            self.spawn(topo, topo.ns_b, [*common, "--secret", str(key), "0", "--remote",
                                         UNDERLAY_A, "--ifconfig", b, a], "b")
        if self.impl == "tunconnector":
            self.spawn(topo, topo.ns_a, [*TUNCONNECTOR, "-m", "client", "-n", topo.name("tc"),
                                         "-c", f"{a}/24", "-r", UNDERLAY_B, "-o", port,
                                         "--key-direction", "1", *extra], "client")
        else:
            self.spawn(topo, topo.ns_a, [*common, "--secret", str(key), "1", "--remote",
                                         UNDERLAY_B, "--ifconfig", a, b], "a")
        self.target = b
        self.wait_ready(topo, timeout=30)


def static_key_peers() -> list[Peer]:
    out: list[Peer] = []
    for suffix, cipher, auth in STATIC_KEY_MODES:
        label = f"static key, cipher {cipher}, auth {auth}"
        for impl in ("openvpn", "tunconnector", "mixed"):
            short = {"openvpn": "ovpn", "tunconnector": "tc", "mixed": "mix"}[impl]
            name = f"{short}-static-{suffix}"
            who = {"openvpn": "OpenVPN 2.6", "tunconnector": "tunconnector framing openvpn",
                   "mixed": "tunconnector server (B) against an OpenVPN 2.6 client (A)"}[impl]
            p = OpenVPNStaticPeer(
                name, impl, encrypted=cipher != "none",
                baseline=None if impl == "openvpn" else f"ovpn-static-{suffix}",
                description=f"{who} UDP tun, {label}")
            p.cipher, p.auth, p.impl = cipher, auth, impl
            out.append(p)
    return out


class SocatPeer(Peer):
    """socat's TUN address over UDP: one frame per datagram, one read per frame."""

    def start(self, topo: Topology, index: int, workdir: Path) -> None:
        self.workdir = workdir
        a, b = subnet(index)
        dev = topo.name("so")
        port = "5555"
        for ns, me, peer, addr, tag in ((topo.ns_b, UNDERLAY_B, UNDERLAY_A, b, "b"),
                                         (topo.ns_a, UNDERLAY_A, UNDERLAY_B, a, "a")):
            self.spawn(topo, ns, [
                "socat", "-b", "65536", f"UDP-DATAGRAM:{peer}:{port},bind={me}:{port}",
                f"TUN:{addr}/24,tun-name={dev},tun-type=tun,iff-up,iff-no-pi"], tag)
        self.target = b
        self.wait_ready(topo)


def write_key(path: Path) -> Path:
    """A pre-shared key file in the ``tunconnector genkey`` format (base64 of 32 bytes)."""
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    return path


class TunconnectorPeer(Peer):
    """The tunconnector CLI in each namespace (server in B, client in A)."""

    proto: str = "udp"
    offload: str = "auto"

    def start(self, topo: Topology, index: int, workdir: Path) -> None:
        self.workdir = workdir
        exe = TUNCONNECTOR[0]
        if not shutil.which(exe) and not Path(exe).exists():
            raise PeerError(f"{exe} not found (BENCH_TUNCONNECTOR)")
        a, b = subnet(index)
        port = str(56000 + index)
        extra = ["--proto", self.proto, "--offload", self.offload, "--log-level", "info"]
        if self.layer == "tap":
            extra += ["--dev-type", "tap"]
        if self.encrypted:  # the cipher OpenVPN's encrypted row uses too
            extra += ["--key", str(write_key(workdir / "tunnel.key")), "--cipher", "aes-256-gcm"]
        dev_b, dev_a = topo.name("tcs"), topo.name("tcc")
        self.spawn(topo, topo.ns_b, [*TUNCONNECTOR, "-m", "server", "-p", dev_b, "-s",
                                     f"{b}/24", "-i", port, *extra], "server")
        self.spawn(topo, topo.ns_a, [*TUNCONNECTOR, "-m", "client", "-n", dev_a, "-c",
                                     f"{a}/24", "-r", UNDERLAY_B, "-o", port, *extra], "client")
        self.target = b
        self.wait_ready(topo, timeout=30)


class HubBenchPeer(Peer):
    """A hub (``tunconnector run``, AES-256-GCM, TUN) in ``ns_b`` and ``active`` real client
    daemons with TUN devices, each in a namespace of its own (each routes the hub's subnet
    through its own device) joined to ``ns_b`` by a veth pair. :meth:`measure` runs one
    iperf3 TCP stream per client at once: the aggregate, each client's share and Jain's
    fairness index; RTT is the first client's."""

    active: int = 1

    def __init__(self, name: str, active: int) -> None:
        super().__init__(name, "tunconnector", encrypted=True,
                         description=f"tunconnector hub, {active} active TUN client"
                                     f"{'s' if active > 1 else ''}, AES-256-GCM over UDP")
        self.active = active
        self.client_ns: list[str] = []
        self.iperfs: list[subprocess.Popen[bytes]] = []

    def _spawn_env(self, ns: str, args: Sequence[str], tag: str) -> None:
        """Like :meth:`spawn`, with a control directory per daemon (all are named alike)."""
        assert self.workdir is not None
        log = self.workdir / f"{self.name}-{tag}.log"
        self.logs.append(log)
        env = dict(os.environ, TUNCONNECTOR_CONTROL_DIR=str(self.workdir / f"ctl-{tag}"))
        with log.open("wb") as fh:
            p = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=fh,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True, env=env)
        self.procs.append(p)

    def start(self, topo: Topology, index: int, workdir: Path) -> None:
        from tunconnector.keys import generate_keypair, write_key_file

        workdir = workdir / f"{self.name}-{index}"  # keys are created, never overwritten
        workdir.mkdir()
        self.workdir = workdir
        self.target = f"10.82.{index % 250}.1"
        port = 56000 + index
        hub_priv, hub_pub = generate_keypair()
        write_key_file(workdir / "hub.key", hub_priv)
        clients = [generate_keypair() for _ in range(self.active)]
        hub = ["[[tunnel]]", 'name = "hub"', 'mode = "server"',
               f'device = "{topo.name("tch")}"', f'address = "{self.target}/24"',
               f"port = {port}", f'private_key_file = "{workdir / "hub.key"}"',
               f'pool = "10.82.{index % 250}.0/24"', 'cipher = "aes-256-gcm"',
               f"max_peers = {self.active}"]
        for i, (_, pub) in enumerate(clients):
            hub += ["[[tunnel.peer]]", f'name = "c{i}"', f'public_key = "{pub}"']
        (workdir / f"{self.name}-hub.toml").write_text("\n".join(hub) + "\n")
        self._spawn_env(topo.ns_b, [*TUNCONNECTOR, "run", "-c",
                                    str(workdir / f"{self.name}-hub.toml")], "hub")
        try:
            for i, (priv, _) in enumerate(clients):
                ns = f"{topo.ns_a}h{i}"
                sh(["ip", "netns", "add", ns])
                self.client_ns.append(ns)
                vh, vc = topo.name(f"thh{i}"), topo.name(f"thc{i}")
                sh(["ip", "link", "add", vh, "type", "veth", "peer", "name", vc])
                sh(["ip", "link", "set", vh, "netns", topo.ns_b])
                sh(["ip", "link", "set", vc, "netns", ns])
                sh(["ip", "-n", topo.ns_b, "addr", "add", f"172.30.{i}.1/24", "dev", vh])
                sh(["ip", "-n", topo.ns_b, "link", "set", vh, "up"])
                sh(["ip", "-n", ns, "addr", "add", f"172.30.{i}.2/24", "dev", vc])
                sh(["ip", "-n", ns, "link", "set", vc, "up"])
                sh(["ip", "-n", ns, "link", "set", "lo", "up"])
                key = workdir / f"{self.name}-c{i}.key"
                write_key_file(key, priv)
                cfg = workdir / f"{self.name}-c{i}.toml"
                cfg.write_text("\n".join([
                    "[[tunnel]]", 'name = "c"', 'mode = "client"', f'device = "hc{i}"',
                    f'remote = "172.30.{i}.1"', f"remote_port = {port}",
                    'cipher = "aes-256-gcm"', f'private_key_file = "{key}"',
                    f'peer_public_key = "{hub_pub}"']) + "\n")
                self._spawn_env(ns, [*TUNCONNECTOR, "run", "-c", str(cfg)], f"c{i}")
            deadline = time.monotonic() + 60  # N + 1 interpreters start at once
            for ns in self.client_ns:
                while True:
                    for p in self.procs:
                        if p.poll() is not None:
                            raise PeerError(f"{self.name}: a daemon exited with "
                                            f"{p.returncode}\n{self.log_tail()}")
                    r = sh(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "0.3", "-n",
                            self.target], check=False, timeout=5)
                    if r.returncode == 0:
                        break
                    if time.monotonic() > deadline:
                        raise PeerError(f"{self.name}: {ns} does not reach the hub\n"
                                        f"{self.log_tail()}")
        except BaseException:
            self.stop(topo)
            raise

    def measure(self, topo: Topology, seconds: float) -> dict[str, Any]:
        """One iperf3 TCP stream per client, all at once, to the hub's address."""
        ports = [5400 + i for i in range(self.active)]
        servers = [subprocess.Popen(["ip", "netns", "exec", topo.ns_b, "iperf3", "-s", "-1",
                                     "-p", str(p)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
                   for p in ports]
        try:
            for p in ports:
                deadline = time.monotonic() + 5
                while not sh(["ss", "-N", topo.ns_b, "-Hltn", f"sport = :{p}"],
                             check=False).stdout.strip():
                    if time.monotonic() > deadline:
                        raise RuntimeError("iperf3 server did not start")
                    time.sleep(0.05)  # a listen socket in another netns: nothing to await
            c0 = cpu_seconds(self.pids)
            clients = [subprocess.Popen(["ip", "netns", "exec", ns, "iperf3", "-c",
                                         self.target, "-p", str(p), "-J", "-t", str(seconds),
                                         "--connect-timeout", "3000"],
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True)
                       for ns, p in zip(self.client_ns, ports, strict=True)]
            each = []
            for c in clients:
                out, _ = c.communicate(timeout=seconds + 30)
                data = json.loads(out)
                if "error" in data:
                    raise RuntimeError(f"iperf3: {data['error']}")
                each.append(float(data["end"]["sum_received"]["bits_per_second"]) / 1e9)
            cpu = cpu_seconds(self.pids) - c0
        finally:
            for s in servers:
                if s.poll() is None:
                    s.kill()
                s.wait(timeout=5)
        rtt = ping_rtt_ms(topo, self.target, 100, ns=self.client_ns[0])
        total = sum(each)
        jain = total * total / (len(each) * sum(x * x for x in each)) if total else 0.0
        return {"gbps": total, "cpu_s": cpu,
                "gbit_per_cpu_s": total * seconds / cpu if cpu else 0.0,
                "rtt_ms": rtt, "jain": jain, "each_gbps": [round(x, 3) for x in each]}

    def stop(self, topo: Topology) -> None:
        super().stop(topo)
        for ns in self.client_ns:
            for pid in sh(["ip", "netns", "pids", ns], check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            sh(["ip", "netns", "del", ns], check=False)  # its veth end goes with it
        self.client_ns.clear()


def hub_peers() -> list[Peer]:
    """Hubs with 1 and 4 active clients (``tc-hub1-udp-aead``, ``tc-hub4-udp-aead``)."""
    return [HubBenchPeer("tc-hub1-udp-aead", 1), HubBenchPeer("tc-hub4-udp-aead", 4)]


def tunconnector_peer(proto: str, encrypted: bool, offload: str, layer: str = "tun") -> Peer:
    name = f"tc-{layer}-{proto}-{'aead' if encrypted else 'plain'}" + (
        "" if offload == "auto" else "-nooff")
    if encrypted:
        baseline = "ovpn-tap" if layer == "tap" else "ovpn-gcm"
    else:
        baseline = "ovpn-tap" if layer == "tap" else "ovpn-plain"
    p = TunconnectorPeer(name, "tunconnector", layer=layer, encrypted=encrypted,
                         baseline=baseline,
                         description=f"tunconnector {layer.upper()} over {proto.upper()}, "
                                     f"{'encrypted' if encrypted else 'plaintext'}, "
                                     f"offload {offload}")
    p.proto = proto
    p.offload = offload
    return p


def all_peers() -> list[Peer]:
    peers: list[Peer] = [
        VethPeer("veth", "baseline", layer="none", description="veth, no tunnel"),
        VxlanPeer("vxlan", "baseline", layer="tap", description="kernel vxlan"),
        OpenVPNPeer("ovpn-plain", "openvpn", description="OpenVPN 2.6 UDP tun, no crypto"),
        OpenVPNPeer("ovpn-gcm", "openvpn", encrypted=True,
                    description="OpenVPN 2.6 UDP tun, AES-256-GCM (TLS)"),
        OpenVPNPeer("ovpn-tap", "openvpn", layer="tap",
                    description="OpenVPN 2.6 UDP tap, no crypto"),
        SocatPeer("socat-tun", "socat", baseline="ovpn-plain", description="socat TUN over UDP"),
        OpenVPNServerPeer("ovpn-server-ovpn-client", "openvpn",
                          description="openvpn --server, openvpn client, AES-256-GCM"),
    ]
    tls_client = OpenVPNServerPeer(
        "ovpn-server-tc-client", "tunconnector", baseline="ovpn-server-ovpn-client",
        description="openvpn --server, tunconnector OpenVPN TLS client, AES-256-GCM")
    tls_client.client = "tunconnector"
    peers.append(tls_client)
    for proto in ("udp", "tcp"):
        for enc in (False, True):
            for off in ("auto", "off"):
                peers.append(tunconnector_peer(proto, enc, off))
    peers.append(tunconnector_peer("udp", False, "auto", "tap"))
    peers.append(tunconnector_peer("udp", False, "off", "tap"))
    peers.append(tunconnector_peer("udp", True, "auto", "tap"))
    peers.append(tunconnector_peer("tcp", False, "auto", "tap"))
    peers.extend(static_key_peers())
    return peers
