"""Run every peer in one topology and write results.{json,md,png}."""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import measure, report, scale
from .netns import Topology, sh
from .peers import REPO, Peer, PeerError, all_peers


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30

    def ver(cmd: list[str], pick: str = "") -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            return "missing"
        lines = (out.stdout or out.stderr).strip().splitlines() or ["?"]
        return next((ln for ln in lines if pick in ln), lines[0])

    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(), "python": platform.python_version(),
        "openvpn": ver(["openvpn", "--version"]), "iperf3": ver(["iperf3", "--version"]),
        "socat": ver(["socat", "-V"], "version"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "loadavg_at_start": round(os.getloadavg()[0], 2),
    }


def measure_peer(peer: Peer, topo: Topology, server: measure.IperfServer, index: int,
                 workdir: Path, payload: Path, want_sha: str, secs: dict[str, float],
                 loss: float) -> dict[str, Any]:
    row: dict[str, Any] = {"name": peer.name, "kind": peer.kind, "layer": peer.layer,
                           "encrypted": peer.encrypted, "baseline": peer.baseline,
                           "description": peer.description}
    t_start = time.monotonic()
    try:
        peer.start(topo, index, workdir)
    except (PeerError, RuntimeError, subprocess.TimeoutExpired) as exc:
        row["error"] = str(exc).splitlines()[0][:300]
        row["error_detail"] = str(exc)[-2000:]
        peer.stop(topo)
        return row
    try:
        if loss:
            add_loss(topo, loss)
        cpu0 = measure.cpu_seconds(peer.pids)
        try:  # first, on the idle tunnel: bulk tests leave queues that would skew it
            row["rtt_ms"] = round(measure.ping_rtt_ms(topo, peer.target, int(secs["pings"])), 3)
        except RuntimeError as exc:
            row["rtt_ms_error"] = str(exc)[:200]
        for key, fn in (
            ("tcp1_gbps", lambda: measure.tcp_gbps(topo, server, peer.target, 1, secs["tcp"])),
            ("tcp4_gbps", lambda: measure.tcp_gbps(topo, server, peer.target, 4, secs["tcp"])),
        ):
            c0 = measure.cpu_seconds(peer.pids)
            try:
                row[key] = round(fn(), 3)
            except RuntimeError as exc:
                row[f"{key}_error"] = str(exc)[:200]
            row[f"{key}_cpu_s"] = round(measure.cpu_seconds(peer.pids) - c0, 2)
        try:
            row["udp64_kpps"] = round(
                measure.udp64_pps(topo, server, peer.target, secs["udp"]) / 1000, 1)
        except RuntimeError as exc:
            row["udp64_kpps_error"] = str(exc)[:200]
        try:
            digest, dt = measure.sha_through(topo, peer.target, payload)
            row["sha256_ok"] = digest == want_sha
            row["sha256_seconds"] = round(dt, 2)
            if digest != want_sha:
                row["sha256_got"] = digest
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            row["sha256_ok"] = False
            row["sha256_error"] = str(exc)[:200]
        row["cpu_s"] = round(measure.cpu_seconds(peer.pids) - cpu0, 2) if peer.pids else None
        row["alive"] = all(p.poll() is None for p in peer.procs)
    finally:
        if loss:
            del_loss(topo)
        peer.stop(topo)
    row["wall_s"] = round(time.monotonic() - t_start, 1)
    return row


LOSS_TABLE = "tcbench_loss"


def add_loss(topo: Topology, pct: float) -> None:
    """Drop ``pct`` % of underlay UDP/TCP packets arriving in ns B (nftables numgen)."""
    n = max(1, round(pct * 100))  # out of 10000
    rules = (f"table inet {LOSS_TABLE} {{\n chain in {{\n"
             f"  type filter hook input priority 0;\n"
             f"  iifname \"{topo.veth_b}\" meta l4proto {{ udp, tcp }} "
             f"numgen random mod 10000 < {n} drop\n }}\n}}\n")
    with tempfile.NamedTemporaryFile("w", suffix=".nft", delete=False) as fh:
        fh.write(rules)
    try:
        topo.run(topo.ns_b, ["nft", "-f", fh.name], timeout=10)
    finally:
        os.unlink(fh.name)
    # GSO/TSO skbs cross veth whole, and nftables would drop a whole burst at once; a
    # real NIC segments first, so loss hits single datagrams: segment before the veth.
    topo.run(topo.ns_a, ["ethtool", "-K", topo.veth_a, "gso", "off", "tso", "off",
                         "tx-udp-segmentation", "off"], check=False, timeout=10)


