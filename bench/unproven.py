"""A TCP tunnel server under unauthenticated connections: what its live tunnel sees.

    python -m bench.unproven [--conns 2000] [--attack 40] [--json FILE]

Two namespaces, a native TCP tunnel (server in B, client in A), and from A a hostile
client (tests/tools/tcp_flood.py) holding ``--conns`` connections to the server's port:
idle ones, slow-byte ones (two bytes of a length, then a byte a second) and ones holding
69 KB of a 70 KB frame; each one the server closes is opened again (up to 200/s), so the
pressure stays. Measured: ping loss and RTT through the tunnel during the attack, the time
until a client killed with SIGKILL and restarted is served again, and the server's RSS at
the start, at its peak and after the attacker left.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from .netns import UNDERLAY_B, Topology

REPO = Path(__file__).resolve().parent.parent
FLOOD = REPO / "tests" / "tools" / "tcp_flood.py"
PORT = 55599


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _ping(topo: Topology, count: int, interval: float) -> dict[str, float]:
    p = topo.run(topo.ns_a, ["ping", "-n", "-q", "-c", str(count), "-i", str(interval),
                             "-W", "2", "10.98.0.1"], check=False, timeout=count * interval + 30)
    m = re.search(r"(\d+) packets transmitted, (\d+) received", p.stdout)
    sent, got = (int(m.group(1)), int(m.group(2))) if m else (count, 0)
    rtt = re.search(r"= [\d.]+/([\d.]+)/([\d.]+)/", p.stdout)
    return {"sent": sent, "received": got, "loss_pct": round(100 * (sent - got) / sent, 2),
            "rtt_avg_ms": float(rtt.group(1)) if rtt else -1.0,
            "rtt_max_ms": float(rtt.group(2)) if rtt else -1.0}


def _wait_ping(topo: Topology, timeout: float, log: Path | None = None,
               marks: dict[str, float] | None = None) -> float | None:
    """Seconds until one echo gets through; ``marks["started"]``: until ``log`` says the
    tunnel started (the client's own start-up time, load on this machine included)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if log is not None and marks is not None and "started" not in marks:
            if "started:" in log.read_text(errors="replace"):
                marks["started"] = round(time.monotonic() - t0, 2)
        p = topo.run(topo.ns_a, ["ping", "-n", "-c", "1", "-W", "1", "10.98.0.1"],
                     check=False, timeout=5)
        if p.returncode == 0:
            return time.monotonic() - t0
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--attack", type=float, default=40.0, help="seconds the attacker stays")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--logs", type=Path, default=Path("/tmp"), help="where daemon logs go")
    args = ap.parse_args(argv)
    cli = [sys.executable, "-m", "tunconnector"]
    common = ["--proto", "tcp", "--keepalive", "1", "--dead-after", "4"]
    out: dict[str, object] = {"conns": args.conns, "date": time.strftime("%Y-%m-%d %H:%M")}
    with Topology() as topo:
        dev = topo.name("tcu")
        logs = {n: open(args.logs / f"unproven-{topo.suffix}-{n}.log", "ab")
                for n in ("server", "client", "client2")}
        out["logs"] = str(args.logs / f"unproven-{topo.suffix}-*.log")
        server = subprocess.Popen(topo.exec_args(topo.ns_b, [
            *cli, "-m", "server", "-p", dev, "-s", "10.98.0.1/24", "-i", str(PORT), *common]),
            stdout=logs["server"], stderr=subprocess.STDOUT)
        client_argv = topo.exec_args(topo.ns_a, [
            *cli, "-m", "client", "-n", dev, "-c", "10.98.0.2/24", "-r", UNDERLAY_B,
            "-o", str(PORT), *common])
        client = subprocess.Popen(client_argv, stdout=logs["client"], stderr=subprocess.STDOUT)
        flood = None
        try:
            if _wait_ping(topo, 30) is None:
                raise SystemExit("tunnel never came up")
            out["before"] = _ping(topo, 20, 0.05)
            rss0 = _rss_kib(server.pid)
            flood = subprocess.Popen(topo.exec_args(topo.ns_a, [
                sys.executable, str(FLOOD), UNDERLAY_B, str(PORT), "--conns", str(args.conns),
                "--duration", str(args.attack), "--reconnect"]),
                stdout=subprocess.PIPE, text=True)
            assert flood.stdout is not None
            t_start = time.monotonic()
            out["flood_ready"] = flood.stdout.readline().strip()
            out["flood_ready_s"] = round(time.monotonic() - t_start, 2)
            out["during"] = _ping(topo, 400, 0.05)
            peak = _rss_kib(server.pid)
            client.kill()
            client.wait(5)
            print(f"{time.strftime('%H:%M:%S')} client restarted", flush=True)
            client = subprocess.Popen(client_argv, stdout=logs["client2"],
                                      stderr=subprocess.STDOUT)
            marks: dict[str, float] = {}
            took = _wait_ping(topo, 30, Path(logs["client2"].name), marks)
            out["restart_served_s"] = None if took is None else round(took, 2)
            out["restart_client_started_s"] = marks.get("started")
            peak = max(peak, _rss_kib(server.pid))
            out["flood_still_on"] = time.monotonic() - t_start < args.attack
            counts = flood.communicate(timeout=args.attack + 60)[0].strip().splitlines()
            out["flood"] = json.loads(counts[-1]) if counts else None
            time.sleep(12.0)  # unproven connections get 10 s to prove themselves
            rss1 = _rss_kib(server.pid)
            out["after"] = _ping(topo, 20, 0.05)
            out["rss_kib"] = {"start": rss0, "peak": peak, "after": rss1,
                              "after_minus_start": rss1 - rss0}
        finally:
            for p in (flood, client, server):
                if p is not None and p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()
            for f in logs.values():
                f.close()
    print(json.dumps(out, indent=2))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
