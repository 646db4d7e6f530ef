"""OpenVPN *server* at scale and under a datagram flood: the real ``tunconnector openvpn``.

    python -m bench.ovpnserver_scale [--sessions 1000] [--junk 100000] [--json FILE]

Set-up (random-suffixed names, all removed at the end, Ctrl-C included): a namespace S
runs ``python -m tunconnector openvpn --config server.conf`` (udp, dev tun, topology
subnet, ``server 10.8.0.0 255.255.0.0``, tls-crypt, AES-256-GCM, ``keepalive 10 60``,
``max-clients 2000``, ``duplicate-cn``, ``status status.log 1``); namespaces F (the
farm), C (a real openvpn client) and H (the attacker) each have their own veth to S
(172.30.1/24, .2/24, .3/24). A throw-away PKI as in bench/ovpnserver.py.

1. Scale. One process in F runs ``--sessions`` sans-I/O :class:`OpenVPNClient`
   instances, each over its own UDP socket (one ``epoll`` loop), all with the same
   certificate (the server has ``duplicate-cn``). The server allows
   ``max_handshakes_per_source`` (8) handshakes per source IP, so the farm's sockets are
   spread over ``--farm-ips`` addresses of F's veth, and at most ``--wave`` handshakes
   are in flight at once. Reported: the server's VmRSS before any client and with all
   N held, KiB per session, the time until all N were connected (the farm's Connected
   events; the server's status file is counted too), the server's CPU over ``--hold``
   seconds of idle holding, and whether the farm kept the sessions alive (keepalive
   pings sent and received per client while held, disconnects).
2. Hostile. A fresh server; a real ``openvpn`` client in C connects and pings 10.8.0.1.
   An idle ``ping -c 40 -i 0.2`` first; then, with the same ping running, a few sender
   processes in H (``--flood-ips`` source addresses on H's veth, source ports renewed
   every few thousand datagrams) send ``--junk`` datagrams at the server's port as fast
   as they can: random garbage, truncated hard resets (first byte 7<<3, too short),
   well-formed-looking hard resets with random session ids (no valid tls-crypt tag) and
   replays of a real client's first datagram (a sans-I/O client's hard reset, valid
   tls-crypt: the gate answers it with at most a cookie, rate limited, and keeps no
   state). Reported: ping received/40 and RTT avg against idle (also for the pings sent
   while the flood ran: Python senders finish 100,000 datagrams in a few seconds), the
   server's sessions afterwards (only the real client; at most
   ``max_handshakes_per_source`` per source still in handshake), its drop counters and
   the kernel's UDP counters in S (what the server never read).

The numbers depend on the machine's load: the table prints the CPU model, date and
``uptime`` at the start.
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import os
import random
import re
import resource
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import IO, Any

from .measure import cpu_seconds, rss_kib
from .ovpnserver import Lab, _notable, _ns, _tail, _tree, _wait, machine, make_pki
from .peers import TUNCONNECTOR

REPO = Path(__file__).resolve().parent.parent
PORT = 1194
SERVER_TUN_IP = "10.8.0.1"
FARM, LIVE, ATTACKER = 1, 2, 3  # lab namespace K: veth 172.30.K.2 -> S 172.30.K.1
MAX_HANDSHAKES_PER_SOURCE = 8  # ServerOptions' default

SERVER_CONF = """\
port 1194
proto udp
dev tun
topology subnet
server 10.8.0.0 255.255.0.0
ca ca.crt
cert server.crt
key server.key
dh none
tls-crypt ta.key
data-ciphers AES-256-GCM
keepalive 10 60
max-clients 2000
duplicate-cn
status status.log 1
verb 3
"""


# ------------------------------------------------------------------ farm (runs in F)
def _farm(argv: list[str]) -> int:
    """N sans-I/O clients, one UDP socket each; JSON lines on stdout; stdin: ``mark``
    (zero the ping counters), ``stop`` (print the final counts and exit)."""
    from tunconnector.ovpnconfig import load
    from tunconnector.proto.connection import Connected, Disconnected
    from tunconnector.proto.openvpn.client import OpenVPNClient
    from tunconnector.proto.openvpn.common import PING_MAGIC

    ap = argparse.ArgumentParser(prog="ovpnserver_scale _farm")
    ap.add_argument("--conf", required=True)
    ap.add_argument("--server", required=True)
    ap.add_argument("--sessions", type=int, required=True)
    ap.add_argument("--wave", type=int, default=50)
    ap.add_argument("--sources", required=True, help="comma-separated local addresses")
    ap.add_argument("--timeout", type=float, default=600.0)
    a = ap.parse_args(argv)

    class FarmClient(OpenVPNClient):
        pings_in = 0
        pings_out = 0

        def _payload(self, payload: bytes, now: float) -> bytes | None:
            if payload == PING_MAGIC:
                self.pings_in += 1
            return super()._payload(payload, now)

        def _send_data(self, payload: bytes, now: float) -> None:
            if payload == PING_MAGIC:
                self.pings_out += 1
            super()._send_data(payload, now)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.sessions + 64
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    opts = load(a.conf).options
    server = (a.server, PORT)
    sources = a.sources.split(",")
    sel = selectors.DefaultSelector()
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, -1)
    clients: list[FarmClient] = []
    socks: list[socket.socket] = []
    due: dict[int, float] = {}
    heap: list[tuple[float, int]] = []
    ever: set[int] = set()
    up: set[int] = set()
    counts: Counter[str] = Counter()
    t_start = time.monotonic()
    all_at: float | None = None
    drops_after_all = 0

    def out(**kw: Any) -> None:
        print(json.dumps(kw), flush=True)

    def pump(i: int, now: float) -> None:
        nonlocal drops_after_all
        c, s = clients[i], socks[i]
        for d, _ in c.datagrams_to_send(now):
            try:
                s.sendto(d, server)
            except OSError:
                counts["send_errors"] += 1
        c.frames_to_deliver()
        while (ev := c.next_event()) is not None:
            if isinstance(ev, Connected):
                ever.add(i)
                up.add(i)
            elif isinstance(ev, Disconnected):
                counts["disconnects"] += 1
                if i in up and all_at is not None:
                    drops_after_all += 1
                up.discard(i)
        t = c.get_timer()
        if t is not None and due.get(i) != t:
            t = max(t, now + 0.002) if t <= now else t
            due[i] = t
            heapq.heappush(heap, (t, i))

    def start_one(now: float) -> None:
        i = len(clients)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((sources[i % len(sources)], 0))
        s.setblocking(False)
        c = FarmClient(opts, peer=server)
        clients.append(c)
        socks.append(s)
        sel.register(s, selectors.EVENT_READ, i)
        c.start(now)
        pump(i, now)

    stop = False
    while not stop:
        now = time.monotonic()
        while len(clients) < a.sessions and len(clients) - len(ever) < a.wave:
            start_one(now)
        if all_at is None and len(ever) >= a.sessions:
            all_at = now
            out(event="connected", n=len(ever), seconds=round(now - t_start, 2),
                up=len(up), disconnects=counts["disconnects"])
        elif all_at is None and now - t_start > a.timeout:
            out(event="timeout", n=len(ever), up=len(up), started=len(clients),
                seconds=round(now - t_start, 2), disconnects=counts["disconnects"])
            all_at = now
        wait = 0.5
        if heap:
            wait = min(wait, max(0.0, heap[0][0] - now))
        for key, _ in sel.select(wait):
            i = key.data
            if i == -1:
                line = sys.stdin.readline()
                cmd = line.strip()
                if cmd == "mark":
                    for c in clients:
                        c.pings_in = c.pings_out = 0
                    drops_after_all = 0
                    counts["mark_disconnects"] = counts["disconnects"]
                    out(event="marked", up=len(up))
                elif cmd == "stop" or not line:
                    stop = True
                continue
            now = time.monotonic()
            c, s = clients[i], socks[i]
            for _ in range(64):
                try:
                    data, addr = s.recvfrom(4096)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    counts["recv_errors"] += 1
                    break
                c.receive_datagram(data, addr, now)
            pump(i, now)
        now = time.monotonic()
        ready: list[int] = []
        while heap and heap[0][0] <= now:
            t, i = heapq.heappop(heap)
            if due.get(i) == t:
                del due[i]
                ready.append(i)
        for i in ready:
            clients[i].handle_timer(now)
            pump(i, now)
    held = [clients[i] for i in up]
    out(event="final", started=len(clients), ever=len(ever), up=len(up),
        disconnects=counts["disconnects"],
        disconnects_since_mark=counts["disconnects"] - counts["mark_disconnects"],
        up_lost_since_mark=drops_after_all,
        pings_in=sum(c.pings_in for c in clients), pings_out=sum(c.pings_out for c in clients),
        up_with_ping_in=sum(1 for c in held if c.pings_in),
        up_with_ping_out=sum(1 for c in held if c.pings_out),
        send_errors=counts["send_errors"], recv_errors=counts["recv_errors"])
    for s in socks:
        s.close()
    return 0


# ------------------------------------------------------------------ flood (runs in H)
KINDS = ("garbage", "truncated", "forged_reset", "replay")


def _pool(rng: random.Random, seed: bytes, size: int) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for n in range(size):
        kind = KINDS[n % len(KINDS)]
        if kind == "garbage":
            d = rng.randbytes(rng.randint(1, 1400))
        elif kind == "truncated":  # P_CONTROL_HARD_RESET_CLIENT_V2, key id 0, too short
            d = bytes([7 << 3]) + rng.randbytes(rng.randint(0, 8))
        elif kind == "forged_reset":  # the shape of a real one, no valid tag
            d = bytes([7 << 3]) + rng.randbytes(len(seed) - 1)
        else:
            d = seed
        out.append((kind, d))
    return out


def _flood_worker(k: int, target: str, count: int, sources: list[str], seed: bytes,
                  start: Any, results: Any) -> None:
    rng = random.Random(k * 7919 + 1)
    pool = _pool(rng, seed, 4096)
    dest = (target, PORT)

    def fresh() -> list[socket.socket]:
        out = []
        for ip in sources:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            s.bind((ip, 0))
            out.append(s)
        return out

    socks = fresh()
    kinds: Counter[str] = Counter()
    errors = 0
    start.wait()
    t0 = time.time()
    ns = len(socks)
    npool = len(pool)
    sent = 0
    for n in range(count):
        if n and n % 4000 == 0:  # new source ports: more (address, port) sources
            for s in socks:
                s.close()
            socks = fresh()
        kind, d = pool[n % npool]
        try:
            socks[n % ns].sendto(d, dest)
            sent += 1
            kinds[kind] += 1
        except OSError:
            errors += 1
    t1 = time.time()
    for s in socks:
        s.close()
    results.put({"sent": sent, "errors": errors, "kinds": dict(kinds), "t0": t0, "t1": t1})


def _flood(argv: list[str]) -> int:
    """``--procs`` senders; prints ``{"ready": true}``, floods on a line on stdin, prints
    one JSON line of counts and times."""
    import multiprocessing as mp

    ap = argparse.ArgumentParser(prog="ovpnserver_scale _flood")
    ap.add_argument("--target", required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--procs", type=int, default=3)
    ap.add_argument("--sources", required=True)
    ap.add_argument("--seed-hex", required=True)
    a = ap.parse_args(argv)
    ctx = mp.get_context("fork")
    start = ctx.Event()
    results = ctx.Queue()
    sources = a.sources.split(",")
    seed = bytes.fromhex(a.seed_hex)
    share = [a.count // a.procs + (1 if k < a.count % a.procs else 0) for k in range(a.procs)]
    procs = [ctx.Process(target=_flood_worker,
                         args=(k, a.target, share[k], sources, seed, start, results))
             for k in range(a.procs)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # the pools are built before "go" (a few ms each)
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    start.set()
    got = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(10)
    kinds: Counter[str] = Counter()
    for g in got:
        kinds.update(g["kinds"])
    t0, t1 = min(g["t0"] for g in got), max(g["t1"] for g in got)
    sent = sum(g["sent"] for g in got)
    print(json.dumps({"sent": sent, "errors": sum(g["errors"] for g in got),
                      "kinds": dict(kinds), "t0": t0, "t1": t1,
                      "seconds": round(t1 - t0, 3),
                      "rate": round(sent / max(1e-6, t1 - t0))}), flush=True)
    return 0


# ------------------------------------------------------------------ orchestration helpers
class Child:
    """A child process in a namespace speaking JSON lines on stdout."""

    def __init__(self, lab: Lab, ns: str, argv: list[str], log: Path) -> None:
        self.err: IO[bytes] = open(log, "ab")
        lab.logs.append(self.err)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.p: subprocess.Popen[bytes] = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self.err, cwd=str(lab.wd), env=env,
            start_new_session=True)
        lab.procs.append(self.p)
        self.name = " ".join(argv[2:4])
        self._buf = b""

    def send(self, line: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no answer from {self.name} in {timeout:g} s")
            r, _, _ = select.select([fd], [], [], left)
            if r:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise RuntimeError(f"{self.name} exited {self.p.wait(5)}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return dict(json.loads(line))


def _self_argv(role: str) -> list[str]:
    return [sys.executable, "-m", "bench.ovpnserver_scale", role]


def _start_server(lab: Lab, tag: str) -> tuple[subprocess.Popen[bytes], Path, dict[str, str]]:
    log = lab.wd / f"server-{tag}.log"
    env = dict(os.environ, TUNCONNECTOR_CONTROL_DIR=str(lab.wd / f"ctl-{tag}"))
    server = lab.spawn(lab.s, [*TUNCONNECTOR, "openvpn", "--config", "server.conf"], log, env)
    if not _wait(lambda: server.poll() is not None or lab.server_ready(), 30):
        raise RuntimeError("server not ready in 30 s")
    if server.poll() is not None:
        raise RuntimeError(f"server exited {server.returncode}:\n{_tail(log)}")
    return server, log, env


def _stop_server(lab: Lab, server: subprocess.Popen[bytes]) -> None:
    lab.stop([server], timeout=20.0)
    _wait(lambda: SERVER_TUN_IP not in _ns(lab.s, "ip", "-4", "-o", "addr",
                                           "show").stdout, 10, 0.2)


def _status(lab: Lab, env: dict[str, str]) -> dict[str, Any] | None:
    """The server tunnel's ``tunconnector status --json`` entry."""
    r = subprocess.run(["ip", "netns", "exec", lab.s, *TUNCONNECTOR, "status", "--json"],
                       capture_output=True, text=True, timeout=60, env=env,
                       cwd=str(lab.wd))
    try:
        doc = json.loads(r.stdout)
    except json.JSONDecodeError:
        return None

    def find(x: Any) -> dict[str, Any] | None:
        if isinstance(x, dict):
            if x.get("openvpn_server"):
                return x
            for v in x.values():
                f = find(v)
                if f is not None:
                    return f
        elif isinstance(x, list):
            for v in x:
                f = find(v)
                if f is not None:
                    return f
        return None

    return find(doc)


