"""Same-moment A/B of two builds: alternate them round by round on the same namespaces.

    python -m bench.ab --a CHECKOUT_A --b CHECKOUT_B [--rounds 2] [--seconds 5]
                       [--peers tc-tun-udp-aead,tc-tun-tcp-plain,...]

Hub peers (``tc-hub1-udp-aead``, ``tc-hub4-udp-aead``): a hub and 1 or 4 real TUN clients,
each client's iperf3 stream at once; reported with Jain's fairness index of the clients.

Why alternate: on a shared machine the load moves by more than the difference between two
builds; running A, B, A, B (per peer and round: A's tunnel started, one iperf3 stream
for ``--seconds`` and 100 pings 10 ms apart, stopped, then B's) puts both builds under the
same load. Each checkout runs its own code (``python -m tunconnector`` of the running
interpreter, with ``PYTHONPATH`` at the checkout). Reported per peer and build: Gbit/s and Gbit per
CPU-second of the two tunnel processes and mean ping RTT (means of the rounds), and B/A
for each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import measure, peers
from .netns import Topology

DEFAULT_PEERS = "tc-tun-udp-aead,tc-tun-tcp-plain,tc-tun-udp-plain-nooff,tc-tap-udp-plain"


def _use_build(build: Path) -> None:
    """Make ``python -m tunconnector`` run this checkout's code with this interpreter's deps.

    ``-m`` puts the working directory first on ``sys.path``, ahead of ``PYTHONPATH``: run
    from a checkout, both sides would run that checkout. ``PYTHONSAFEPATH`` leaves it out."""
    os.environ["PYTHONPATH"] = str(build)
    os.environ["PYTHONSAFEPATH"] = "1"


def _check_build(build: Path) -> None:
    """Refuse to compare a build whose daemon would import another checkout's code."""
    _use_build(build)
    r = subprocess.run([sys.executable, "-c", "import tunconnector; print(tunconnector.__file__)"],
                       capture_output=True, text=True, timeout=60)
    got = Path(r.stdout.strip()).resolve()
    if r.returncode != 0 or not got.is_relative_to(build.resolve()):
        raise SystemExit(f"{build}: its daemon would import {got or r.stderr.strip()[-200:]}")


def _one(peer: peers.Peer, build: Path, topo: Topology, server: measure.IperfServer,
         index: int, workdir: Path, seconds: float) -> dict[str, Any]:
    peers.TUNCONNECTOR = [sys.executable, "-m", "tunconnector"]
    _use_build(build)
    peer.start(topo, index, workdir)
    if isinstance(peer, peers.HubBenchPeer):  # N clients at once, each from its own namespace
        try:
            return peer.measure(topo, seconds)
        finally:
            peer.stop(topo)
    try:
        for attempt in range(3):  # iperf3 now and then refuses a test ("server is busy")
            c0 = measure.cpu_seconds(peer.pids)
            try:
                gbps = measure.tcp_gbps(topo, server, peer.target, 1, seconds)
            except RuntimeError:
                if attempt == 2:
                    raise
                continue
            cpu = measure.cpu_seconds(peer.pids) - c0
            break
        rtt = measure.ping_rtt_ms(topo, peer.target, 100)  # the latency lane's share
    finally:
        peer.stop(topo)
    return {"gbps": gbps, "cpu_s": cpu, "gbit_per_cpu_s": gbps * seconds / cpu if cpu else 0.0,
            "rtt_ms": rtt}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__)
    ap.add_argument("--a", type=Path, required=True, help="checkout of the previous build")
    ap.add_argument("--b", type=Path, required=True, help="checkout of the new build")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--peers", default=DEFAULT_PEERS)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    by_name = {p.name: p for p in [*peers.all_peers(), *peers.hub_peers()]}
    missing = [n for n in wanted if n not in by_name]
    if missing:
        print(f"unknown peers: {missing}", file=sys.stderr)
        return 2
    for build in (args.a, args.b):
        _check_build(build)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        n: {"A": [], "B": []} for n in wanted}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tcab-") as tmp, Topology() as topo:
        server = measure.IperfServer(topo)
        server.start()
        try:
            index = 0
            for rnd in range(args.rounds):
                for name in wanted:  # per peer A then B: each pair under the same load
                    for label, build in (("A", args.a), ("B", args.b)):
                        index += 1
                        row = _one(by_name[name], build, topo, server, index, Path(tmp),
                                   args.seconds)
                        runs[name][label].append(row)
                        print(f"round {rnd + 1} {label} {name:24} {row['gbps']:6.2f} Gbit/s "
                              f"{row['gbit_per_cpu_s']:6.2f} Gbit/CPU-s "
                              f"{row['rtt_ms']:6.3f} ms"
                              + (f" Jain {row['jain']:.3f} each {row['each_gbps']}"
                                 if "jain" in row else ""), flush=True)
        finally:
            server.stop()
    summary: dict[str, Any] = {}
    for name, by in runs.items():
        s: dict[str, Any] = {}
        for label in ("A", "B"):
            keys = ("gbps", "gbit_per_cpu_s", "rtt_ms") + (("jain",) if "jain" in by[label][0]
                                                           else ())
            s[label] = {k: round(statistics.mean(r[k] for r in by[label]), 3) for k in keys}
        s["ratio_gbps"] = round(s["B"]["gbps"] / s["A"]["gbps"], 3) if s["A"]["gbps"] else None
        s["ratio_per_cpu"] = (round(s["B"]["gbit_per_cpu_s"] / s["A"]["gbit_per_cpu_s"], 3)
                              if s["A"]["gbit_per_cpu_s"] else None)
        s["ratio_rtt"] = (round(s["B"]["rtt_ms"] / s["A"]["rtt_ms"], 3)
                          if s["A"]["rtt_ms"] else None)
        summary[name] = s
    out = {"started": started, "load_at_start": round(load0, 2),
           "load_at_end": round(os.getloadavg()[0], 2), "rounds": args.rounds,
           "seconds": args.seconds, "summary": summary, "runs": runs}
    print("| peer | A Gbit/s | B Gbit/s | B/A | A Gbit/CPU-s | B Gbit/CPU-s | B/A "
          "| A RTT ms | B RTT ms | B/A |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, s in summary.items():
        print(f"| {name} | {s['A']['gbps']:.2f} | {s['B']['gbps']:.2f} | {s['ratio_gbps']} "
              f"| {s['A']['gbit_per_cpu_s']:.2f} | {s['B']['gbit_per_cpu_s']:.2f} "
              f"| {s['ratio_per_cpu']} | {s['A']['rtt_ms']:.3f} | {s['B']['rtt_ms']:.3f} "
              f"| {s['ratio_rtt']} |"
              + (f" Jain A {s['A']['jain']} B {s['B']['jain']}" if "jain" in s["A"] else ""))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
