"""Integrity check: send a file over TCP through the tunnel, hash it on the other side.

``python -m bench.xfer recv HOST PORT`` prints ``ready`` once listening, then
``<sha256> <bytes>`` after the sender closes. ``python -m bench.xfer send HOST PORT FILE``.
"""

from __future__ import annotations

import hashlib
import socket
import sys


def recv(host: str, port: int, timeout: float = 60.0) -> None:
    srv = socket.create_server((host, port), reuse_port=False)
    srv.settimeout(timeout)
    print("ready", flush=True)
    conn, _ = srv.accept()
    conn.settimeout(timeout)
    h = hashlib.sha256()
    n = 0
    buf = bytearray(1 << 20)
    while True:
        k = conn.recv_into(buf)
        if not k:
            break
        h.update(memoryview(buf)[:k])
        n += k
    print(h.hexdigest(), n, flush=True)


def send(host: str, port: int, path: str, timeout: float = 60.0) -> None:
    with socket.create_connection((host, port), timeout=timeout) as s, open(path, "rb") as fh:
        s.sendfile(fh)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)


def main(argv: list[str]) -> int:
    if argv[0] == "recv":
        recv(argv[1], int(argv[2]))
    elif argv[0] == "send":
        send(argv[1], int(argv[2]), argv[3])
    else:
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