def _status_file_clients(path: Path) -> int | None:
    """CLIENT LIST rows of a ``status-version 1`` file."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    try:
        a = lines.index("Common Name,Real Address,Bytes Received,Bytes Sent,Connected Since")
        b = lines.index("ROUTING TABLE")
    except ValueError:
        return None
    return b - a - 1


def _udp_counters(lab: Lab) -> dict[str, int]:
    r = _ns(lab.s, "cat", "/proc/net/snmp", timeout=10)
    rows = [ln.split() for ln in r.stdout.splitlines() if ln.startswith("Udp:")]
    if len(rows) < 2:
        return {}
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:], strict=False)}


PING_RE = re.compile(r"(\d+) packets transmitted, (\d+) received")
RTT_RE = re.compile(r"= [\d.]+/([\d.]+)/([\d.]+)/")
REPLY_RE = re.compile(r"^\[([\d.]+)\] .*icmp_seq=(\d+) .*time=([\d.]+) ms")


def _ping_result(out: str) -> dict[str, Any]:
    m, r = PING_RE.search(out), RTT_RE.search(out)
    return {"sent": int(m.group(1)) if m else 0, "received": int(m.group(2)) if m else 0,
            "rtt_avg_ms": float(r.group(1)) if r else None,
            "rtt_max_ms": float(r.group(2)) if r else None}


def _add_ips(lab: Lab, k: int, n: int) -> list[str]:
    ns, dev = lab.c[k - 1], f"voc{k}{lab.tag}"
    ips = [f"172.30.{k}.{10 + j}" for j in range(n)]
    for ip in ips:
        _ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
    return ips


def _first_datagram(wd: Path) -> bytes:
    """A real client's first datagram (hard reset under tls-crypt) from the sans-I/O
    client with the live client's config."""
    from tunconnector.ovpnconfig import load
    from tunconnector.proto.openvpn.client import OpenVPNClient

    opts = load(wd / f"client{LIVE}.conf").options
    c = OpenVPNClient(opts, peer=(f"172.30.{LIVE}.1", PORT))
    c.start(time.monotonic())
    return c.datagrams_to_send(time.monotonic())[0][0]


