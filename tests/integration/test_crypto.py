"""Encrypted native tunnels in namespaces: integrity, confidentiality, auth failure, replay,
rekey under load."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, Env
from netns import Host, tunconnector_cmd, wait_for

from tunconnector.keys import generate_keypair, generate_psk
from tunconnector.proto.cookie import CookieChecker

pytestmark = [pytest.mark.privileged, pytest.mark.netns]

SERVER_IP = "10.91.0.1"
CLIENT_IP = "10.91.0.2"


def key_file(env: Env, name: str, text: str | None = None) -> str:
    path = env.workdir / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, ((text or generate_psk()) + "\n").encode())
    os.close(fd)
    return str(path)


def pair(env: Env, server_extra: dict[str, Any], client_extra: dict[str, Any],
         *, dev_type: str = "tun", proto: str = "udp", port: int = 55571,
         **common_extra: Any) -> tuple[Daemon, Daemon]:
    common = {"dev_type": dev_type, "proto": proto, "framing": "native",
              "keepalive": 1, "dead_after": 4, **common_extra}
    server = env.config_daemon(env.a, [{
        "name": "srv", "mode": "server", "device": "tce0", "port": port,
        "address": [f"{SERVER_IP}/24"], **common, **server_extra}], "server")
    client = env.config_daemon(env.b, [{
        "name": "cli", "mode": "client", "device": "tce0", "remote": env.lab.a_addrs[0],
        "remote_port": port, "address": [f"{CLIENT_IP}/24"], **common, **client_extra}],
        "client")
    return server, client


def psk_pair(env: Env, **kw: Any) -> tuple[Daemon, Daemon]:
    k = key_file(env, "tunnel.key")
    return pair(env, {"key_file": k}, {"key_file": k}, **kw)


COMBOS = [
    ("tun", "udp", "chacha20-poly1305", "psk"),
    ("tap", "udp", "aes-256-gcm", "psk"),
    ("tun", "tcp", "aes-256-gcm", "psk"),
    ("tap", "tcp", "chacha20-poly1305", "pubkey"),
    ("tun", "udp", "chacha20-poly1305", "pubkey+psk"),
]


@pytest.mark.parametrize("dev_type,proto,cipher,auth", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_encrypted_bulk_sha256(env: Env, dev_type: str, proto: str, cipher: str,
                               auth: str) -> None:
    if auth == "psk":
        server, client = psk_pair(env, dev_type=dev_type, proto=proto, cipher=cipher)
    else:
        s_priv, s_pub = generate_keypair()
        c_priv, c_pub = generate_keypair()
        sx: dict[str, Any] = {"private_key_file": key_file(env, "s.key", s_priv),
                              "peer_public_key": c_pub}
        cx: dict[str, Any] = {"private_key_file": key_file(env, "c.key", c_priv),
                              "peer_public_key": s_pub}
        if auth == "pubkey+psk":
            sx["key_file"] = cx["key_file"] = key_file(env, "extra.psk")
        server, client = pair(env, sx, cx, dev_type=dev_type, proto=proto, cipher=cipher)
    client.wait_state("up")
    server.wait_state("up")
    assert env.b.ping(SERVER_IP, count=5, interval=0.05) == (5, 5)
    want, have, secs = env.transfer(env.b, env.a, SERVER_IP, port=5301)
    assert want == have
    st = server.tunnel()
    assert st is not None and st["encrypted"]
    crypto = st["crypto"]
    assert crypto["established"] and crypto["cipher"] == cipher
    assert crypto["mode"] == ("psk" if auth == "psk" else "public-key")
    for k in ("decrypt_failed", "replay", "bad_mac"):
        assert k not in st["drops"], st["drops"]
    status_text = json.dumps(server.status()) + json.dumps(client.status())
    for path in env.workdir.glob("*.key"):
        assert path.read_text().strip() not in status_text
    print(f"{dev_type}/{proto}/{cipher}/{auth}: 32 MiB in {secs:.2f}s "
          f"({32 * 8 * 1.048576 / secs:.0f} Mbit/s)")


class Capture:
    """tcpdump writing a pcap in a namespace; started and stopped deterministically."""

    def __init__(self, host: Host, iface: str, path: Path, bpf: str = "",
                 count: int | None = None) -> None:
        argv = ["tcpdump", "-n", "-U", "-s", "0", "-i", iface, "-w", str(path)]
        if count is not None:
            argv += ["-c", str(count)]
        self.path = path
        self.proc = host.popen(*argv, *bpf.split(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline().decode()  # "listening on ..." once ready
        assert "listening" in line, line

    def stop(self) -> bytes:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)
        return self.path.read_bytes()

    def wait(self, timeout: float) -> bytes:
        self.proc.wait(timeout)
        return self.path.read_bytes()


def udp_payloads(pcap: bytes) -> list[bytes]:
    """UDP payloads of an Ethernet pcap (IPv4 only), in capture order."""
    magic = struct.unpack_from("<I", pcap, 0)[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    pos, out = 24, []
    while pos + 16 <= len(pcap):
        _, _, incl, _ = struct.unpack_from(endian + "IIII", pcap, pos)
        pkt = pcap[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        if len(pkt) < 14 + 20 + 8 or pkt[12:14] != b"\x08\x00" or pkt[23] != 17:
            continue
        ihl = (pkt[14] & 0x0F) * 4
        out.append(pkt[14 + ihl + 8:])
    return out


needs_tcpdump = pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump")


@needs_tcpdump
@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_marker_never_on_the_underlay(env: Env, proto: str) -> None:
    server, client = psk_pair(env, proto=proto)
    client.wait_state("up")
    marker = os.urandom(16).hex().encode() * 32  # 1 KiB, recognisable
    assert len(marker) == 1024
    under = Capture(env.a, env.lab.links[0][0], env.workdir / "under.pcap")
    inner = Capture(env.a, "tce0", env.workdir / "inner.pcap")
    rx = env.a.popen("socat", "-u", f"UDP4-RECV:5400,bind={SERVER_IP}", "STDOUT",
                     stdout=subprocess.PIPE)
    try:
        script = (
            "import socket,sys,time\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "m=bytes.fromhex(sys.argv[1])\n"
            "for _ in range(20):\n"
            f"    s.sendto(m,('{SERVER_IP}',5400)); time.sleep(0.01)\n"
        )
        env.b.run("python3", "-c", script, marker.hex())
        assert wait_for(lambda: marker in inner.path.read_bytes(), timeout=5)
    finally:
        under_bytes = under.stop()
        inner_bytes = inner.stop()
        rx.kill()
        rx.wait(5)
    assert marker in inner_bytes  # the frames did cross the tunnel in clear inside
    assert len(under_bytes) > 20 * 1024  # and the underlay carried them ...
    assert marker not in under_bytes  # ... never in clear
    assert marker[:64] not in under_bytes


def test_wrong_key_no_traffic_clear_auth_failure(env: Env) -> None:
    server, client = pair(env, {"key_file": key_file(env, "a.key")},
                          {"key_file": key_file(env, "b.key")})
    # nothing gets through (the tunnel never comes up: whether ping could even send
    # depends on the client's routes then)
    assert env.b.ping(SERVER_IP, count=4, interval=0.5, timeout=20)[1] == 0
    assert wait_for(lambda: "authentication failure" in server.log()
                    and "authentication failure" in client.log(), timeout=10), (
        server.log(), client.log())
    assert "different key" in server.log()
    # the client hears nothing back (an unauthenticated handshake gets no reply) and says
    # what that can mean
    assert "authentication failure (no_response)" in client.log(), client.log()
    assert "its key or cipher differs" in client.log(), client.log()
    s, c = server.tunnel(), client.tunnel()
    assert s is not None and c is not None
    assert s["state"] != "up" and c["state"] != "up"
    assert s["drops"].get("bad_mac", 0) >= 1
    assert server.proc is not None and server.proc.poll() is None  # no crash
    assert client.proc is not None and client.proc.poll() is None


def test_key_file_permissions_refused(env: Env) -> None:
    k = key_file(env, "open.key")
    os.chmod(k, 0o644)
    d = env.daemon(env.a, tunconnector_cmd("-m", "server", "-p", "tce1", "-s", "10.92.0.1",
                                           "--key", k), "open")
    assert d.proc is not None
    assert d.proc.wait(15) == 1
    log = d.log()
    assert "too open" in log and "chmod 600" in log
    assert env.a.run("ip", "link", "show", "tce1", check=False).returncode != 0


@needs_tcpdump
def test_replayed_datagrams_dropped_and_counted(env: Env) -> None:
    server, client = psk_pair(env)
    client.wait_state("up")
    port = 55571
    cap = Capture(env.a, env.lab.links[0][0], env.workdir / "replay.pcap",
                  bpf=f"udp and dst port {port} and src host {env.lab.b_addrs[0]}",
                  count=1000)
    env.b.run("ping", "-n", "-q", "-f", "-c", "1200", SERVER_IP, timeout=60)
    datagrams = udp_payloads(cap.wait(30))
    assert len(datagrams) == 1000
    before = server.tunnel()
    assert before is not None
    replays_before = before["drops"].get("replay", 0)
    script = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "data=open(sys.argv[1],'rb').read()\n"
        "i=0\n"
        "while i<len(data):\n"
        "    n=int.from_bytes(data[i:i+4],'big'); i+=4\n"
        f"    s.sendto(data[i:i+n],('{env.lab.a_addrs[0]}',{port})); i+=n\n"
    )
    blob = env.workdir / "replay.bin"
    blob.write_bytes(b"".join(len(d).to_bytes(4, "big") + d for d in datagrams))
    env.b.run("python3", "-c", script, str(blob))

    def replays() -> int:
        st = server.tunnel()
        return 0 if st is None else st["drops"].get("replay", 0) - replays_before

    assert wait_for(lambda: replays() >= 1000, timeout=10), server.tunnel()
    assert replays() == 1000
    after = server.tunnel()
    assert after is not None
    assert after["peer"] == before["peer"]  # replays do not move the peer
    assert "decrypt_failed" not in after["drops"]
    assert env.b.ping(SERVER_IP, count=5, interval=0.05) == (5, 5)  # live traffic fine


@pytest.mark.skipif(shutil.which("iperf3") is None, reason="needs iperf3")
def test_rekey_every_2s_under_iperf3(env: Env) -> None:
    server, client = psk_pair(env, rekey_after_time=2.0)
    client.wait_state("up")
    srv = env.a.popen("iperf3", "-s", "-1", "-B", SERVER_IP, "-p", "5402",
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: ":5402 " in env.a.run("ss", "-ltn").stdout, timeout=10)
        res = env.b.run("iperf3", "-c", SERVER_IP, "-p", "5402", "-t", "10", "-J",
                        check=False, timeout=60)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr
        report = json.loads(res.stdout)
        assert "error" not in report
        sent = report["end"]["sum_sent"]["bytes"]
        received = report["end"]["sum_received"]["bytes"]
        assert received >= 0.9 * sent > 0, (sent, received)
        # no rekey stalls the flow: every second of the run carried at least a fifth of
        # the run's median rate (five rekeys fall inside those ten seconds)
        rates = [iv["sum"]["bits_per_second"] for iv in report["intervals"]
                 if iv["sum"]["seconds"] >= 0.5]  # not a last sliver of an interval
        median = statistics.median(rates)
        assert len(rates) >= 10 and min(rates) >= median / 5 > 0, rates
    finally:
        srv.kill()
        srv.wait(5)
    s, c = server.tunnel(), client.tunnel()
    assert s is not None and c is not None
    assert c["crypto"]["rekeys"] >= 4, c["crypto"]
    for st in (s, c):
        assert "decrypt_failed" not in st["drops"], st["drops"]
        assert "unknown_session" not in st["drops"], st["drops"]
        assert "expired" not in st["drops"], st["drops"]
    mbit = received * 8 / 10 / 1e6
    print(f"iperf3 with rekey every 2 s: {mbit:.0f} Mbit/s, "
          f"{report['end']['sum_sent'].get('retransmits', 0)} retransmits, "
          f"{c['crypto']['rekeys']} rekeys")


@pytest.mark.parametrize("who", ["server", "client"])
def test_restart_recovers_session(env: Env, who: str) -> None:
    """A restarted end has forgotten its keys: the tunnel re-handshakes by itself
    (server restart: unanswered data -> new handshake after keepalive + 5 s)."""
    k = key_file(env, "tunnel.key")
    server, client = pair(env, {"key_file": k}, {"key_file": k})
    client.wait_state("up")
    assert env.b.ping(SERVER_IP, count=3, interval=0.05) == (3, 3)
    victim = server if who == "server" else client
    victim.kill9()
    victim.start()
    victim.wait_state("up", timeout=20)
    assert env.b.wait_ping(SERVER_IP, timeout=20)
    assert env.b.ping(SERVER_IP, count=3, interval=0.05) == (3, 3)


def test_both_mode_with_key_flag(env: Env) -> None:
    k = key_file(env, "both.key")

    def argv(sip: str, cip: str, remote: str) -> list[str]:
        return tunconnector_cmd("-m", "both", "-p", "tcs0", "-s", sip, "-i", "55581",
                                "-n", "tcc0", "-c", cip, "-r", remote, "-o", "55581",
                                "--keepalive", "1", "--dead-after", "4", "--key", k,
                                "--cipher", "aes-256-gcm")

    a = env.daemon(env.a, argv("10.93.0.1/24", "10.94.0.2/24", env.lab.b_addrs[0]), "both-a")
    b = env.daemon(env.b, argv("10.94.0.1/24", "10.93.0.2/24", env.lab.a_addrs[0]), "both-b")
    a.wait_state("up", "client")
    b.wait_state("up", "client")
    assert env.b.ping("10.93.0.1", count=3, interval=0.1) == (3, 3)
    assert env.a.ping("10.94.0.1", count=3, interval=0.1) == (3, 3)
    for d in (a, b):
        for t in d.status():
            assert t["crypto"]["cipher"] == "aes-256-gcm" and t["crypto"]["established"]


@pytest.mark.parametrize("explicit", ["chacha20-poly1305", "aes-256-gcm"])
def test_explicit_cipher_on_one_end_default_on_the_other(env: Env, explicit: str) -> None:
    """The default (auto) is negotiated: whatever this CPU prefers, a server with an
    explicit cipher and a client left at the default agree on the server's cipher."""
    k = key_file(env, "tunnel.key")
    server, client = pair(env, {"key_file": k, "cipher": explicit}, {"key_file": k})
    client.wait_state("up")
    server.wait_state("up")
    assert env.b.ping(SERVER_IP, count=3, interval=0.05) == (3, 3)
    for d in (server, client):
        st = d.tunnel()
        assert st is not None and st["crypto"]["cipher"] == explicit, st["crypto"]


