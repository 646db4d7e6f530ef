"""A lab for OpenVPN *server* interop: real openvpn 2.6 clients against a server that is
either the real ``openvpn`` or ``tunconnector openvpn``, both run on the same server.conf.

Topology (every namespace name carries a random tag)::

    C1 192.168.120.2 ---- 192.168.120.1 \\
    C2 192.168.121.2 ---- 192.168.121.1  S  (the server, UDP 1194, tun 10.8.0.1/24)
    C3 192.168.122.2 ---- 192.168.122.1 /
    R4 192.168.123.2 ---- 192.168.123.1   (clients that must be refused)
    R5 192.168.124.2 ---- 192.168.124.1
    L  192.168.50.2  ---- 192.168.50.1 C1 (a LAN behind C1: ``iroute``; C1 forwards)

Variants (``write_server_conf`` / ``start_client`` options): ``proto tcp-server`` /
``tcp-client``; ``dev tap`` + ``server-bridge`` with an ``up`` script addressing the tap;
extra server lines (``server-ipv6``, ``reneg-sec`` ...); a lab-local ``crl-verify`` file
that a test may rewrite (:meth:`ServerPki.crl_pem` issues a new list).

Each client dials the server's address on its own veth. Certificates (one CN per client,
c4 revoked in crl.pem) are made at test time; ta.key comes from ``openvpn --genkey``.

The one place that knows how each server implementation is started is
:func:`start_server`; the one place that knows what a refusal looks like in a server log
is :func:`refusal_lines`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netns import Host, sh, tunconnector_cmd, wait_for  # noqa: E402
from test_openvpn_tls_interop import Pki, _cert, _key, _pem_key  # noqa: E402

IMPLS = ["openvpn", "tunconnector"]
PORT = 1194
SERVER_TUN_IP = "10.8.0.1"
LAN_NET = "192.168.50.0"
LAN_HOST = "192.168.50.2"  # L's address behind C1
#: client name -> password (check.sh accepts exactly these pairs); c5 is given "bad"
USERS = {"c1": "good", "c2": "good", "c3": "good", "c4": "good", "c5": "good"}


# ------------------------------------------------------------------ PKI
@dataclass
class ServerPki(Pki):
    """:class:`Pki` plus what it takes to issue another CRL (the CA and its key, each
    certificate's serial)."""

    ca: x509.Certificate | None = None
    ca_key: ec.EllipticCurvePrivateKey | None = None
    serials: dict[str, int] = field(default_factory=dict)

    def crl_pem(self, revoked: list[str]) -> bytes:
        """A CRL of this CA revoking the certificates named (CNs)."""
        assert self.ca is not None and self.ca_key is not None
        now = datetime.datetime.now(datetime.UTC)
        b = (x509.CertificateRevocationListBuilder().issuer_name(self.ca.subject)
             .last_update(now - datetime.timedelta(hours=1))
             .next_update(now + datetime.timedelta(days=2)))
        for name in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(self.serials[name])
                .revocation_date(now - datetime.timedelta(minutes=30)).build())
        return b.sign(self.ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def make_server_pki(d: Path) -> ServerPki:
    """CA, server (serverAuth), clients c1..c5 (clientAuth), crl.pem revoking c4, ta.key."""
    p = ServerPki(d)

    def write(name: str, data: bytes) -> None:
        path = d / name
        path.write_bytes(data)
        p.files[name] = path

    ca_key = _key()
    ca = _cert("Test CA", ca_key, None, ca_key, ca=True)
    write("ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    p.ca, p.ca_key = ca, ca_key
    certs: dict[str, x509.Certificate] = {}
    for name in ("server", "c1", "c2", "c3", "c4", "c5"):
        eku = ExtendedKeyUsageOID.SERVER_AUTH if name == "server" else \
            ExtendedKeyUsageOID.CLIENT_AUTH
        k = _key()
        c = certs[name] = _cert(name, k, ca, ca_key, eku=[eku])
        write(f"{name}.crt", c.public_bytes(serialization.Encoding.PEM))
        write(f"{name}.key", _pem_key(k))
        p.serials[name] = c.serial_number
    write("crl.pem", p.crl_pem(["c4"]))
    res = subprocess.run(["openvpn", "--genkey", "secret", str(d / "ta.key")],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    p.files["ta.key"] = d / "ta.key"
    return p


# ------------------------------------------------------------------ the server
class ServerHandle:
    """A server process in namespace ``ns``, run from ``workdir`` (where server.conf,
    ipp.txt, status.log and ccd/ live), its stdout+stderr in ``server-<impl>.log``."""

    def __init__(self, impl: str, workdir: Path, ns: str, argv: list[str],
                 env: dict[str, str] | None = None, proto: str = "udp") -> None:
        self.impl, self.workdir, self.host = impl, workdir, Host(ns)
        self.proto = proto
        self.log_path = workdir / f"server-{impl}.log"
        self.argv = argv
        with open(self.log_path, "ab") as log:
            # a marker per start: log_text(since_start=True) reads this run only
            log.write(f"----- start {time.time():.3f}\n".encode())
            log.flush()
            self._offset = self.log_path.stat().st_size
            self.proc = self.host.popen(*argv, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=str(workdir), env=env)

    def log_text(self, since_start: bool = False) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return (data[self._offset:] if since_start else data).decode(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        """Impl-independent: UDP (or TCP: listening) 1194 bound and the tun (tap: the
        up script's) device has 10.8.0.1."""
        flags = "-Hltn" if self.proto == "tcp" else "-Hlun"
        sock = self.host.run("ss", flags, f"sport = :{PORT}", check=False, timeout=10)
        addr = self.host.run("ip", "-4", "-o", "addr", "show", check=False, timeout=10)
        return bool(sock.stdout.strip()) and f" {SERVER_TUN_IP}/" in addr.stdout

    def wait_ready(self, timeout: float = 30.0) -> None:
        ok = wait_for(lambda: not self.alive() or self.ready(), timeout, 0.1)
        assert ok and self.alive(), (
            f"{self.impl} server not ready (rc={self.proc.poll()}):\n{self.log_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def start_server(impl: str, workdir: Path, ns: str, proto: str = "udp") -> ServerHandle:
    """Start the server ``impl`` on ``workdir/server.conf`` in namespace ``ns`` (cwd
    ``workdir``, so the config's relative file names resolve there) and wait until it
    listens on ``proto`` port 1194 with 10.8.0.1 on its tun device."""
    if impl == "openvpn":
        argv, env = ["openvpn", "--config", "server.conf"], None
    elif impl == "tunconnector":
        argv = tunconnector_cmd("openvpn", "--config", "server.conf")
        env = dict(os.environ, TUNCONNECTOR_CONTROL_DIR=str(workdir / "ctl-server"))
    else:
        raise ValueError(impl)
    h = ServerHandle(impl, workdir, ns, argv, env, proto)
    h.wait_ready()
    return h


# ------------------------------------------------------------------ what a refusal looks like
#: kind -> regexes of a server log line reporting that refusal. openvpn 2.6.14 prints
#:   revoked:  "<ip>:<port> VERIFY ERROR: depth=0, error=certificate revoked: CN=c4, serial=…"
#:   password: "<ip>:<port> TLS Auth Error: Auth Username/Password verification failed for
#:              peer"  (the CN is not on that line; the peer's address is), then
#:             "<ip>:<port> SENT CONTROL [c5]: 'AUTH_FAILED' (status=1)"
REFUSALS: dict[str, list[str]] = {
    "revoked": [r"certificate revoked", r"\brevoked\b"],
    "password": [r"Auth Username/Password verification failed", r"AUTH_FAILED",
                 r"auth-user-pass-verify refused", r"auth(entication)? failed"],
}


def refusal_lines(log: str, kind: str, cn: str, peer_ip: str) -> list[str]:
    """Lines of ``log`` that report the refusal ``kind`` and name the client (its CN or
    its real address)."""
    pats = [re.compile(p, re.IGNORECASE) for p in REFUSALS[kind]]
    who = re.compile(rf"(\bCN={re.escape(cn)}\b|\b{re.escape(cn)}\b|{re.escape(peer_ip)}\b)")
    return [ln for ln in log.splitlines()
            if any(p.search(ln) for p in pats) and who.search(ln)]


#: impl -> a regex (``{cn}`` filled in) of the server log line that reports a client's
#: connection (once per connection, not per renegotiation). openvpn 2.6.14 prints
#:   "c1/192.168.120.2:41234 MULTI: primary virtual IP for c1/192.168.120.2:41234: 10.8.0.2"
CONNECTED = {
    "openvpn": r"MULTI: primary virtual IP for {cn}/",
    "tunconnector": r"openvpn server \S+: client {cn} \(\S+\) connected, address ",
}


def connected_lines(impl: str, log: str, cn: str) -> list[str]:
    """Lines of the server ``log`` reporting that client ``cn`` connected."""
    pat = re.compile(CONNECTED[impl].format(cn=re.escape(cn)))
    return [ln for ln in log.splitlines() if pat.search(ln)]


# ------------------------------------------------------------------ the lab
@dataclass
class Client:
    name: str
    host: Host
    server_ip: str  # the server's address on this client's veth
    my_ip: str
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    dev: str = "tun0"  # the client's device (tap0 for dev tap)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace") if self.log_path else ""
        except OSError:
            return ""

    def tun_addr(self) -> str | None:
        """The IPv4 address on tun0/tap0 (none: no device or no address yet)."""
        res = self.host.run("ip", "-4", "-o", "addr", "show", "dev", self.dev, check=False,
                            timeout=10)
        m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", res.stdout)
        return m.group(1) if m else None

    def tun_addr6(self) -> str | None:
        """The global IPv6 address on tun0/tap0 (none: no device or no address yet)."""
        res = self.host.run("ip", "-6", "-o", "addr", "show", "dev", self.dev, "scope",
                            "global", check=False, timeout=10)
        m = re.search(r"inet6 ([0-9a-f:]+)/", res.stdout)
        return m.group(1) if m else None

    def log_count(self, text: str) -> int:
        """How many lines of the client's log contain ``text``."""
        return sum(1 for ln in self.log_text().splitlines() if text in ln)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@dataclass
class ServerLab:
    impl: str
    s: Host
    clients: dict[str, Client]
    lan: Host  # L, behind C1
    dir: Path
    pki: Pki
    server: ServerHandle | None = None
    extra_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    proto: str = "udp"  # the server's transport, as write_server_conf last wrote it

    def write_server_conf(self, ccd: dict[str, str] | None = None, extra: str = "",
                          *, proto: str = "udp", bridge: str | None = None,
                          crl: Path | None = None) -> Path:
        """server.conf, check.sh, users.txt and ccd/ in ``self.dir`` (relative names).

        ``proto``: ``udp`` or ``tcp`` (``proto tcp-server``). ``bridge``: ``dev tap`` with
        ``server-bridge BRIDGE`` instead of ``server``/``topology``, no LAN ``route``, and
        an ``up ./tapup.sh`` that addresses the tap device with 10.8.0.1/24 (openvpn
        leaves a bridged device to the up script). ``crl``: the crl-verify file
        (default: the PKI's, shared by the module's tests: never rewrite that one)."""
        p = self.pki.files
        self.proto = proto
        (self.dir / "ccd").mkdir(exist_ok=True)
        for cn, body in (ccd or {}).items():
            (self.dir / "ccd" / cn).write_text(body)
        users = self.dir / "users.txt"
        users.write_text("".join(f"{u}:{pw}\n" for u, pw in USERS.items()))
        check = self.dir / "check.sh"
        check.write_text(
            "#!/bin/sh\n# via-file: $1 holds the username then the password\n"
            'user=$(sed -n 1p "$1")\npass=$(sed -n 2p "$1")\n'
            f'grep -qxF "$user:$pass" {users}\n')
        check.chmod(0o755)
        if bridge is None:
            layout = ("dev tun\ntopology subnet\nserver 10.8.0.0 255.255.255.0\n"
                      f"route {LAN_NET} 255.255.255.0\n")
        else:
            up = self.dir / "tapup.sh"
            up.write_text('#!/bin/sh\nip addr add 10.8.0.1/24 dev "$1"\nip link set "$1" up\n')
            up.chmod(0o755)
            layout = f"dev tap\nserver-bridge {bridge}\nup ./tapup.sh\n"
        conf = self.dir / "server.conf"
        conf.write_text(
            f"port {PORT}\nproto {'tcp-server' if proto == 'tcp' else 'udp'}\n{layout}"
            f"ca {p['ca.crt']}\ncert {p['server.crt']}\nkey {p['server.key']}\n"
            "dh none\n"
            f"tls-crypt {p['ta.key']}\n"
            "data-ciphers AES-256-GCM:AES-128-GCM:CHACHA20-POLY1305\n"
            "keepalive 2 10\n"
            "client-to-client\n"
            "ifconfig-pool-persist ipp.txt 1\n"
            "client-config-dir ccd\n"
            f"crl-verify {crl or p['crl.pem']}\n"
            "script-security 2\n"
            "auth-user-pass-verify check.sh via-file\n"
            "status status.log 1\n"
            # as openvpn's sample server.conf: on SIGTERM tell the clients (RESTART) so
            # they reconnect at once instead of after ping-restart (10 s of silence);
            # UDP only (openvpn refuses it with TCP: the connection's end says it)
            + ("explicit-exit-notify 1\n" if proto == "udp" else "") +
            "verb 3\n" + extra)
        return conf

    def start_server(self) -> ServerHandle:
        self.server = start_server(self.impl, self.dir, self.s.ns, self.proto)
        return self.server

    def server_log(self) -> str:
        return self.server.log_text() if self.server else ""

    def start_client(self, name: str, cert: str | None = None,
                     password: str | None = None, *, dev: str = "tun",
                     proto: str = "udp", extra: str = "") -> Client:
        """A real ``openvpn`` client in its namespace, user ``cert`` (default: ``name``);
        ``dev`` tun or tap, ``proto`` udp or tcp (``tcp-client``)."""
        c = self.clients[name]
        c.dev = f"{dev}0"
        cert = cert or name
        p = self.pki.files
        creds = self.dir / f"creds-{name}.txt"
        creds.write_text(f"{cert}\n{password or USERS[cert]}\n")
        creds.chmod(0o600)
        conf = self.dir / f"{name}.conf"
        conf.write_text(
            f"client\ndev {c.dev}\nproto {'tcp-client' if proto == 'tcp' else 'udp'}\n"
            f"remote {c.server_ip} {PORT}\nnobind\n"
            f"ca {p['ca.crt']}\ncert {p[cert + '.crt']}\nkey {p[cert + '.key']}\n"
            f"tls-crypt {p['ta.key']}\nauth-user-pass {creds}\n"
            "remote-cert-tls server\nverb 3\n"
            "connect-retry 1 1\nresolv-retry infinite\nserver-poll-timeout 4\n" + extra)
        c.log_path = self.dir / f"client-{name}.log"
        with open(c.log_path, "ab") as log:
            c.proc = c.host.popen("openvpn", "--config", str(conf), stdout=log,
                                  stderr=subprocess.STDOUT, cwd=str(self.dir))
        return c

    def wait_connected(self, name: str, timeout: float = 30.0) -> str:
        """Until the client has a tun0 address and pings the server's 10.8.0.1 (bounded)."""
        c = self.clients[name]
        ok = wait_for(lambda: c.tun_addr() is not None, timeout, 0.1)
        assert ok, self.why(name)
        assert c.host.wait_ping(SERVER_TUN_IP, timeout), self.why(name)
        addr = c.tun_addr()
        assert addr is not None, self.why(name)
        return addr

    def why(self, name: str) -> str:
        c = self.clients[name]
        return (f"--- client {name} (rc={c.proc.poll() if c.proc else None}):\n"
                f"{c.log_text()[-3000:]}\n--- server {self.impl}:\n{self.server_log()[-4000:]}")

    def close(self) -> None:
        for c in self.clients.values():
            c.stop()
        if self.server is not None:
            self.server.stop()


def _veth(a: Host, b: Host, name_a: str, name_b: str, addr_a: str, addr_b: str) -> None:
    sh("ip", "link", "add", name_a, "type", "veth", "peer", "name", name_b)
    sh("ip", "link", "set", name_a, "netns", a.ns)
    sh("ip", "link", "set", name_b, "netns", b.ns)
    a.run("ip", "addr", "add", f"{addr_a}/24", "dev", name_a)
    b.run("ip", "addr", "add", f"{addr_b}/24", "dev", name_b)
    a.run("ip", "link", "set", name_a, "up")
    b.run("ip", "link", "set", name_b, "up")


@contextlib.contextmanager
def server_lab(impl: str, pki: Pki, tmp: Path) -> Iterator[ServerLab]:
    """The namespaces and veths; nothing started. Everything in them is killed on exit."""
    tag = secrets.token_hex(3)
    s = Host(f"svs{tag}")
    names = ["c1", "c2", "c3", "c4", "c5"]
    hosts = {n: Host(f"sv{n}{tag}") for n in names}
    lan = Host(f"svl{tag}")
    made: list[str] = []
    lab: ServerLab | None = None
    try:
        for h in (s, *hosts.values(), lan):
            sh("ip", "netns", "add", h.ns)
            made.append(h.ns)
            h.run("ip", "link", "set", "lo", "up")
        clients: dict[str, Client] = {}
        for i, n in enumerate(names):
            net = f"192.168.{120 + i}"
            _veth(s, hosts[n], f"ss{i}{tag}", f"sc{i}{tag}", f"{net}.1", f"{net}.2")
            clients[n] = Client(n, hosts[n], f"{net}.1", f"{net}.2")
        c1 = hosts["c1"]
        _veth(c1, lan, f"sl0{tag}", f"sl1{tag}", "192.168.50.1", LAN_HOST)
        c1.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        lan.run("ip", "route", "add", "default", "via", "192.168.50.1")
        lab = ServerLab(impl, s, clients, lan, tmp, pki)
        yield lab
    finally:
        if lab is not None:
            lab.close()
        for ns in made:
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
