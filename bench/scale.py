"""Memory and idle cost: one daemon with 1 and with N tunnels (``tunconnector run -c``)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from . import measure, peers
from .netns import UNDERLAY_B, Topology


def tunnel_toml(mode: str, n: int, topo: Topology, base_port: int = 57000) -> str:
    stem = "ss" if mode == "server" else "sc"
    out = []
    for i in range(n):
        addr = f"10.{100 + i // 250}.{i % 250}.{2 if mode == 'server' else 1}/24"
        lines = [
            "[[tunnel]]", f'name = "t{i}"', f'mode = "{mode}"', 'dev_type = "tun"',
            f'device = "{stem}{topo.suffix}{i}"', f'address = "{addr}"', 'proto = "udp"',
            "keepalive = 10", "dead_after = 60",
        ]
        if mode == "server":
            lines.append(f"port = {base_port + i}")
        else:
            lines += [f'remote = "{UNDERLAY_B}"', f"remote_port = {base_port + i}"]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _count_devices(topo: Topology, ns: str, stem: str) -> int:
    r = topo.run(ns, ["ip", "-o", "link", "show"], check=False, timeout=10)
    return sum(1 for line in r.stdout.splitlines() if f": {stem}{topo.suffix}" in line)


def _one(workdir: Path, n: int, idle_seconds: float) -> dict[str, Any]:
    with Topology() as topo:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            for mode, ns in (("server", topo.ns_b), ("client", topo.ns_a)):
                cfg = workdir / f"scale-{mode}-{n}.toml"
                cfg.write_text(tunnel_toml(mode, n, topo))
                log = (workdir / f"scale-{mode}-{n}.log").open("wb")
                procs.append(subprocess.Popen(
                    topo.exec_args(ns, [*peers.TUNCONNECTOR, "run", "-c", str(cfg)]), stdout=log,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for p in procs:
                    if p.poll() is not None:
                        log_text = (workdir / f"scale-server-{n}.log").read_text()[-1500:]
                        raise RuntimeError(f"daemon exited {p.returncode}: {log_text}")
                if (_count_devices(topo, topo.ns_b, "ss") >= n
                        and _count_devices(topo, topo.ns_a, "sc") >= n):
                    break
                time.sleep(0.2)  # the daemons publish no readiness event we can read here
            else:
                raise RuntimeError(f"{n} tunnels did not appear within 60s")
            last = f"10.{100 + (n - 1) // 250}.{(n - 1) % 250}.2"
            ping_ok = False
            while time.monotonic() < deadline:  # the last tunnel configured answers
                r = topo.run(topo.ns_a, ["ping", "-c", "1", "-W", "1", last], check=False,
                             timeout=10)
                if r.returncode == 0:
                    ping_ok = True
                    break
            startup_s = round(time.monotonic() - (deadline - 60), 1)
            time.sleep(2.0)  # let start-up work (netlink, first keepalives) settle
            pids = [p.pid for p in procs]
            c0 = [measure.cpu_seconds([pid]) for pid in pids]
            t0 = time.monotonic()
            time.sleep(idle_seconds)  # the measurement window itself
            wall = time.monotonic() - t0
            c1 = [measure.cpu_seconds([pid]) for pid in pids]
            return {
                "tunnels": n,
                "ping_last_tunnel_ok": ping_ok,
                "startup_s": startup_s,
                "server_rss_mib": round(measure.rss_kib(pids[0]) / 1024, 1),
                "client_rss_mib": round(measure.rss_kib(pids[1]) / 1024, 1),
                "server_idle_cpu_pct": round(100 * (c1[0] - c0[0]) / wall, 2),
                "client_idle_cpu_pct": round(100 * (c1[1] - c0[1]) / wall, 2),
                "idle_window_s": round(wall, 1),
            }
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def run(workdir: Path, n: int, idle_seconds: float = 10.0) -> dict[str, Any]:
    return {"one": _one(workdir, 1, idle_seconds), "many": _one(workdir, n, idle_seconds)}