# ------------------------------------------------------------------ part 1: scale
def run_scale(lab: Lab, args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"sessions": args.sessions, "wave": args.wave,
                           "farm_ips": args.farm_ips}
    server, slog, _env = _start_server(lab, "scale")
    farm: Child | None = None
    try:
        time.sleep(2.0)
        row["rss_idle_kib"] = rss_kib(server.pid)
        ips = _add_ips(lab, FARM, args.farm_ips)
        farm = Child(lab, lab.c[FARM - 1],
                     [*_self_argv("_farm"), "--conf", "client1.conf", "--server",
                      f"172.30.{FARM}.1", "--sessions", str(args.sessions), "--wave",
                      str(args.wave), "--sources", ",".join(ips),
                      "--timeout", str(args.connect_timeout)],
                     lab.wd / "farm.log")
        spids = _tree(server.pid)
        c0, t0 = cpu_seconds(spids), time.monotonic()
        ev = farm.read(args.connect_timeout + 30)
        row["connect_cpu_s"] = round(cpu_seconds(spids) - c0, 2)
        row["connect_wall_s"] = round(time.monotonic() - t0, 2)
        if ev.get("event") != "connected":
            raise RuntimeError(f"farm: {ev}")
        row["seconds_to_all_connected"] = ev["seconds"]
        row["connected_rate_per_s"] = round(args.sessions / max(0.01, ev["seconds"]), 1)
        row["disconnects_while_connecting"] = ev["disconnects"]
        farm.send("mark")
        farm.read(10)
        time.sleep(1.0)
        row["rss_held_kib"] = rss_kib(server.pid)
        spy = None
        if args.py_spy:  # sampled from outside, --nonblocking: the server is not paused
            spy = subprocess.Popen(["py-spy", "record", "--pid", str(server.pid),
                                    "--duration", str(max(1, int(args.hold))),
                                    "--nonblocking", "--format", "raw",
                                    "--output", str(args.py_spy)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lab.procs.append(spy)
        c0, t0 = cpu_seconds(spids), time.monotonic()
        time.sleep(args.hold)
        c1, t1 = cpu_seconds(spids), time.monotonic()
        if spy is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                spy.wait(10)
            lab.stop([spy])
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}) while holding")
        row["rss_held_end_kib"] = rss_kib(server.pid)
        row["hold_s"] = round(t1 - t0, 2)
        row["hold_cpu_pct"] = round(100 * (c1 - c0) / (t1 - t0), 1)
        rss = max(row["rss_held_kib"], row["rss_held_end_kib"])
        row["rss_per_session_kib"] = round((rss - row["rss_idle_kib"]) / args.sessions, 1)
        time.sleep(1.5)  # the status file is written every second
        row["status_file_clients"] = _status_file_clients(lab.wd / "status.log")
        farm.send("stop")
        fin = farm.read(30)
        row["farm"] = fin
        row["farm_kept_alive"] = (fin["up"] == args.sessions
                                  and fin["up_lost_since_mark"] == 0
                                  and fin["up_with_ping_in"] == fin["up"]
                                  and fin["up_with_ping_out"] == fin["up"])
        row["server_alive"] = server.poll() is None
    except (RuntimeError, OSError, KeyError, subprocess.SubprocessError) as exc:
        row["error"] = str(exc)[:2000]
        row["server_log_tail"] = _tail(slog, 30)
        row["farm_log_tail"] = _tail(lab.wd / "farm.log", 30)
    finally:
        if farm is not None:
            lab.stop([farm.p], timeout=10.0)
        row["server_alive_at_end"] = server.poll() is None
        row["server_returncode"] = server.returncode
        _stop_server(lab, server)
    row["server_log"] = str(slog)
    row["server_log_notable"] = _notable(slog)
    return row


