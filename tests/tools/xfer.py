"""Bulk transfer checker: ``recv PORT`` prints "<bytes> <sha256>"; ``send HOST PORT N SEED``.

Used by integration tests to push N bytes of deterministic pseudo-random data through a
tunnel and compare digests at both ends.
"""

from __future__ import annotations

import hashlib
import random
import socket
import sys
import time


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def recv(port: int, timeout: float = 60.0) -> None:
    srv = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
    srv.settimeout(timeout)
    print("listening", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(timeout)
    h = hashlib.sha256()
    total = 0
    start = time.monotonic()
    while True:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        h.update(chunk)
        total += len(chunk)
    dt = time.monotonic() - start
    print(f"{total} {h.hexdigest()} {dt:.3f}", flush=True)


def send(host: str, port: int, n: int, seed: int, timeout: float = 60.0) -> None:
    data = payload(n, seed)
    deadline = time.monotonic() + 10
    while True:
        try:
            s = socket.create_connection((host, port), timeout=timeout)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    start = time.monotonic()
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
    dt = time.monotonic() - start
    print(f"{n} {hashlib.sha256(data).hexdigest()} {dt:.3f}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "recv":
        recv(int(sys.argv[2]))
    else:
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
