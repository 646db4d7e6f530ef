"""Soak: an encrypted tunnel between two namespaces under rekeys, link flaps and bulk.

``sudo python -m bench.soak --duration 300`` (from the checkout, root): a client in
namespace A and a server in B, native framing over UDP with a PSK, rekeying every
``--rekey`` seconds; every ``--flap-every`` seconds A's underlay link goes down for
``--flap-for`` seconds; meanwhile TCP transfers of ``--chunk`` MiB run back to back
through the tunnel, each checked by sha256 on both ends; both daemons' RSS is sampled
every ``--sample`` seconds. Ends after ``--duration`` seconds (the transfer running then
is finished or abandoned after a grace period) and prints one JSON document; exit 0
when every finished transfer matched and both daemons are still alive.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .netns import UNDERLAY_B, Topology

REPO = Path(__file__).resolve().parent.parent
SERVER_IP, CLIENT_IP = "10.93.0.1", "10.93.0.2"
PORT = 55593
BLOCK = 1 << 20


# -- the transfer endpoints (run inside the namespaces) -----------------------------------
def recv(port: int) -> None:
    srv = socket.create_server(("0.0.0.0", port))
    srv.settimeout(120)
    print("ready", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(120)
    h, n, buf = hashlib.sha256(), 0, bytearray(BLOCK)
    while k := conn.recv_into(buf):
        h.update(memoryview(buf)[:k])
        n += k
    print(h.hexdigest(), n, flush=True)


def send(host: str, port: int, nbytes: int) -> None:
    block = os.urandom(BLOCK)
    h, sent = hashlib.sha256(), 0
    with socket.create_connection((host, port), timeout=120) as s:
        while sent < nbytes:
            piece = block[: nbytes - sent]
            s.sendall(piece)
            h.update(piece)
            sent += len(piece)
            block = block[1:] + block[:1]  # not the same block twice
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
    print(h.hexdigest(), sent, flush=True)


# -- the harness ----------------------------------------------------------------------------
def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def status(ctl: Path) -> dict[str, Any]:
    p = subprocess.run([sys.executable, "-m", "tunconnector", "status", "--json",
                        "--control-dir", str(ctl)], capture_output=True, text=True,
                       timeout=30)
    try:
        tunnels = [t for r in json.loads(p.stdout or "[]") for t in r.get("tunnels", [])]
    except ValueError:
        return {}
    return tunnels[0] if tunnels else {}


def toml(d: dict[str, Any]) -> str:
    lines = ["[[tunnel]]"]
    for k, v in d.items():
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=300.0, help="seconds (default 300)")
    ap.add_argument("--rekey", type=float, default=5.0, help="rekey_after_time (s)")
    ap.add_argument("--flap-every", type=float, default=30.0, help="seconds between flaps")
    ap.add_argument("--flap-for", type=float, default=1.0, help="seconds the link stays down")
    ap.add_argument("--chunk", type=int, default=256, help="MiB per checked transfer")
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--cipher", default="auto")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: needs root (network namespaces, TUN devices)", file=sys.stderr)
        return 2
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                              "args": vars(args), "transfers": [], "flaps": 0, "rss": {}}
    with Topology() as topo, tempfile.TemporaryDirectory(prefix="tc-soak-") as wd:
        work = Path(wd)
        key = work / "psk"
        from tunconnector.keys import generate_psk, write_key_file

        write_key_file(key, generate_psk())
        common = {"proto": "udp", "framing": "native", "key_file": str(key),
                  "cipher": args.cipher, "rekey_after_time": args.rekey,
                  "keepalive": 1.0, "dead_after": 4.0}
        procs: dict[str, subprocess.Popen[bytes]] = {}
        ctls: dict[str, Path] = {}
        logs = []
        for role, ns, extra in (
            ("server", topo.ns_b, {"port": PORT, "address": f"{SERVER_IP}/24"}),
            ("client", topo.ns_a, {"remote": UNDERLAY_B, "remote_port": PORT,
                                   "address": f"{CLIENT_IP}/24"}),
        ):
            cfg = work / f"{role}.toml"
            cfg.write_text(toml({"name": role, "mode": role, "device": topo.name("soak"),
                                 **extra, **common}))
            ctls[role] = work / f"ctl-{role}"
            log = open(work / f"{role}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(log)
            procs[role] = subprocess.Popen(
                topo.exec_args(ns, [sys.executable, "-m", "tunconnector", "run", "-c",
                                    str(cfg)]),
                stdout=log, stderr=subprocess.STDOUT,
                env=dict(env, TUNCONNECTOR_CONTROL_DIR=str(ctls[role])))
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if topo.run(topo.ns_a, ["ping", "-c", "1", "-W", "1", SERVER_IP],
                            check=False).returncode == 0:
                    break
            else:
                raise RuntimeError("the tunnel did not come up in 60 s")
            start = time.monotonic()
            end = start + args.duration
            samples: dict[str, list[float]] = {r: [] for r in procs}
            stop = threading.Event()

            def sampler() -> None:
                while not stop.wait(args.sample):
                    for r, p in procs.items():
                        v = rss_mib(p.pid)
                        if v is not None:
                            samples[r].append(round(v, 1))

            def flapper() -> None:
                while not stop.wait(args.flap_every):
                    topo.run(topo.ns_a, ["ip", "link", "set", topo.veth_a, "down"])
                    stop.wait(args.flap_for)
                    topo.run(topo.ns_a, ["ip", "link", "set", topo.veth_a, "up"])
                    result["flaps"] += 1

            for r, p in procs.items():
                samples[r].append(round(rss_mib(p.pid) or 0, 1))
            threads = [threading.Thread(target=sampler, daemon=True),
                       threading.Thread(target=flapper, daemon=True)]
            for t in threads:
                t.start()
            nbytes = args.chunk << 20
            while time.monotonic() < end:
                rx = subprocess.Popen(
                    topo.exec_args(topo.ns_b, [sys.executable, "-m", "bench.soak", "_recv",
                                               "5400"]),
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
                assert rx.stdout is not None
                rx.stdout.readline()  # ready
                t0 = time.monotonic()
                tx = subprocess.run(
                    topo.exec_args(topo.ns_a, [sys.executable, "-m", "bench.soak", "_send",
                                               SERVER_IP, "5400", str(nbytes)]),
                    capture_output=True, text=True, env=env, timeout=600, check=False)
                try:
                    rx_out, _ = rx.communicate(timeout=130)
                except subprocess.TimeoutExpired:
                    rx.kill()
                    rx_out, _ = rx.communicate()
                want, have = tx.stdout.split(), rx_out.split()
                ok = bool(want) and want == have
                result["transfers"].append({"bytes": nbytes, "secs": round(
                    time.monotonic() - t0, 1), "sha256_equal": ok})
            stop.set()
            for t in threads:
                t.join(10)
            for r, p in procs.items():
                samples[r].append(round(rss_mib(p.pid) or 0, 1))
                st = status(ctls[r])
                crypto = st.get("crypto") or {}
                result["rss"][r] = {"start": samples[r][0], "end": samples[r][-1],
                                    "max": max(samples[r]), "samples": len(samples[r])}
                result[r] = {"alive": p.poll() is None, "state": st.get("state"),
                             "rekeys": crypto.get("rekeys"),
                             "handshakes": crypto.get("handshakes"),
                             "cipher": crypto.get("cipher"), "drops": st.get("drops")}
            result["seconds"] = round(time.monotonic() - start, 1)
        finally:
            for p in procs.values():
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()
            for log in logs:
                log.close()
    done = result["transfers"]
    result["transferred_gib"] = round(sum(t["bytes"] for t in done) / (1 << 30), 2)
    result["all_sha256_equal"] = all(t["sha256_equal"] for t in done) and bool(done)
    print(json.dumps(result, indent=2))
    alive = all(result.get(r, {}).get("alive") for r in ("server", "client"))
    return 0 if result["all_sha256_equal"] and alive else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_recv":
        recv(int(sys.argv[2]))
    elif len(sys.argv) > 1 and sys.argv[1] == "_send":
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(main())
