"""OpenVPN *server* throughput: real ``openvpn`` against ``tunconnector openvpn``, one config.

    python -m bench.ovpnserver [--seconds 10] [--clients 1,4] [--rounds 1] [--json FILE]

Set-up (every name carries a random suffix, everything is removed at the end, Ctrl-C
included): a namespace S for the server and one namespace per client, each joined to S
by its own veth (client K: 172.30.K.2 -> S 172.30.K.1); no other traffic crosses them.
A throw-away PKI: a CA, a server certificate and one certificate per client (CN
``clientK``), a tls-crypt key from ``openvpn --genkey``. One ``server.conf`` (udp, dev
tun, topology subnet, server 10.8.0.0/24, dh none, tls-crypt, data-ciphers AES-256-GCM,
keepalive 10 60, no compression) is run by each server implementation in turn, from the
same directory:

- ``openvpn``: ``openvpn --config server.conf``;
- ``tunconnector``: ``python -m tunconnector openvpn --config server.conf`` (the running
  interpreter, or ``$BENCH_TUNCONNECTOR``).

For each client count N (``--clients``) and implementation: the server starts, N real
``openvpn --config clientK.conf`` clients connect, each pings 10.8.0.1 until it answers,
then 1 s of warm-up; one ``iperf3 -s -1 -p 520K`` per client in S; every client runs
``iperf3 -c 10.8.0.1 -p 520K -t SECONDS`` (TCP, one stream) at once. Reported:

- ``gbps``: the sum of the receivers' rates (S receives);
- ``server_cpu_s_per_gb``: utime+stime of the server process (``/proc/PID/stat``, its
  threads and any children) over the transfer, per GB received;
- ``server_cpu_pct``: the same as a percentage of one core;
- ``clients_cpu_s``, ``clients_cpu_pct``: the openvpn clients' CPU over the transfer,
  summed (the senders: whether they, not the server, are the bottleneck).

Per round the order of the implementations alternates (openvpn first in round 1,
tunconnector first in round 2, ...), so a drift in the machine's load does not favour one
side. The summary is the mean over rounds and the ratios tunconnector/openvpn.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .measure import cpu_seconds
from .netns import sh
from .peers import TUNCONNECTOR

REPO = Path(__file__).resolve().parent.parent
IMPLS = ("openvpn", "tunconnector")
PORT = 1194
SERVER_TUN_IP = "10.8.0.1"
IPERF_BASE = 5200  # client K's iperf3 server listens on 5200 + K

SERVER_CONF = """\
port 1194
proto udp
dev tun
topology subnet
server 10.8.0.0 255.255.255.0
ca ca.crt
cert server.crt
key server.key
dh none
tls-crypt ta.key
data-ciphers AES-256-GCM
keepalive 10 60
verb 3
"""

CLIENT_CONF = """\
client
dev tun
proto udp
remote {remote} 1194
nobind
ca ca.crt
cert client{k}.crt
key client{k}.key
tls-crypt ta.key
remote-cert-tls server
data-ciphers AES-256-GCM
verb 3
connect-retry 1 1
"""


# ------------------------------------------------------------------ helpers
def _ns(ns: str, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return sh(["ip", "netns", "exec", ns, *args], check=False, timeout=timeout)


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a server may fork; ``ip netns exec`` itself execs)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return out


def _wait(pred: Any, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)  # polling namespaced state: nothing to wait on across netns
    return bool(pred())


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


#: log lines worth showing: errors, warnings, tracebacks, openvpn's own complaints
NOTABLE = re.compile(r"ERROR|WARNING|Traceback|Exception|error|AUTH_FAILED|"
                     r"TLS Error|Connection reset|Inactivity timeout|restarting", re.I)


def _notable(path: Path, limit: int = 20) -> list[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [ln for ln in lines if NOTABLE.search(ln)][:limit]


def machine() -> dict[str, Any]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    up = subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    ver = subprocess.run(["openvpn", "--version"], capture_output=True, text=True,
                         timeout=10).stdout.splitlines()
    return {"cpu": model, "cpu_count": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "uptime_at_start": up, "loadavg_at_start": os.getloadavg()[0],
            "python": sys.version.split()[0], "openvpn": ver[0] if ver else "?"}


def make_pki(d: Path, clients: int) -> None:
    """CA, server (serverAuth), client1..clientN (clientAuth, CN clientK), ta.key: the
    integration tests' certificate helpers."""
    sys.path.insert(0, str(REPO / "tests" / "integration"))
    sys.path.insert(0, str(REPO / "tests"))
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID
    from test_openvpn_tls_interop import _cert, _key, _pem_key

    ca_key = _key()
    ca = _cert("bench CA", ca_key, None, ca_key, ca=True)
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    names = [("server", ExtendedKeyUsageOID.SERVER_AUTH)]
    names += [(f"client{k}", ExtendedKeyUsageOID.CLIENT_AUTH) for k in range(1, clients + 1)]
    for name, eku in names:
        k = _key()
        c = _cert(name, k, ca, ca_key, eku=[eku])
        (d / f"{name}.crt").write_bytes(c.public_bytes(serialization.Encoding.PEM))
        (d / f"{name}.key").write_bytes(_pem_key(k))
        (d / f"{name}.key").chmod(0o600)
    sh(["openvpn", "--genkey", "secret", str(d / "ta.key")], timeout=30)


