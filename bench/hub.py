"""``tunconnector bench --hub N``: one hub daemon, N peers, one JSON line of results.

Set-up: a namespace for the hub (a real ``tunconnector run`` with a TUN device and N
``[[tunnel.peer]]`` tables, pool addresses, keepalive 10 s). The N clients are sans-I/O
endpoints in two helper processes (:mod:`bench.hubclients`), without TUN devices, one
UDP socket and one loopback source address each, inside the hub's namespace. For
``gbps_10_active`` ten more peers are real client daemons with TUN devices, each in its
own namespace joined to the hub's by veth, running iperf3 to the hub at once.

Measured:

- ``peers_up``, ``seconds_to_all_up``: hub status after every client initiated at once;
- ``server_rss_mib``, ``rss_per_peer_kib``: the hub's RSS with every peer up, against a
  hub with one peer (so configuration and session state are both counted);
- ``handshakes_per_s``: every client rekeys again as soon as its last handshake
  completed, for ``--storm`` seconds; the hub's completed handshakes per second;
- ``idle_cpu_percent``: the hub's CPU (user + system, % of one core) over 30 s with
  every peer up and keepalives running;
- ``gbps_10_active``: aggregate iperf3 TCP throughput of the ten real clients;
- ``hub_cpu_ms_per_handshake``, ``handshakes_per_core_s``: the hub's side of a
  handshake timed in-process (CPU time, no sockets): what one core sustains when the
  clients are not the bottleneck (in the storm they are: they share this machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tunconnector.keys import generate_keypair, write_key_file

PY = sys.executable


def _ns(ns: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *args], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 60), **kw)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _status(ctl: Path) -> dict[str, Any]:
    """The hub's status over its control socket (in-process: the CLI's start-up would
    dominate on a loaded machine)."""
    from tunconnector.status import query_all

    for r in query_all(str(ctl), timeout=60.0):
        for t in r.get("tunnels", []):
            return dict(t)
    return {}


def _hub_toml(priv: Path, pubs: list[str], port: int, state: Path) -> str:
    out = ["[[tunnel]]", 'name = "hub"', 'mode = "server"', 'device = "hubb0"',
           'address = "10.220.0.1/16"', f"port = {port}", f'private_key_file = "{priv}"',
           'pool = "10.220.0.0/16"', "keepalive = 10.0", "dead_after = 60.0",
           f"max_peers = {max(len(pubs), 1)}", f'state_file = "{state}"']
    for i, pub in enumerate(pubs):
        out += ["[[tunnel.peer]]", f'name = "p{i}"', f'public_key = "{pub}"']
    return "\n".join(out) + "\n"


class _Daemon:
    def __init__(self, ns: str, config: Path, ctl: Path, log: Path) -> None:
        env = dict(os.environ, TUNCONNECTOR_CONTROL_DIR=str(ctl))
        self.log = open(log, "ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, PY, "-m", "tunconnector",
                                      "run", "-c", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
        self.ctl = ctl

    def wait_status(self, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub daemon exited {self.proc.returncode}")
            st = _status(self.ctl) if self.ctl.exists() else {}
            if st:
                return st
            time.sleep(0.5)
        raise RuntimeError("hub daemon did not come up")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def run(n: int, *, storm: float = 10.0, idle: float = 30.0, gbps: bool = True) -> dict[str, Any]:
    tag = os.urandom(3).hex()
    hub_ns = f"tchb{tag}"
    client_ns = [f"tchc{i}{tag}" for i in range(10)] if gbps else []
    result: dict[str, Any] = {"peers": n, "clients": "sans-I/O endpoints without TUN, two "
                              "processes; gbps_10_active: 10 client daemons with TUN"}
    procs: list[subprocess.Popen[str]] = []
    daemons: list[_Daemon] = []
    made: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tchub-") as tmp:
        wd = Path(tmp)
        try:
            subprocess.run(["ip", "netns", "add", hub_ns], check=True, timeout=20)
            made.append(hub_ns)
            _ns(hub_ns, "ip", "link", "set", "lo", "up")
            _ns(hub_ns, "ip", "addr", "add", "127.1.0.1/16", "dev", "lo")
            hub_priv = wd / "hub.key"
            priv, hub_pub = generate_keypair()
            write_key_file(hub_priv, priv)
            total = n + len(client_ns)
            pairs = [generate_keypair() for _ in range(total)]
            (wd / "keys.json").write_text(json.dumps([p for p, _ in pairs]))
            port = 51000 + int(tag[:2], 16)
            # baseline: a hub with one peer
            (wd / "base.toml").write_text(_hub_toml(hub_priv, [pairs[0][1]], port,
                                                    wd / "base-state.json"))
            base = _Daemon(hub_ns, wd / "base.toml", wd / "ctl-base", wd / "base.log")
            daemons.append(base)
            base.wait_status()
            time.sleep(2.0)
            rss_base = _rss_kib(base.proc.pid)
            base.stop()
            daemons.remove(base)
            # the hub with every peer
            (wd / "hub.toml").write_text(_hub_toml(hub_priv, [p for _, p in pairs], port,
                                                   wd / "state.json"))
            hub = _Daemon(hub_ns, wd / "hub.toml", wd / "ctl-hub", wd / "hub.log")
            daemons.append(hub)
            hub.wait_status()
            rss_configured = _rss_kib(hub.proc.pid)
            t0 = time.monotonic()
            half = n // 2
            for first, count in ((0, half), (half, n - half)):
                if count <= 0:
                    continue
                procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", hub_ns, PY, "-m", "bench.hubclients",
                     str(wd / "keys.json"), hub_pub, "127.0.0.1", str(port), str(first),
                     str(count)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                    cwd=str(Path(__file__).resolve().parent.parent)))
            up = 0
            deadline = t0 + max(120.0, n * 0.3)
            while time.monotonic() < deadline:
                st = _status(hub.ctl)
                up = int(st.get("peers_up", 0))
                if up >= n:
                    break
                time.sleep(1.0)
            result["peers_up"] = up
            result["seconds_to_all_up"] = round(time.monotonic() - t0, 1) if up >= n else None
            time.sleep(3.0)
            rss_up = _rss_kib(hub.proc.pid)
            result["server_rss_mib"] = round(rss_up / 1024, 1)
            result["rss_configured_mib"] = round(rss_configured / 1024, 1)
            result["rss_base_mib"] = round(rss_base / 1024, 1)
            result["rss_per_peer_kib"] = round((rss_up - rss_base) / max(n, 1), 1)
            # idle, keepalives running
            c0, w0 = _cpu_ticks(hub.proc.pid), time.monotonic()
            time.sleep(idle)
            c1, w1 = _cpu_ticks(hub.proc.pid), time.monotonic()
            hz = os.sysconf("SC_CLK_TCK")
            result["idle_cpu_percent"] = round(100.0 * (c1 - c0) / hz / (w1 - w0), 2)
            result["idle_seconds"] = idle
            # handshake storm
            hs0 = sum(p.get("handshakes", 0) for p in _status(hub.ctl).get("peers", []))
            s0 = time.monotonic()
            cpu0 = _cpu_ticks(hub.proc.pid)
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(f"storm {storm}\n")
                p.stdin.flush()
            for p in procs:
                assert p.stdout is not None
                while "storm" not in (line := p.stdout.readline()) and line:
                    pass
            s1 = time.monotonic()
            cpu1 = _cpu_ticks(hub.proc.pid)
            st = _status(hub.ctl)
            hs1 = sum(p.get("handshakes", 0) for p in st.get("peers", []))
            result["handshakes_per_s"] = round((hs1 - hs0) / (s1 - s0), 1)
            result["storm_seconds"] = round(s1 - s0, 1)
            result["storm_hub_cpu_percent"] = round(100.0 * (cpu1 - cpu0) / hz / (s1 - s0), 1)
            if hs1 > hs0:  # what one core of this machine sustains, load aside
                result["handshakes_per_hub_cpu_s"] = round((hs1 - hs0) / ((cpu1 - cpu0) / hz), 1)
            result["cookie_replies"] = st.get("cookies", {}).get("cookie_replies")
            result["peers_up_after_storm"] = st.get("peers_up")
            result["hub_drops"] = st.get("drops")
            if gbps:
                try:
                    result["gbps_10_active"] = _gbps(hub_ns, client_ns, made, wd, hub_pub,
                                                     port, [p for p, _ in pairs[n:]], daemons)
                except (RuntimeError, subprocess.SubprocessError, OSError, ValueError) as exc:
                    result["gbps_10_active"] = None
                    result["gbps_error"] = str(exc)[:300]
        finally:
            for p in procs:
                if p.poll() is None:
                    try:
                        assert p.stdin is not None
                        p.stdin.write("quit\n")
                        p.stdin.flush()
                        p.wait(10)
                    except (OSError, subprocess.TimeoutExpired, AssertionError):
                        p.kill()
            for d in daemons:
                d.stop()
            for ns in made:
                for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                          text=True).stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if os.environ.get("BENCH_HUB_KEEP_LOG"):
            import shutil
            shutil.copy(wd / "hub.log", os.environ["BENCH_HUB_KEEP_LOG"])
    return result


def _gbps(hub_ns: str, client_ns: list[str], made: list[str], wd: Path, hub_pub: str,
          port: int, privs: list[str], daemons: list[_Daemon]) -> float:
    """Ten real client daemons (TUN) run iperf3 to the hub at once: aggregate Gbit/s."""
    for i, ns in enumerate(client_ns):
        subprocess.run(["ip", "netns", "add", ns], check=True, timeout=20)
        made.append(ns)
        vh, vc = f"vhb{i}{ns[-6:]}", f"vcb{i}{ns[-6:]}"
        subprocess.run(["ip", "link", "add", vh, "type", "veth", "peer", "name", vc],
                       check=True, timeout=20)
        subprocess.run(["ip", "link", "set", vh, "netns", hub_ns], check=True, timeout=20)
        subprocess.run(["ip", "link", "set", vc, "netns", ns], check=True, timeout=20)
        _ns(hub_ns, "ip", "addr", "add", f"172.31.{i}.1/24", "dev", vh)
        _ns(hub_ns, "ip", "link", "set", vh, "up")
        _ns(ns, "ip", "addr", "add", f"172.31.{i}.2/24", "dev", vc)
        _ns(ns, "ip", "link", "set", vc, "up")
        _ns(ns, "ip", "link", "set", "lo", "up")
        key = wd / f"real{i}.key"
        write_key_file(key, privs[i])
        cfg = wd / f"real{i}.toml"
        cfg.write_text("\n".join([
            "[[tunnel]]", 'name = "c"', 'mode = "client"', f'device = "rc{i}"',
            f'remote = "172.31.{i}.1"', f"remote_port = {port}",
            f'private_key_file = "{key}"', f'peer_public_key = "{hub_pub}"']) + "\n")
        daemons.append(_Daemon(ns, cfg, wd / f"ctl-real{i}", wd / f"real{i}.log"))
    servers = []
    for i in range(len(client_ns)):
        servers.append(subprocess.Popen(["ip", "netns", "exec", hub_ns, "iperf3", "-s", "-1",
                                         "-p", str(5300 + i)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL))
    # wait until every real client has its address and reaches the hub
    deadline = time.monotonic() + 300  # ten daemons start at once on a shared machine
    for ns in client_ns:
        while time.monotonic() < deadline:
            if _ns(ns, "ping", "-c", "1", "-W", "1", "10.220.0.1", timeout=10).returncode == 0:
                break
        else:
            raise RuntimeError(f"{ns}: the hub is not reachable through the tunnel")
    clients = [subprocess.Popen(["ip", "netns", "exec", ns, "iperf3", "-c", "10.220.0.1",
                                 "-p", str(5300 + i), "-t", "8", "-J"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
               for i, ns in enumerate(client_ns)]
    total = 0.0
    for c in clients:
        out, _ = c.communicate(timeout=60)
        total += json.loads(out)["end"]["sum_received"]["bits_per_second"]
    for s in servers:
        if s.poll() is None:
            s.kill()
    return round(total / 1e9, 3)


def responder_cpu(n: int = 300) -> float:
    """CPU seconds the hub's side of one handshake costs (read the initiation, answer,
    take the confirmation), measured in this process without sockets: what one core
    sustains is its inverse, whatever else the machine runs."""
    from tunconnector.keys import decode_key
    from tunconnector.proto.framing import parse_header
    from tunconnector.proto.secure import SecureChannel

    spriv, spub = generate_keypair()
    pairs = []
    for _ in range(n):
        cpriv, cpub = generate_keypair()
        pairs.append((
            SecureChannel(initiator=True, private_key=decode_key(cpriv),
                          peer_public_key=decode_key(spub)),
            SecureChannel(initiator=False, private_key=decode_key(spriv),
                          peer_public_key=decode_key(cpub))))
    spent = 0.0
    for i, (c, s) in enumerate(pairs):
        now = 1.0 + i
        c.start(now)
        for m in c.datagrams_to_send():
            t = time.process_time()
            s.open(m, parse_header(m), now, source="c")
            spent += time.process_time() - t
        for m in s.datagrams_to_send():
            c.open(m, parse_header(m), now, source="s")
        for m in c.datagrams_to_send():
            t = time.process_time()
            s.open(m, parse_header(m), now, source="c")
            spent += time.process_time() - t
    if not all(s.established for _, s in pairs):
        raise RuntimeError("in-process handshakes failed")
    return spent / n


def main(n: int, *, storm: float = 10.0, idle: float = 30.0, gbps: bool = True) -> int:
    if os.geteuid() != 0:
        print("bench --hub: needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    machine = {"cpu_count": os.cpu_count(), "loadavg_at_start": round(os.getloadavg()[0], 2),
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    res = run(n, storm=storm, idle=idle, gbps=gbps)
    per = responder_cpu()
    res["hub_cpu_ms_per_handshake"] = round(per * 1e3, 3)
    res["handshakes_per_core_s"] = round(1.0 / per, 1)
    res["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps({**res, **machine}), flush=True)
    return 0