# ------------------------------------------------------------------ part 2: hostile
def _ping(lab: Lab, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", lab.c[LIVE - 1], "ping", "-n", "-D", "-c", str(count),
         "-i", "0.2", "-W", "1", SERVER_TUN_IP],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _in_window(out: str, t_start: float, count: int, w0: float, w1: float) -> dict[str, Any]:
    """The pings sent while the flood ran (sequence N leaves ~ t_start + 0.2 (N-1))."""
    replies = {int(m.group(2)): float(m.group(3))
               for m in (REPLY_RE.match(ln) for ln in out.splitlines()) if m}
    seqs = [s for s in range(1, count + 1) if w0 <= t_start + 0.2 * (s - 1) <= w1]
    rtts = [replies[s] for s in seqs if s in replies]
    return {"sent": len(seqs), "received": len(rtts),
            "rtt_avg_ms": round(sum(rtts) / len(rtts), 3) if rtts else None,
            "rtt_max_ms": max(rtts) if rtts else None}


def run_hostile(lab: Lab, args: argparse.Namespace) -> dict[str, Any]:
    row: dict[str, Any] = {"junk": args.junk, "procs": args.flood_procs,
                           "sources": args.flood_ips}
    server, slog, env = _start_server(lab, "hostile")
    flood: Child | None = None
    client: subprocess.Popen[bytes] | None = None
    ping: subprocess.Popen[str] | None = None
    try:
        client = lab.spawn(lab.c[LIVE - 1], ["openvpn", "--config", f"client{LIVE}.conf"],
                           lab.wd / "live-client.log")
        ok = _wait(lambda: server.poll() is not None or _ns(
            lab.c[LIVE - 1], "ping", "-n", "-c", "1", "-W", "1", SERVER_TUN_IP,
            timeout=10).returncode == 0, 60, 0.2)
        if not ok or server.poll() is not None:
            raise RuntimeError("the live client does not ping 10.8.0.1:\n"
                               + _tail(lab.wd / "live-client.log"))
        seed = _first_datagram(lab.wd)
        row["replayed_datagram_bytes"] = len(seed)
        ips = _add_ips(lab, ATTACKER, args.flood_ips)
        flood = Child(lab, lab.c[ATTACKER - 1],
                      [*_self_argv("_flood"), "--target", f"172.30.{ATTACKER}.1",
                       "--count", str(args.junk), "--procs", str(args.flood_procs),
                       "--sources", ",".join(ips), "--seed-hex", seed.hex()],
                      lab.wd / "flood.log")
        before = _status(lab, env)
        udp0 = _udp_counters(lab)
        idle = _ping(lab, 40)
        out, _ = idle.communicate(timeout=60)
        row["ping_idle"] = _ping_result(out)
        flood.read(60)  # ready
        t_ping = time.time()
        ping = _ping(lab, 40)
        time.sleep(1.0)  # a few pings before the flood
        flood.send("go")
        fl = flood.read(300)
        row["flood"] = fl
        out, _ = ping.communicate(timeout=60)
        row["ping_flood"] = _ping_result(out)
        row["ping_in_flood_window"] = _in_window(out, t_ping, 40, fl["t0"], fl["t1"] + 0.5)
        time.sleep(1.0)
        udp1 = _udp_counters(lab)
        row["kernel_udp"] = {k: udp1.get(k, 0) - udp0.get(k, 0)
                             for k in ("InDatagrams", "RcvbufErrors", "InErrors",
                                       "NoPorts", "OutDatagrams")}
        after = _status(lab, env)
        row["server_alive"] = server.poll() is None
        if after is None:
            raise RuntimeError("no status from the server after the flood")
        peers = after.get("peers", [])
        row["sessions_after"] = len(peers)
        row["sessions_up_after"] = sum(1 for p in peers if p.get("state") == "up")
        hs: Counter[str] = Counter(str(p.get("endpoint", "?")).rsplit(":", 1)[0]
                                   for p in peers if p.get("state") != "up")
        row["handshaking_per_source_max"] = max(hs.values(), default=0)
        row["handshaking_sources"] = dict(hs)
        d0 = (before or {}).get("drops", {})
        row["drops"] = {k: v - d0.get(k, 0) for k, v in after.get("drops", {}).items()
                        if v - d0.get(k, 0)}
        g0 = (before or {}).get("gate", {})
        row["gate"] = {k: v - g0.get(k, 0) for k, v in after.get("gate", {}).items()}
        row["bounded"] = (row["sessions_up_after"] == 1 and
                          row["handshaking_per_source_max"] <= MAX_HANDSHAKES_PER_SOURCE)
        live = _ns(lab.c[LIVE - 1], "ping", "-n", "-c", "3", "-i", "0.2", "-W", "1",
                   SERVER_TUN_IP, timeout=15)
        row["live_after"] = _ping_result(live.stdout)
        row["live_client_alive"] = client.poll() is None
    except (RuntimeError, OSError, KeyError, subprocess.SubprocessError) as exc:
        row["error"] = str(exc)[:2000]
        row["server_log_tail"] = _tail(slog, 30)
        row["flood_log_tail"] = _tail(lab.wd / "flood.log", 30)
    finally:
        for p in (ping,):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(5)
        if flood is not None:
            lab.stop([flood.p], timeout=10.0)
        if client is not None:
            lab.stop([client])
        row["server_alive_at_end"] = server.poll() is None
        _stop_server(lab, server)
    row["server_log"] = str(slog)
    row["server_log_notable"] = _notable(slog)
    row["live_client_log_notable"] = _notable(lab.wd / "live-client.log", 10)
    return row