# ------------------------------------------------------------------ the lab
class Lab:
    """Namespace S and one namespace per client, each with its own veth to S; every
    process started here is tracked and stopped in :meth:`close`."""

    #: iperf3 -R: the server sends (set from --reverse)
    reverse = False

    def __init__(self, clients: int, workdir: Path) -> None:
        self.tag = secrets.token_hex(3)
        self.wd = workdir
        self.s = f"tcoS{self.tag}"
        self.c = [f"tco{k}{self.tag}" for k in range(1, clients + 1)]
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Any] = []

    def up(self) -> None:
        sh(["ip", "netns", "add", self.s])
        self.made.append(self.s)
        _ns(self.s, "ip", "link", "set", "lo", "up")
        for k, ns in enumerate(self.c, 1):
            sh(["ip", "netns", "add", ns])
            self.made.append(ns)
            vs, vc = f"vos{k}{self.tag}", f"voc{k}{self.tag}"
            sh(["ip", "link", "add", vs, "type", "veth", "peer", "name", vc])
            sh(["ip", "link", "set", vs, "netns", self.s])
            sh(["ip", "link", "set", vc, "netns", ns])
            sh(["ip", "-n", self.s, "addr", "add", f"172.30.{k}.1/24", "dev", vs])
            sh(["ip", "-n", self.s, "link", "set", vs, "up"])
            sh(["ip", "-n", ns, "addr", "add", f"172.30.{k}.2/24", "dev", vc])
            sh(["ip", "-n", ns, "link", "set", vc, "up"])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
            (self.wd / f"client{k}.conf").write_text(
                CLIENT_CONF.format(remote=f"172.30.{k}.1", k=k))
        (self.wd / "server.conf").write_text(SERVER_CONF)

    def spawn(self, ns: str, argv: list[str], log: Path,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        fh = open(log, "ab")
        self.logs.append(fh)
        p = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=fh,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             cwd=str(self.wd), env=env, start_new_session=True)
        self.procs.append(p)
        return p

    def stop(self, procs: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
            if p in self.procs:
                self.procs.remove(p)

    def close(self) -> None:
        try:
            self.stop(list(self.procs), timeout=5.0)
        finally:
            for ns in self.made:
                r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                   text=True, timeout=10)
                for pid in r.stdout.split():
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except (ProcessLookupError, ValueError):
                        pass
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
            self.made.clear()
            for fh in self.logs:
                fh.close()

    # -------------------------------------------------------------- one measurement
    def server_ready(self) -> bool:
        udp = _ns(self.s, "ss", "-Hlun", f"sport = :{PORT}", timeout=10)
        addr = _ns(self.s, "ip", "-4", "-o", "addr", "show", timeout=10)
        return bool(udp.stdout.strip()) and f" {SERVER_TUN_IP}/" in addr.stdout

    def measure(self, impl: str, n: int, seconds: float, tag: str) -> dict[str, Any]:
        row: dict[str, Any] = {"impl": impl, "clients": n}
        slog = self.wd / f"server-{tag}.log"
        if impl == "openvpn":
            argv, env = ["openvpn", "--config", "server.conf"], None
        else:
            argv = [*TUNCONNECTOR, "openvpn", "--config", "server.conf"]
            env = dict(os.environ, TUNCONNECTOR_CONTROL_DIR=str(self.wd / f"ctl-{tag}"))
        server = self.spawn(self.s, argv, slog, env)
        clients: list[subprocess.Popen[bytes]] = []
        iperf_s: list[subprocess.Popen[bytes]] = []
        try:
            if not _wait(lambda: server.poll() is not None or self.server_ready(), 30):
                raise RuntimeError("server not ready in 30 s")
            if server.poll() is not None:
                raise RuntimeError(f"server exited {server.returncode}")
            for k in range(1, n + 1):
                iperf_s.append(self.spawn(self.s, ["iperf3", "-s", "-1", "-p",
                                                   str(IPERF_BASE + k)],
                                          self.wd / f"iperf3-s{k}-{tag}.log"))
            t_conn = time.monotonic()
            for k in range(1, n + 1):
                clients.append(self.spawn(self.c[k - 1], ["openvpn", "--config",
                                                          f"client{k}.conf"],
                                          self.wd / f"client{k}-{tag}.log"))
            for k in range(1, n + 1):
                ns = self.c[k - 1]
                ok = _wait(lambda ns=ns: server.poll() is not None or _ns(
                    ns, "ping", "-n", "-c", "1", "-W", "1", SERVER_TUN_IP,
                    timeout=10).returncode == 0, 60, 0.2)
                if server.poll() is not None:
                    raise RuntimeError(f"server exited {server.returncode}")
                if not ok:
                    raise RuntimeError(f"client{k} does not ping {SERVER_TUN_IP} in 60 s:\n"
                                       + _tail(self.wd / f"client{k}-{tag}.log"))
            row["seconds_to_all_connected"] = round(time.monotonic() - t_conn, 2)
            time.sleep(1.0)  # warm-up
            for k in range(1, n + 1):
                port = str(IPERF_BASE + k)
                if not _wait(lambda port=port: bool(_ns(self.s, "ss", "-Hltn",
                                                        f"sport = :{port}").stdout.strip()),
                             10):
                    raise RuntimeError(f"iperf3 server on {port} did not start")
            spids = _tree(server.pid)
            cpids = [q for c in clients for q in _tree(c.pid)]
            s0, c0, t0 = cpu_seconds(spids), cpu_seconds(cpids), time.monotonic()
            senders = [subprocess.Popen(
                ["ip", "netns", "exec", self.c[k - 1], "iperf3", "-c", SERVER_TUN_IP,
                 "-p", str(IPERF_BASE + k), "-t", str(seconds), "-J",
                 "--connect-timeout", "5000", *(["-R"] if self.reverse else [])],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                start_new_session=True) for k in range(1, n + 1)]
            outs: list[str] = []
            try:
                for p in senders:
                    out, _ = p.communicate(timeout=seconds + 30)
                    outs.append(out)
            finally:
                for p in senders:
                    if p.poll() is None:
                        p.kill()
                        p.wait(5)
            t1 = time.monotonic()
            s1, c1 = cpu_seconds(spids), cpu_seconds(cpids)
            per: list[float] = []
            nbytes, retr = 0, 0
            for k, out in enumerate(outs, 1):
                try:
                    d = json.loads(out)
                except json.JSONDecodeError:
                    raise RuntimeError(f"client{k}: iperf3 gave no JSON: {out[:200]}") from None
                if "error" in d:
                    raise RuntimeError(f"client{k}: iperf3: {d['error']}")
                per.append(float(d["end"]["sum_received"]["bits_per_second"]) / 1e9)
                nbytes += int(d["end"]["sum_received"]["bytes"])
                retr += int(d["end"]["sum_sent"].get("retransmits", 0))
            wall = t1 - t0
            scpu, ccpu = s1 - s0, c1 - c0
            gb = nbytes / 1e9
            row.update({
                "gbps": round(sum(per), 3),
                "per_client_gbps": [round(g, 3) for g in per],
                "gb": round(gb, 3),
                "wall_s": round(wall, 2),
                "server_cpu_s": round(scpu, 2),
                "server_cpu_s_per_gb": round(scpu / gb, 3) if gb else None,
                "server_cpu_pct": round(100 * scpu / wall, 1),
                "clients_cpu_s": round(ccpu, 2),
                "clients_cpu_pct": round(100 * ccpu / wall, 1),
                "retransmits": retr,
                "server_alive": server.poll() is None,
            })
        except (RuntimeError, subprocess.SubprocessError, OSError, KeyError) as exc:
            row["error"] = str(exc)[:2000]
            row["server_log_tail"] = _tail(slog, 30)
        finally:
            self.stop(clients)
            self.stop(iperf_s, timeout=3.0)
            self.stop([server], timeout=15.0)
            # the next server opens tun0 again: wait until this one's device is gone
            _wait(lambda: SERVER_TUN_IP not in _ns(self.s, "ip", "-4", "-o", "addr",
                                                   "show").stdout, 10, 0.2)
        row["server_log"] = str(slog)
        row["server_log_notable"] = _notable(slog)
        row["clients_log_notable"] = [ln for k in range(1, n + 1)
                                      for ln in _notable(self.wd / f"client{k}-{tag}.log", 5)]
        return row