def del_loss(topo: Topology) -> None:
    topo.run(topo.ns_b, ["nft", "delete", "table", "inet", LOSS_TABLE], check=False,
             timeout=10)
    topo.run(topo.ns_a, ["ethtool", "-K", topo.veth_a, "gso", "on", "tso", "on",
                         "tx-udp-segmentation", "on"], check=False, timeout=10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="short run (about 2 minutes)")
    ap.add_argument("--peers", default="*",
                    help="comma-separated glob patterns of peer names (default: all)")
    ap.add_argument("--out", default="bench-results", help="output directory")
    ap.add_argument("--loss", type=float, default=0.0,
                    help="drop this percentage of underlay packets (nftables) during tests")
    ap.add_argument("--no-scale", action="store_true", help="skip the memory/idle-CPU test")
    ap.add_argument("--scale-tunnels", type=int, default=100)
    ap.add_argument("--list", action="store_true", help="list peer names and exit")
    ap.add_argument("--hub", type=int, default=None, metavar="N",
                    help="hub bench instead: one hub, N peers; prints one JSON line")
    ap.add_argument("--hub-idle", type=float, default=30.0, metavar="S",
                    help="hub bench: seconds of idle CPU measurement (default 30)")
    ap.add_argument("--hub-storm", type=float, default=10.0, metavar="S",
                    help="hub bench: seconds of back-to-back rekeys (default 10)")
    ap.add_argument("--hub-no-gbps", action="store_true",
                    help="hub bench: skip the ten real clients running iperf3")
    args = ap.parse_args(argv)
    if args.hub is not None:
        from . import hub

        os.environ["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")
        return hub.main(args.hub, storm=args.hub_storm, idle=args.hub_idle,
                        gbps=not args.hub_no_gbps)

    peers = all_peers()
    pats = [p.strip() for p in args.peers.split(",") if p.strip()]
    peers = [p for p in peers if any(fnmatch.fnmatch(p.name, pat) for pat in pats)]
    if args.list:
        for p in peers:
            print(f"{p.name:28} {p.description}")
        return 0
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    for tool in ("ip", "iperf3", "ping", "openvpn", "socat", "openssl"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            print(f"bench: {tool} is missing; peers needing it will fail", file=sys.stderr)
    os.environ["PYTHONPATH"] = str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")

    secs = ({"tcp": 2.0, "udp": 1.0, "pings": 20.0} if args.quick
            else {"tcp": 4.0, "udp": 2.0, "pings": 100.0})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "quick": args.quick, "loss_pct": args.loss,
                               "durations": secs, "peers": []}
    with tempfile.TemporaryDirectory(prefix="tcbench-") as tmp:
        workdir = Path(tmp)
        payload = workdir / "payload.bin"
        want = measure.make_payload(payload)
        results["sha256_expected"] = want
        with Topology() as topo:
            server = measure.IperfServer(topo)
            server.start()
            try:
                for i, peer in enumerate(peers):
                    print(f"[{time.monotonic() - t0:5.0f}s] {peer.name} ...", flush=True)
                    row = measure_peer(peer, topo, server, i + 1, workdir, payload, want, secs,
                                       args.loss)
                    results["peers"].append(row)
                    print("         " + report.row_summary(row), flush=True)
                    if row.get("error"):
                        (out / f"{peer.name}.error.log").write_text(row.get("error_detail", ""))
            finally:
                server.stop()
        if not args.no_scale:
            print(f"[{time.monotonic() - t0:5.0f}s] scale: 1 and {args.scale_tunnels} tunnels",
                  flush=True)
            try:
                results["scale"] = scale.run(workdir, args.scale_tunnels,
                                             idle_seconds=3.0 if args.quick else 10.0)
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as exc:
                results["scale"] = {"error": str(exc)[:500]}
            print("         " + json.dumps(results["scale"]), flush=True)
    results["total_seconds"] = round(time.monotonic() - t0, 1)
    results["machine"]["loadavg_at_end"] = round(os.getloadavg()[0], 2)
    report.write_all(results, out)
    print(f"wrote {out}/results.json, results.md, results.png "
          f"in {results['total_seconds']:.0f}s")
    print((out / "results.md").read_text())
    return 0


__all__ = ["main", "sh"]