# ------------------------------------------------------------------ report
def _f(v: Any, spec: str = "") -> str:
    return "-" if v is None else format(v, spec)


def print_report(mach: dict[str, Any], scale: dict[str, Any] | None,
                 hostile: dict[str, Any] | None) -> None:
    print(f"\nmachine: {mach['cpu']} ({mach['cpu_count']} CPUs), {mach['openvpn']}, "
          f"Python {mach['python']}")
    print(f"date:    {mach['date']}")
    print(f"load:    {mach['uptime_at_start']}\n")
    if scale is not None:
        print(f"1. scale: {scale['sessions']} sans-I/O clients, <= {scale['wave']} "
              f"handshakes in flight, from {scale['farm_ips']} source addresses")
        if scale.get("error"):
            print(f"   FAILED: {scale['error']}\n{scale.get('server_log_tail', '')}")
        fin = scale.get("farm", {})
        rows = [
            ("server RSS before any client", _f(scale.get("rss_idle_kib")), "KiB"),
            ("server RSS with N held", _f(scale.get("rss_held_kib")), "KiB"),
            ("server RSS at end of hold", _f(scale.get("rss_held_end_kib")), "KiB"),
            ("RSS per session (target <= 200)", _f(scale.get("rss_per_session_kib")), "KiB"),
            ("time to connect all N", _f(scale.get("seconds_to_all_connected")), "s"),
            ("connect rate", _f(scale.get("connected_rate_per_s")), "sessions/s"),
            ("server CPU while connecting", _f(scale.get("connect_cpu_s")), "s"),
            (f"server CPU idle-holding ({_f(scale.get('hold_s'))} s)",
             _f(scale.get("hold_cpu_pct")), "% of a core"),
            ("status file CLIENT LIST rows", _f(scale.get("status_file_clients")), ""),
            ("farm: sessions up at the end", _f(fin.get("up")), ""),
            ("farm: lost while held", _f(fin.get("up_lost_since_mark")), ""),
            ("farm: held clients that got a server ping",
             _f(fin.get("up_with_ping_in")), ""),
            ("farm: held clients that sent a ping", _f(fin.get("up_with_ping_out")), ""),
            ("farm kept every session alive", _f(scale.get("farm_kept_alive")), ""),
        ]
        for name, v, unit in rows:
            print(f"   {name:<44}{v:>12} {unit}")
        if scale.get("server_log_notable"):
            print("   server log (notable):")
            for ln in scale["server_log_notable"][:10]:
                print(f"     {ln}")
        print()
    if hostile is not None:
        fl = hostile.get("flood", {})
        print(f"2. hostile: {hostile['junk']} datagrams from {hostile['procs']} sender "
              f"processes, {hostile['sources']} source addresses; live: real openvpn")
        if hostile.get("error"):
            print(f"   FAILED: {hostile['error']}\n{hostile.get('server_log_tail', '')}")
        pi, pf = hostile.get("ping_idle", {}), hostile.get("ping_flood", {})
        pw = hostile.get("ping_in_flood_window", {})
        rows = [
            ("flood sent / seconds / rate",
             f"{_f(fl.get('sent'))} / {_f(fl.get('seconds'))} / {_f(fl.get('rate'))}/s", ""),
            ("ping idle: received/sent, avg RTT",
             f"{_f(pi.get('received'))}/{_f(pi.get('sent'))}, {_f(pi.get('rtt_avg_ms'))}",
             "ms"),
            ("ping during flood: received/sent, avg RTT",
             f"{_f(pf.get('received'))}/{_f(pf.get('sent'))}, {_f(pf.get('rtt_avg_ms'))}",
             "ms"),
            ("  of which sent while senders ran",
             f"{_f(pw.get('received'))}/{_f(pw.get('sent'))}, {_f(pw.get('rtt_avg_ms'))}",
             "ms"),
            ("kernel: datagrams read / rcvbuf drops",
             f"{_f(hostile.get('kernel_udp', {}).get('InDatagrams'))} / "
             f"{_f(hostile.get('kernel_udp', {}).get('RcvbufErrors'))}", ""),
            ("sessions after (up)",
             f"{_f(hostile.get('sessions_after'))} ({_f(hostile.get('sessions_up_after'))})",
             ""),
            ("max in handshake per source", _f(hostile.get("handshaking_per_source_max")), ""),
            ("gate replies / accepted",
             f"{_f(hostile.get('gate', {}).get('replies'))} / "
             f"{_f(hostile.get('gate', {}).get('accepted'))}", ""),
            ("bounded (1 up, <= 8 handshaking per source)", _f(hostile.get("bounded")), ""),
            ("live client after: received/sent",
             f"{_f(hostile.get('live_after', {}).get('received'))}/"
             f"{_f(hostile.get('live_after', {}).get('sent'))}", ""),
        ]
        for name, v, unit in rows:
            print(f"   {name:<44}{v:>24} {unit}")
        if hostile.get("drops"):
            print("   server drop counters (flood): " + ", ".join(
                f"{k}={v}" for k, v in sorted(hostile["drops"].items())))
        if hostile.get("server_log_notable"):
            print("   server log (notable):")
            for ln in hostile["server_log_notable"][:10]:
                print(f"     {ln}")


