"""``tunconnector demo``: two network namespaces, a tunnel between them, traffic through it.

Builds the lab (namespaces, a veth pair, addresses), starts a server and
a client daemon (this very CLI) one in each namespace, pings through the tunnel, pushes
a bulk transfer and reports its rate and sha256, then removes everything it made, also
on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .errors import TunconnectorError
from .io.netns import setns

UNDERLAY = ("172.31.250.1", "172.31.250.2")
INNER = ("10.99.0.1", "10.99.0.2")


@contextlib.contextmanager
def _lab(tag: str) -> Iterator[tuple[str, str]]:
    """The lab is the operator's part, built as an operator would: with iproute2.

    (The daemon itself configures its devices through pyroute2 only.)
    """
    a, b = f"tcdemo-a-{tag}", f"tcdemo-b-{tag}"
    va, vb = f"tcd{tag}a", f"tcd{tag}b"
    made: list[str] = []

    def ip(*args: str) -> None:
        res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
        if res.returncode != 0:
            raise TunconnectorError(f"demo lab: ip {' '.join(args)}: {res.stderr.strip()}")

    try:
        for ns in (a, b):
            ip("netns", "add", ns)
            made.append(ns)
        ip("link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        for ns, dev, addr in ((a, va, UNDERLAY[0]), (b, vb, UNDERLAY[1])):
            ip("-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def _in_ns(ns: str) -> Callable[[], None]:
    return lambda: setns(ns)


def _status(ctl: str) -> list[dict[str, Any]]:
    from .status import query_all

    return [t for r in query_all(ctl) for t in r.get("tunnels", [])]


def _wait_up(ctl: str, procs: list[subprocess.Popen[bytes]], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise TunconnectorError(f"a demo daemon exited with code {p.returncode}")
        st = _status(ctl)
        if len(st) == 2 and all(t["state"] == "up" for t in st):
            return
        time.sleep(0.1)
    raise TunconnectorError("the demo tunnel did not come up within 15 s")


def _bulk(a: str, b: str, nbytes: int) -> tuple[float, str, str]:
    """Send nbytes from namespace b to a's tunnel address; (seconds, sent sha, got sha)."""
    result: dict[str, Any] = {}
    ready = threading.Event()

    def receiver() -> None:
        setns(a)  # per thread: only this thread moves
        srv = socket.create_server((INNER[0], 5999))
        srv.settimeout(30)
        ready.set()
        conn, _ = srv.accept()
        h = hashlib.sha256()
        while chunk := conn.recv(1 << 20):
            h.update(chunk)
        result["got"] = h.hexdigest()
        conn.close()
        srv.close()

    t = threading.Thread(target=receiver, daemon=True)
    t.start()
    if not ready.wait(10):
        raise TunconnectorError("demo receiver did not start")
    sent = hashlib.sha256()
    block = os.urandom(1 << 20)

    def sender() -> None:
        setns(b)
        s = socket.create_connection((INNER[0], 5999), timeout=30)
        start = time.monotonic()
        left = nbytes
        while left > 0:
            chunk = block[: min(len(block), left)]
            s.sendall(chunk)
            sent.update(chunk)
            left -= len(chunk)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
        result["secs"] = time.monotonic() - start
        s.close()

    ts = threading.Thread(target=sender, daemon=True)
    ts.start()
    ts.join(60)
    t.join(60)
    if "secs" not in result or "got" not in result:
        raise TunconnectorError("bulk transfer did not finish within 60 s")
    return result["secs"], sent.hexdigest(), result["got"]


def main(argv: Sequence[str] = ()) -> int:
    p = argparse.ArgumentParser(prog="tunconnector demo", description=__doc__)
    p.add_argument("--proto", choices=["udp", "tcp"], default="udp")
    p.add_argument("--dev-type", choices=["tun", "tap"], default="tun")
    p.add_argument("--key", action="store_true", help="encrypt with a throw-away key")
    p.add_argument("--megabytes", type=int, default=64)
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        raise TunconnectorError("the demo needs root (network namespaces, TUN devices)")
    tag = secrets.token_hex(2)
    procs: list[subprocess.Popen[bytes]] = []
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with tempfile.TemporaryDirectory(prefix="tcdemo-") as tmp, _lab(tag) as (a, b):
        try:
            ctl = os.path.join(tmp, "ctl")
            extra = ["--proto", args.proto, "--dev-type", args.dev_type,
                     "--keepalive", "2", "--dead-after", "10"]
            if args.key:
                from .keys import generate_psk

                keyfile = os.path.join(tmp, "demo.key")
                fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(generate_psk() + "\n")
                extra += ["--key", keyfile]
            env = dict(os.environ, TUNCONNECTOR_CONTROL_DIR=ctl)
            me = [sys.executable, "-m", "tunconnector"]
            print(f"== lab: namespaces {a} ({UNDERLAY[0]}) and {b} ({UNDERLAY[1]}) over veth")
            logs = [open(os.path.join(tmp, f"{n}.log"), "wb") for n in ("server", "client")]
            procs.append(subprocess.Popen(
                [*me, "-m", "server", "-p", "tcdemo0", "-s", f"{INNER[0]}/24", "-i", "55556",
                 *extra], preexec_fn=_in_ns(a), env=env, stdout=logs[0],
                stderr=subprocess.STDOUT))
            procs.append(subprocess.Popen(
                [*me, "-m", "client", "-n", "tcdemo0", "-c", f"{INNER[1]}/24",
                 "-r", UNDERLAY[0], "-o", "55556", *extra],
                preexec_fn=_in_ns(b), env=env, stdout=logs[1], stderr=subprocess.STDOUT))
            _wait_up(ctl, procs)
            print(f"== tunnel up: {args.dev_type} over {args.proto}"
                  f"{' (encrypted)' if args.key else ''}: {INNER[1]} -> {INNER[0]}")
            ping = subprocess.run(["ping", "-n", "-c", "5", "-i", "0.2", INNER[0]],
                                  preexec_fn=_in_ns(b), capture_output=True, text=True,
                                  timeout=30)
            print(ping.stdout.strip())
            if ping.returncode != 0:
                raise TunconnectorError("ping through the tunnel failed")
            nbytes = args.megabytes << 20
            secs, want, got = _bulk(a, b, nbytes)
            rate = nbytes * 8 / secs / 1e6
            print(f"== bulk: {args.megabytes} MiB through the tunnel in {secs:.2f} s "
                  f"= {rate:.0f} Mbit/s; sha256 {'equal' if want == got else 'DIFFERENT'}")
            print("== status:")
            for t in _status(ctl):
                print(json.dumps({k: t[k] for k in ("name", "state", "transport", "device",
                                                    "peer", "rx_bytes", "tx_bytes",
                                                    "drops")}))
            return 0 if want == got else 1
        except KeyboardInterrupt:
            print("\n== interrupted, cleaning up")
            return 130
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            signal.signal(signal.SIGTERM, previous)
            print("== removed namespaces, veth and tunnels")
