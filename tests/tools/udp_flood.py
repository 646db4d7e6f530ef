"""A hostile datagram flood at a daemon's UDP port: junk, truncated, bit-flipped, replayed.

    python udp_flood.py HOST PORTS --seeds FILE [--rate R] [--duration S] [--procs N]
                        [--bind ADDR] [--batch B]

PORTS is a port or a range ``A-B`` (a client opens a new ephemeral port on each reconnect:
with a narrowed ``ip_local_port_range`` the flood follows it). ``--seeds`` holds real
datagrams of the attacked session, one hex string a line. The pool cycles through four
kinds in turn: ``junk`` (random bytes, half of them behind a real datagram's first 16
bytes, so they look well formed), ``truncated`` (a real datagram cut short), ``flipped``
(a real datagram with one bit flipped) and ``replayed`` (a real datagram as it was: sent
back to a server, its own datagrams are a reflection). Without seeds, junk only.

Python sends one datagram per syscall at best a few hundred thousand a second on one
core, and less with the interpreter's overhead: each of ``--procs`` processes sends
batches of ``--batch`` with ``sendmmsg(2)`` (through ctypes), paced to its share of
``--rate`` (0: as fast as it can). A port answering ICMP port-unreachable (the client
moved: the batch stops short or fails with ECONNREFUSED) is left alone for a second
(the kernel answers a closed port about once a second per source).
Prints ``{"ready": true}`` once every process is set up, waits for a line on stdin (go),
floods for ``--duration`` seconds, and prints one JSON line: sent, seconds, rate, counts
by kind and by port, refused, and when the flood started and ended (``time.time()``).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import errno
import json
import multiprocessing as mp
import os
import random
import socket
import sys
import time
from typing import Any

KINDS = ("junk", "truncated", "flipped", "replayed")
POOL = 4096
MAX_DATAGRAM = 1472
REST = 1.0  # seconds a port that answered unreachable is left alone


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_IoVec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t),
                ("msg_flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


def make_pool(seeds: list[bytes], rng: random.Random, size: int = POOL) -> list[bytes]:
    """``size`` datagrams, kind ``KINDS[i % 4]`` at index ``i`` (junk only without seeds)."""
    pool = []
    for i in range(size):
        kind = KINDS[i % 4] if seeds else "junk"
        real = rng.choice(seeds) if seeds else b""
        if kind == "junk":
            n = rng.randint(1, MAX_DATAGRAM)
            head = real[:16] if (real and i % 8 == 0) else b""
            pool.append(head + rng.randbytes(max(0, n - len(head))))
        elif kind == "truncated":
            pool.append(real[:rng.randint(1, len(real) - 1)] if len(real) > 1 else real)
        elif kind == "flipped":
            b = bytearray(real)
            bit = rng.randrange(len(b) * 8)
            b[bit // 8] ^= 1 << (bit % 8)
            pool.append(bytes(b))
        else:
            pool.append(real)
    return pool


class Batcher:
    """``sendmmsg`` over a fixed pool on a connected socket: no copies per send."""

    def __init__(self, sock: socket.socket, pool: list[bytes]) -> None:
        self.sock = sock
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.bufs = [ctypes.create_string_buffer(d, len(d)) for d in pool]
        self.iov = (_IoVec * len(pool))()
        self.msgs = (_MMsgHdr * len(pool))()
        for i, b in enumerate(self.bufs):
            self.iov[i].iov_base = ctypes.cast(b, ctypes.c_void_p)
            self.iov[i].iov_len = len(pool[i])
            self.msgs[i].msg_hdr.msg_iov = ctypes.pointer(self.iov[i])
            self.msgs[i].msg_hdr.msg_iovlen = 1
        self.base = ctypes.addressof(self.msgs)
        self.size = ctypes.sizeof(_MMsgHdr)

    def send(self, start: int, count: int) -> int:
        """Datagrams sent from pool index ``start`` (at most ``count``), or ``-errno``."""
        n = int(self.libc.sendmmsg(self.sock.fileno(),
                                   ctypes.c_void_p(self.base + start * self.size),
                                   ctypes.c_uint(count), 0))
        return n if n >= 0 else -ctypes.get_errno()


def _worker(wid: int, args: argparse.Namespace, seeds: list[bytes], ports: list[int],
            ready: Any, go: Any, out: Any) -> None:
    rng = random.Random(0x7E57 + wid)
    pool = make_pool(seeds, rng)
    batchers = []
    for port in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if args.bind:
            s.bind((args.bind, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        s.connect((args.host, port))
        batchers.append(Batcher(s, pool))
    ready.put(wid)
    go.wait()
    share = args.rate / args.procs if args.rate else 0.0
    by_port = [0] * len(ports)
    resting = [0.0] * len(ports)
    sent = refused = errors = 0
    idx = turn = 0
    t0 = time.monotonic()
    while True:
        now = time.monotonic()
        if now - t0 >= args.duration:
            break
        if share and sent >= (now - t0) * share:
            time.sleep(min(0.002, args.batch / share))
            continue
        turn = (turn + 1) % len(ports)
        if resting[turn] > now:
            if all(r > now for r in resting):
                time.sleep(0.005)
            continue
        want = min(args.batch, POOL - idx)
        n = batchers[turn].send(idx, want)
        if n > 0:
            sent += n
            by_port[turn] += n
            idx = (idx + n) % POOL
            if n < want:  # a blocking socket stops short on an error (ICMP unreachable)
                refused += 1
                resting[turn] = now + REST
        elif n in (-errno.ECONNREFUSED, -errno.EHOSTUNREACH, -errno.ENETUNREACH):
            refused += 1
            resting[turn] = now + REST
        elif n in (-errno.EAGAIN, -errno.ENOBUFS, -errno.EINTR):
            time.sleep(0.0005)
        else:
            errors += 1
            if errors > 1000:
                break
    seconds = time.monotonic() - t0
    # the pool cycles kinds in turn, and each process starts at index 0
    laps, rest = divmod(sent, POOL)
    kinds = dict.fromkeys(KINDS, 0)
    for j in range(POOL):
        kinds[KINDS[j % 4] if seeds else "junk"] += laps + (1 if j < rest else 0)
    out.put({"sent": sent, "seconds": seconds, "refused": refused, "errors": errors,
             "by_port": dict(zip(map(str, ports), by_port, strict=True)), "kinds": kinds})


def parse_ports(text: str) -> list[int]:
    lo, _, hi = text.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("ports", help="PORT or FIRST-LAST")
    ap.add_argument("--seeds", help="file of real datagrams, one hex string a line")
    ap.add_argument("--rate", type=float, default=120_000.0, help="datagrams/s, 0: max")
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--bind", default="", help="source address")
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)
    seeds: list[bytes] = []
    if args.seeds:
        with open(args.seeds) as fh:
            seeds = [bytes.fromhex(line) for line in fh.read().split() if line]
        seeds = [s for s in seeds if 0 < len(s) <= MAX_DATAGRAM]
    ports = parse_ports(args.ports)
    ctx = mp.get_context("fork")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(w, args, seeds, ports, ready, go, out),
                         daemon=True) for w in range(args.procs)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=60)
    print(json.dumps({"ready": True, "seeds": len(seeds), "pid": os.getpid()}), flush=True)
    sys.stdin.readline()
    started_at = time.time()
    go.set()
    results = [out.get(timeout=args.duration + 60) for _ in procs]
    ended_at = time.time()
    for p in procs:
        p.join(10)
    sent = sum(r["sent"] for r in results)
    seconds = max(r["seconds"] for r in results)
    kinds = {k: sum(r["kinds"][k] for r in results) for k in KINDS}
    by_port = {p: sum(r["by_port"][p] for r in results) for p in map(str, ports)}
    print(json.dumps({
        "sent": sent, "seconds": round(seconds, 3), "rate": round(sent / seconds if seconds
                                                                   else 0.0),
        "kinds": kinds, "by_port": by_port, "refused": sum(r["refused"] for r in results),
        "errors": sum(r["errors"] for r in results), "procs": args.procs,
        "started_at": started_at, "ended_at": ended_at}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