# ------------------------------------------------------------------ main
def _on_term(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_farm"]:
        return _farm(argv[1:])
    if argv[:1] == ["_flood"]:
        return _flood(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m bench.ovpnserver_scale", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=1000, help="farm sessions (default 1000)")
    ap.add_argument("--wave", type=int, default=50,
                    help="handshakes in flight at once (default 50)")
    ap.add_argument("--farm-ips", type=int, default=16,
                    help="source addresses of the farm (default 16)")
    ap.add_argument("--hold", type=float, default=10.0,
                    help="seconds the N sessions are held (default 10)")
    ap.add_argument("--connect-timeout", type=float, default=600.0)
    ap.add_argument("--junk", type=int, default=100_000,
                    help="flood datagrams (default 100000)")
    ap.add_argument("--flood-procs", type=int, default=3)
    ap.add_argument("--flood-ips", type=int, default=20)
    ap.add_argument("--parts", default="scale,hostile", help="scale,hostile (default both)")
    ap.add_argument("--py-spy", type=Path, metavar="FILE",
                    help="py-spy the server while it holds the sessions (collapsed stacks)")
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--keep", type=Path, help="copy the work directory here at the end")
    args = ap.parse_args(argv)
    if args.sessions < 1 or args.sessions > 2000 or args.wave < 1:
        ap.error("--sessions 1..2000 (max-clients 2000), --wave >= 1")
    if os.geteuid() != 0:
        print("bench.ovpnserver_scale: needs root (network namespaces, TUN devices)",
              file=sys.stderr)
        return 2
    parts = {p.strip() for p in args.parts.split(",")}
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    mach = machine()
    print(f"load at start: {mach['uptime_at_start']}", flush=True)
    scale: dict[str, Any] | None = None
    hostile: dict[str, Any] | None = None
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="tcovpnscale-") as tmp:
        wd = Path(tmp)
        wd.chmod(0o755)
        lab = Lab(3, wd)
        try:
            make_pki(wd, 3)
            lab.up()
            (wd / "server.conf").write_text(SERVER_CONF)
            if "scale" in parts:
                print(f"scale: {args.sessions} sessions ...", flush=True)
                scale = run_scale(lab, args)
                print(f"  {scale.get('error') or 'done'}", flush=True)
            if "hostile" in parts:
                print(f"hostile: {args.junk} datagrams ...", flush=True)
                hostile = run_hostile(lab, args)
                print(f"  {hostile.get('error') or 'done'}", flush=True)
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted: cleaning up", file=sys.stderr)
        finally:
            lab.close()
            if args.keep:
                import shutil
                with contextlib.suppress(OSError):
                    shutil.copytree(wd, args.keep, dirs_exist_ok=True)
    mach["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    print_report(mach, scale, hostile)
    if args.json:
        args.json.write_text(json.dumps({"machine": mach, "scale": scale, "hostile": hostile,
                                         "interrupted": interrupted}, indent=2) + "\n")
    if interrupted:
        return 130
    bad = any(r is not None and r.get("error") for r in (scale, hostile))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
