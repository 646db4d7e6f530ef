"""A TCP server under unauthenticated connections: bounded, timed out, live tunnel untouched."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from harness import PY, Env
from netns import wait_for
from test_core import pair

FLOOD = str(Path(__file__).resolve().parent.parent / "tools" / "tcp_flood.py")
#: what the server keeps at most: the live connection and the unproven ones
BOUND = 1 + 64


def _established(env: Env, port: int = 55556) -> int:
    res = env.a.run("ss", "-Htn", "state", "established", f"( sport = :{port} )")
    return len([line for line in res.stdout.splitlines() if line.strip()])


def test_unproven_connections_bounded_and_expire(env: Env) -> None:
    server, client = pair(env, "tun", "tcp", "native")
    client.wait_state("up")  # type: ignore[attr-defined]
    flood = env.b.popen(PY, FLOOD, env.lab.a_addrs[0], "55556", "--conns", "300",
                        "--duration", "25", stdout=subprocess.PIPE, text=True)
    try:
        assert flood.stdout is not None
        ready = flood.stdout.readline()
        assert ready.startswith("ready"), ready
        # the live tunnel keeps working while 300 strangers hold connections
        sent, got = env.b.ping("10.77.0.1", count=20, interval=0.05)
        assert sent == 20 and got >= sent - 1, (sent, got)
        # never more than the bound is kept (oldest dropped first) ...
        assert wait_for(lambda: _established(env) <= BOUND, timeout=10), _established(env)
        drops = server.tunnel()["drops"]  # type: ignore[attr-defined]
        assert drops.get("unproven_evicted", 0) >= 1, drops
        # ... a connection holding most of a 70 KB frame is closed at once ...
        assert drops.get("unproven_overflow", 0) >= 1, drops
        # ... a restarted client is served among the strangers (how fast: bench.unproven;
        # here the bound only covers a slow start of the new process on a busy machine) ...
        client.kill9()  # type: ignore[attr-defined]
        restarted = env.daemon(env.b, client.argv, "client2")  # type: ignore[attr-defined]
        t0 = time.monotonic()
        assert env.b.wait_ping("10.77.0.1", timeout=20.0), (
            server.log() + restarted.log())  # type: ignore[attr-defined]
        print(f"restarted client served after {time.monotonic() - t0:.2f}s")
        # ... and the rest are closed when their time to prove themselves is over
        assert wait_for(lambda: _established(env) == 1, timeout=15), _established(env)
        st = server.tunnel()  # type: ignore[attr-defined]
        assert st["state"] == "up" and st["drops"].get("unproven_timeout", 0) >= 1, st
    finally:
        flood.kill()
        flood.wait(5)
    assert env.b.ping("10.77.0.1", count=3, interval=0.1) == (3, 3)


def test_bad_length_counted_once_and_logged_rate_limited(env: Env) -> None:
    server, client = pair(env, "tun", "tcp", "native")
    client.wait_state("up")  # type: ignore[attr-defined]
    script = (
        "import socket\n"
        "for i in range(20):\n"
        f"    c=socket.create_connection(('{env.lab.a_addrs[0]}',55556))\n"
        "    c.sendall(b'\\xff\\xff\\xff\\xff')\n"
        "    c.recv(10)\n"  # until the server closes it
        "    c.close()\n"
    )
    env.b.run(PY, "-c", script, timeout=30)
    assert wait_for(lambda: server.tunnel()["drops"].get("bad_length", 0) >= 20, timeout=5)  # type: ignore[attr-defined]
    drops = server.tunnel()["drops"]  # type: ignore[attr-defined]
    assert drops["bad_length"] == 20, json.dumps(drops)
    warnings = server.log().count("closing connection")  # type: ignore[attr-defined]
    assert 1 <= warnings <= 2, server.log()  # type: ignore[attr-defined]
    assert env.b.ping("10.77.0.1", count=3, interval=0.1) == (3, 3)