# ------------------------------------------------------------------ report
def summarise(runs: list[dict[str, Any]], counts: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in counts:
        per: dict[str, Any] = {}
        for impl in IMPLS:
            rows = [r for r in runs if r["impl"] == impl and r["clients"] == n
                    and r.get("gbps") is not None]
            if not rows:
                per[impl] = None
                continue
            per[impl] = {key: round(statistics.mean(r[key] for r in rows), 3)
                         for key in ("gbps", "server_cpu_s_per_gb", "server_cpu_pct",
                                     "clients_cpu_s", "clients_cpu_pct")
                         if all(r.get(key) is not None for r in rows)}
            per[impl]["rounds"] = len(rows)
        o, t = per.get("openvpn"), per.get("tunconnector")
        if o and t:
            per["ratio_gbps"] = round(t["gbps"] / o["gbps"], 3) if o.get("gbps") else None
            if o.get("server_cpu_s_per_gb") and t.get("server_cpu_s_per_gb") is not None:
                per["ratio_cpu_s_per_gb"] = round(
                    t["server_cpu_s_per_gb"] / o["server_cpu_s_per_gb"], 3)
        out[str(n)] = per
    return out


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def print_report(mach: dict[str, Any], runs: list[dict[str, Any]],
                 summary: dict[str, Any], args: argparse.Namespace) -> None:
    print(f"\nmachine: {mach['cpu']} ({mach['cpu_count']} CPUs), {mach['openvpn']}, "
          f"Python {mach['python']}")
    print(f"date:    {mach['date']}")
    print(f"load:    {mach['uptime_at_start']}")
    print(f"test:    {args.seconds:g} s iperf3 TCP per client (1 stream each"
          f"{', -R: server to clients' if args.reverse else ', clients to server'}), "
          f"{args.rounds} round(s), UDP, AES-256-GCM, tls-crypt\n")
    hdr = (f"{'server':<13}{'N':>3}{'Gbit/s':>9}{'srv CPU s/GB':>14}{'srv CPU %':>11}"
           f"{'clients CPU s':>15}{'clients CPU %':>15}")
    print(hdr)
    print("-" * len(hdr))
    for n, per in summary.items():
        for impl in IMPLS:
            s = per.get(impl)
            if not s:
                print(f"{impl:<13}{n:>3}   failed")
                continue
            print(f"{impl:<13}{n:>3}{_fmt(s.get('gbps'), '.3f'):>9}"
                  f"{_fmt(s.get('server_cpu_s_per_gb')):>14}"
                  f"{_fmt(s.get('server_cpu_pct'), '.0f'):>11}"
                  f"{_fmt(s.get('clients_cpu_s')):>15}{_fmt(s.get('clients_cpu_pct'), '.0f'):>15}")
    print()
    for n, per in summary.items():
        rg, rc = per.get("ratio_gbps"), per.get("ratio_cpu_s_per_gb")
        print(f"tunconnector/openvpn, N={n}: Gbit/s {'n/a' if rg is None else f'x{rg:.2f}'}, "
              f"server CPU s/GB {'n/a' if rc is None else f'x{rc:.2f}'}")
    for r in runs:
        if r.get("error"):
            print(f"\n{r['impl']} N={r['clients']} round {r['round']}: FAILED: "
                  f"{r['error'].splitlines()[0]}\n{r.get('server_log_tail', '')}")
        if r["impl"] == "tunconnector" and r.get("server_log_notable"):
            print(f"\ntunconnector server log, N={r['clients']} round {r['round']} "
                  f"({r['server_log']}):")
            for ln in r["server_log_notable"][:10]:
                print(f"  {ln}")


# ------------------------------------------------------------------ main
def _counts(text: str) -> list[int]:
    counts = [int(x) for x in text.split(",") if x.strip()]
    if not counts or min(counts) < 1 or max(counts) > 250:
        raise argparse.ArgumentTypeError("client counts between 1 and 250, e.g. 1,4")
    return counts


def _on_term(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ovpnserver",
                                 description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10.0, help="iperf3 -t (default 10)")
    ap.add_argument("--clients", type=_counts, default=[1, 4],
                    help="client counts, comma-separated (default 1,4)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat, alternating which server goes first (default 1)")
    ap.add_argument("--reverse", action="store_true",
                    help="iperf3 -R: the server sends to its clients (default: clients send)")
    ap.add_argument("--json", type=Path, help="write every number here")
    ap.add_argument("--keep", type=Path,
                    help="copy the work directory (configs, PKI, logs) here at the end")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench.ovpnserver: needs root (network namespaces, TUN devices)",
              file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with it ignored
    mach = machine()
    print(f"load at start: {mach['uptime_at_start']}", flush=True)
    runs: list[dict[str, Any]] = []
    interrupted = False
    with tempfile.TemporaryDirectory(prefix="tcovpnsrv-") as tmp:
        wd = Path(tmp)
        wd.chmod(0o755)
        lab = Lab(max(args.clients), wd)
        lab.reverse = args.reverse
        try:
            make_pki(wd, max(args.clients))
            lab.up()
            for rnd in range(1, args.rounds + 1):
                order = IMPLS if rnd % 2 == 1 else IMPLS[::-1]
                for n in args.clients:
                    for impl in order:
                        print(f"round {rnd}, N={n}, {impl} ...", end=" ", flush=True)
                        row = lab.measure(impl, n, args.seconds, f"{impl}-n{n}-r{rnd}")
                        row["round"] = rnd
                        row["loadavg_after"] = round(os.getloadavg()[0], 2)
                        runs.append(row)
                        print(f"{row['gbps']} Gbit/s" if row.get("gbps") is not None
                              else f"FAILED: {row['error'].splitlines()[0]}", flush=True)
        except KeyboardInterrupt:
            interrupted = True
            print("\ninterrupted: cleaning up", file=sys.stderr)
        finally:
            lab.close()
            if args.keep:
                import shutil
                shutil.copytree(wd, args.keep, dirs_exist_ok=True)
    summary = summarise(runs, args.clients)
    mach["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    print_report(mach, runs, summary, args)
    if args.json:
        doc = {"machine": mach, "seconds": args.seconds, "rounds": args.rounds,
               "reverse": args.reverse, "clients": args.clients, "summary": summary, "runs": runs,
               "interrupted": interrupted}
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if interrupted:
        return 130
    return 0 if runs and all(r.get("gbps") is not None for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
