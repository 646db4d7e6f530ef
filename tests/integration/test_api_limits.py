"""The API under hostile bodies: 50 MB requests, unauthenticated and authenticated, sent
to a real daemon; each is answered 401 or 413 and the daemon's RSS stays flat.

The daemon runs in namespace A with only an ``[api]`` section; the client streams the
bodies through a raw socket opened inside A (so nothing leaves the namespace) and keeps
sending until the server answers or closes.
"""

from __future__ import annotations

import base64
import json
import re
import selectors
import socket
import sys
import time
from pathlib import Path

from harness import Env
from netns import wait_for

from tunconnector.io.icmp import in_netns

USER, PASSWORD = "admin", "pw-7d1e"
AUTH = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
FIFTY_MB = 50 << 20
BLOCK = b"[" * (256 << 10)  # never valid JSON, never a complete value


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Client:
    def __init__(self, ns: str, port: int) -> None:
        self.ns, self.port = ns, port

    def connect(self) -> socket.socket:
        return in_netns(self.ns, lambda: socket.create_connection(("127.0.0.1", self.port), 5))

    def post(self, path: str, total: int, *, auth: bool, chunked: bool,
             body: bytes | None = None) -> tuple[int, bytes, int]:
        """POST ``total`` bytes (or ``body``); returns (status, response body, bytes sent)."""
        sock = self.connect()
        head = [f"POST {path} HTTP/1.1", "Host: api", "Content-Type: application/json"]
        if auth:
            head.append(f"Authorization: {AUTH}")
        if body is not None:
            total = len(body)
        head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}")
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sock.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        pending = body if body is not None else b""
        sent, answer, writing = 0, b"", True
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                if writing and not pending:
                    if sent >= total:
                        pending = b"0\r\n\r\n" if chunked else b""
                        writing = bool(pending)
                        if not writing:
                            sel.modify(sock, selectors.EVENT_READ)
                    else:
                        data = BLOCK[: total - sent]
                        pending = (f"{len(data):x}\r\n".encode() + data + b"\r\n") if chunked \
                            else data
                        sent += len(data)
                for _, events in sel.select(5):
                    if events & selectors.EVENT_READ:
                        try:
                            data = sock.recv(65536)
                        except ConnectionResetError:
                            data = b""
                        if not data:
                            return self._parse(answer, sent)
                        answer += data
                        if self._complete(answer):
                            return self._parse(answer, sent)
                    if events & selectors.EVENT_WRITE and pending:
                        try:
                            n = sock.send(pending)
                        except (BrokenPipeError, ConnectionResetError):
                            writing, pending = False, b""
                            sel.modify(sock, selectors.EVENT_READ)
                            continue
                        pending = pending[n:]
                        if not pending and sent >= total and not chunked:
                            writing = False
                            sel.modify(sock, selectors.EVENT_READ)
            raise AssertionError(f"no answer after 60 s ({sent} bytes sent)")
        finally:
            sel.close()
            sock.close()

    @staticmethod
    def _complete(answer: bytes) -> bool:
        head, sep, rest = answer.partition(b"\r\n\r\n")
        if not sep:
            return False
        m = re.search(rb"content-length: *(\d+)", head, re.I)
        return m is not None and len(rest) >= int(m.group(1))

    @staticmethod
    def _parse(answer: bytes, sent: int) -> tuple[int, bytes, int]:
        assert answer.startswith(b"HTTP/1.1 "), f"no HTTP answer ({sent} bytes sent): {answer!r}"
        head, _, rest = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), rest, sent


def test_huge_bodies_get_401_or_413_and_rss_stays_flat(env: Env) -> None:
    port = 18000 + (hash(env.a.ns) % 2000)
    cfg = env.workdir / "api.toml"
    cfg.write_text(f'[api]\nlisten = "127.0.0.1:{port}"\nusername = "{USER}"\n'
                   f'password = "{PASSWORD}"\nauth_max_failures = 1000\n')
    d = env.daemon(env.a, [sys.executable, "-m", "tunconnector", "run", "-c", str(cfg)], "api")
    client = Client(env.a.ns, port)

    def up() -> bool:
        try:
            client.connect().close()
            return True
        except OSError:
            return False

    assert wait_for(up, 30, 0.1), d.log()
    assert d.proc is not None
    pid = d.proc.pid
    # warm up every path once (lazy imports, first allocations), then take the baseline
    small = json.dumps({"ip": "x" * 3000}).encode()
    for auth in (False, True):
        client.post("/v1/ping_test", 0, auth=auth, chunked=False, body=small)
        client.post("/v1/ping_test", 2 << 20, auth=auth, chunked=True)
    base = rss_kib(pid)

    outcomes = []
    for i in range(8):  # the hostile pass: eight unauthenticated 50 MB POSTs
        outcomes.append(client.post("/v1/ping_test", FIFTY_MB, auth=False, chunked=i % 2 == 1))
    for chunked in (False, True):  # with credentials: the limit still holds
        outcomes.append(client.post("/v1/ping_test", FIFTY_MB, auth=True, chunked=chunked))
    for status, _, _ in outcomes[:8]:
        assert status == 401, outcomes
    for status, body, _sent in outcomes[8:]:
        assert status == 413, (status, body[:200])
        assert len(body) < 200
    grown = (rss_kib(pid) - base) / 1024
    print(f"daemon RSS {base / 1024:.1f} MiB -> {rss_kib(pid) / 1024:.1f} MiB")
    assert grown <= 20, f"RSS grew by {grown:.1f} MiB"

    # an invalid body with credentials: 422 that does not echo the input
    status, body, _ = client.post("/v1/ping_test", 0, auth=True, chunked=False,
                                  body=json.dumps({"ip": "y" * 900_000}).encode())
    assert status == 422 and len(body) < 2000, (status, len(body))
    assert d.proc.poll() is None, d.log()
