"""Unauthenticated TCP connections against a tunnel server (a hostile client's view).

    python tcp_flood.py HOST PORT --conns N [--duration S] [--reconnect]

Opens N connections in three kinds, in turn: ``idle`` (sends nothing), ``slow`` (two
bytes of a length, then one byte every ``--slow-every`` seconds) and ``partial`` (a
70,000-byte length and 69,000 bytes of it, never the rest). Prints ``ready N`` once all
were attempted, then holds them for ``--duration`` seconds; with ``--reconnect`` every
connection the server closes is opened again (at most ``--rate`` per second), so the
pressure stays. Prints one JSON line of counts at the end.
"""

from __future__ import annotations

import argparse
import json
import resource
import selectors
import socket
import sys
import time

KINDS = ("idle", "slow", "partial")
PARTIAL = (70_000).to_bytes(4, "big") + b"\x01" * 69_000


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--slow-every", type=float, default=1.0)
    ap.add_argument("--reconnect", action="store_true")
    ap.add_argument("--rate", type=float, default=200.0, help="reconnects per second")
    ap.add_argument("--kinds", default=",".join(KINDS))
    args = ap.parse_args(argv)
    kinds = args.kinds.split(",")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.conns + 256)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    sel = selectors.DefaultSelector()
    counts = {"connects": 0, "connect_failed": 0, "closed_by_server": 0}
    slow_due: dict[socket.socket, float] = {}

    def open_one(kind: str) -> None:
        try:
            s = socket.create_connection((args.host, args.port), timeout=5)
        except OSError:
            counts["connect_failed"] += 1
            return
        counts["connects"] += 1
        try:
            if kind == "slow":
                s.sendall(b"\x00\x00")
                slow_due[s] = time.monotonic() + args.slow_every
            elif kind == "partial":
                s.settimeout(0.5)
                s.sendall(PARTIAL)
        except OSError:
            pass  # closed while sending: noticed below
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, kind)

    for i in range(args.conns):
        open_one(kinds[i % len(kinds)])
    print(f"ready {counts['connects']}", flush=True)

    end = time.monotonic() + args.duration
    to_reopen: list[str] = []
    budget = 0.0
    last = time.monotonic()
    while (now := time.monotonic()) < end:
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                continue  # a keepalive or hello from the server: ignore it
            counts["closed_by_server"] += 1
            sel.unregister(s)
            slow_due.pop(s, None)
            s.close()
            if args.reconnect:
                to_reopen.append(key.data)
        for s, due in list(slow_due.items()):
            if now >= due:
                try:
                    s.send(b"\x01")
                except OSError:
                    pass
                slow_due[s] = now + args.slow_every
        budget = min(args.rate, budget + (now - last) * args.rate)
        last = now
        while to_reopen and budget >= 1:
            budget -= 1
            open_one(to_reopen.pop())
    counts["open_at_end"] = len(sel.get_map())
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    print(json.dumps(counts), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