INITFLOOD = str(Path(__file__).resolve().parent.parent / "tools" / "initflood.py")
#: the flood's source hosts, on the client's side of the link
FLOOD_HOSTS = [f"192.168.100.{100 + i}" for i in range(32)]
PINGS = 40


def test_p2p_server_answers_initiation_flood_with_cookies(env: Env) -> None:
    """A point-to-point UDP server (public keys, AES-256-GCM) under 10,000 valid-mac1
    initiations from 32 source hosts, while its live peer pings through the tunnel.
    Each source host may start 5 handshakes at once and 20 a second (the per-source
    limit), so without cookies the flood would cost over 600 DH a second. Past the load
    threshold (initiations a second) the server answers with cookie replies instead:
    the DH work stays within the threshold per second of the flood, and every echo
    comes back."""
    s_priv, s_pub = generate_keypair()
    c_priv, c_pub = generate_keypair()
    port = 55571
    server, client = pair(
        env, {"private_key_file": key_file(env, "s.key", s_priv), "peer_public_key": c_pub},
        {"private_key_file": key_file(env, "c.key", c_priv), "peer_public_key": s_pub},
        port=port, cipher="aes-256-gcm")
    client.wait_state("up")
    server.wait_state("up")
    link = env.lab.links[0][1]
    env.b.run("ip", "-batch", "-", input="".join(
        f"addr add {host}/24 dev {link}\n" for host in FLOOD_HOSTS))
    before = server.tunnel()
    assert before is not None and before["crypto"]["cipher"] == "aes-256-gcm", before
    dh_before = before["crypto"]["initiations_processed"]
    flood = env.b.popen(sys.executable, INITFLOOD, env.lab.a_addrs[0], str(port), s_pub,
                        "10000", "64", "32", ",".join(FLOOD_HOSTS), stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE, text=True)
    ping: subprocess.Popen[str] | None = None
    try:
        assert flood.stdout is not None and flood.stdin is not None
        assert "ready" in flood.stdout.readline()  # the initiations are built
        ping = env.b.popen("stdbuf", "-oL", "ping", "-D", "-n", "-c", str(PINGS), "-i", "0.1",
                           "-W", "5", SERVER_IP, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        assert ping.stdout is not None
        lines: list[str] = []
        # the flood starts once an echo came back (EOF bounds this: ping -c ends)
        for line in ping.stdout:
            lines.append(line)
            if "bytes from" in line:
                break
        flood.stdin.write("go\n")
        flood.stdin.flush()
        result = json.loads(flood.stdout.readline())
        flood.wait(30)
        rest, _ = ping.communicate(timeout=PINGS * 0.1 + 30)
        lines += rest.splitlines()
    finally:
        for proc in (flood, ping):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)
    replies = [float(ln[1:ln.index("]")]) for ln in lines
               if ln.startswith("[") and "bytes from" in ln]
    summary = next((ln for ln in lines if "packets transmitted" in ln), "")
    after = server.tunnel()
    assert after is not None
    drops, crypto = after["drops"], after["crypto"]
    dh = crypto["initiations_processed"] - dh_before
    busy_end = max(result["ended_at"], result["last_reply_at"] or 0.0)
    busy = busy_end - result["started_at"]
    bound = CookieChecker().threshold * max(1.0, busy) + 20
    print(f"flood {result}; server: {drops.get('cookie_sent', 0)} cookie replies sent, "
          f"{drops.get('cookie_throttled', 0)} throttled, {drops.get('rate_limited', 0)} "
          f"rate-limited, {dh} initiations processed (bound {bound:.0f}), "
          f"{drops.get('unknown_peer', 0)} unknown peers; ping: {summary.strip()}")
    assert result["sent"] == 10000
    # every echo came back, the first before the flood and the last after it
    assert f"{PINGS} packets transmitted, {PINGS} received" in summary, lines[-5:]
    assert len(replies) == PINGS
    assert replies[0] < result["started_at"] and replies[-1] > busy_end, (replies, result)
    # under load the server answered with cookies ...
    assert drops.get("cookie_sent", 0) > 0 and result["cookie_replies"] > 0, (drops, result)
    # ... and did a DH only for what came before the load (the threshold per second)
    assert dh <= bound, (dh, bound, drops)
    assert after["state"] == "up" and crypto["established"]
    assert env.b.ping(SERVER_IP, count=3, interval=0.05) == (3, 3)
