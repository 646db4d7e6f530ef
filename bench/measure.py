"""One measurement each: iperf3 TCP, 64-byte UDP rate, ping RTT, CPU ticks, sha256."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from .netns import Topology, sh

TICK = os.sysconf("SC_CLK_TCK")
IPERF_PORT = 5201
CC = ["-C", os.environ["BENCH_CC"]] if os.environ.get("BENCH_CC") else []


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime of the given processes (their threads included), in seconds."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / TICK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class IperfServer:
    """iperf3 -s in the receiving namespace, restarted when a test leaves it wedged."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.stop()
        self.proc = subprocess.Popen(
            self.topo.exec_args(self.topo.ns_b, ["iperf3", "-s", "-p", str(IPERF_PORT)]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            r = self.topo.run(self.topo.ns_b, ["ss", "-Hltn", f"sport = :{IPERF_PORT}"],
                              check=False, timeout=5)
            if r.stdout.strip():
                return
            time.sleep(0.05)  # polling a listen socket: no event to wait on across netns
        raise RuntimeError("iperf3 server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def iperf(topo: Topology, server: IperfServer, target: str, args: list[str],
          seconds: float) -> dict:
    cmd = ["iperf3", "-c", target, "-p", str(IPERF_PORT), "-J", "-t", str(seconds), *CC,
           "--connect-timeout", "3000", *args]
    try:
        r = topo.run(topo.ns_a, cmd, check=False, timeout=seconds + 20)
    except subprocess.TimeoutExpired:
        server.start()
        raise RuntimeError("iperf3 timed out") from None
    try:
        data = json.loads(r.stdout)
    except json.JSONDecodeError:
        server.start()
        raise RuntimeError(f"iperf3 failed: {r.stderr.strip()[:200]}") from None
    if "error" in data:
        server.start()
        raise RuntimeError(f"iperf3: {data['error']}")
    return data


def tcp_gbps(topo: Topology, server: IperfServer, target: str, streams: int,
             seconds: float) -> float:
    d = iperf(topo, server, target, ["-P", str(streams)], seconds)
    return float(d["end"]["sum_received"]["bits_per_second"]) / 1e9


def udp64_pps(topo: Topology, server: IperfServer, target: str, seconds: float) -> float:
    """Packets per second received with 64-byte UDP payloads sent as fast as possible."""
    d = iperf(topo, server, target, ["-u", "-l", "64", "-b", "0"], seconds)
    s = d["end"]["sum"]
    got = int(s["packets"]) - int(s.get("lost_packets", 0))
    return max(0.0, got / float(s["seconds"]))


def ping_rtt_ms(topo: Topology, target: str, count: int, ns: str | None = None) -> float:
    """Mean RTT of ``count`` pings 10 ms apart, after 5 warm-up pings (every peer alike:
    first packets pay for ARP/neighbour entries, route caches and, in a fresh Python
    daemon, code paths run for the first time). From ``ns``, ``ns_a`` if not given."""
    ns = ns or topo.ns_a
    topo.run(ns, ["ping", "-n", "-q", "-c", "5", "-i", "0.05", "-W", "1", target],
             check=False, timeout=10)
    r = topo.run(ns, ["ping", "-n", "-q", "-c", str(count), "-i", "0.01", "-W", "1",
                             target], check=False, timeout=count * 0.05 + 10)
    m = re.search(r"= [\d.]+/([\d.]+)/", r.stdout)
    if not m:
        raise RuntimeError(f"ping failed: {r.stdout.strip()[-200:]}")
    return float(m.group(1))


def make_payload(path: Path, size: int = 32 << 20) -> str:
    """Random file of ``size`` bytes (made once per run); returns its sha256."""
    if not path.exists() or path.stat().st_size != size:
        with path.open("wb") as fh:
            fh.write(os.urandom(size))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sha_through(topo: Topology, target: str, payload: Path, port: int = 5600) -> tuple[str, float]:
    """sha256 of the payload as received through the tunnel, and the seconds it took."""
    py = sys.executable
    recv = subprocess.Popen(
        topo.exec_args(topo.ns_b, [py, "-m", "bench.xfer", "recv", target, str(port)]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=str(Path(__file__).resolve().parent.parent))
    try:
        assert recv.stdout is not None
        line = recv.stdout.readline().strip()
        if line != "ready":
            err = recv.stderr.read() if recv.stderr else ""
            raise RuntimeError(f"receiver failed: {line} {err}")
        t0 = time.monotonic()
        sh(topo.exec_args(topo.ns_a, [py, "-m", "bench.xfer", "send", target, str(port),
                                      str(payload)]), timeout=90)
        out, err = recv.communicate(timeout=30)
        dt = time.monotonic() - t0
        digest = out.split()[0] if out.split() else f"error: {err.strip()[-200:]}"
        return digest, dt
    finally:
        if recv.poll() is None:
            recv.kill()
            recv.wait()
