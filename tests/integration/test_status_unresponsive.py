"""``tunconnector status`` names a daemon that holds its control socket but does not
answer (SIGSTOP), exits non-zero, and does so without waiting out a timeout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from harness import Env
from netns import tunconnector_cmd, wait_for

from tunconnector.status import query_all


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def test_status_names_a_stopped_daemon_and_fails_fast(env: Env) -> None:
    server = env.config_daemon(env.a, [{
        "name": "srv", "mode": "server", "device": "tc0", "port": 55558,
        "address": ["10.77.0.1/24"], "proto": "udp", "framing": "native"}], "server")
    server.wait_state("down", timeout=30.0)  # start-up: slow on a loaded machine
    assert server.proc is not None
    # `ip netns exec` execs the daemon: the process we started is the daemon itself
    pid = server.proc.pid
    sock = server.ctl / f"{pid}.sock"
    assert sock.exists()
    argv = tunconnector_cmd("status", "--control-dir", str(server.ctl))
    # "Fast" is about the daemon, not the CLI's start-up (seconds on a loaded machine): a
    # stopped daemon is named at once, long before the (long) timeout given here; the
    # query itself, in this process, is timed against that same timeout.
    timeout = 60.0
    server.proc.send_signal(signal.SIGSTOP)
    try:
        assert wait_for(lambda: _proc_state(pid) in ("T", "t"), timeout=10)
        t0 = time.monotonic()
        replies = query_all(str(server.ctl), timeout=timeout)
        took_query = time.monotonic() - t0
        t0 = time.monotonic()
        res = subprocess.run(argv + ["--timeout", str(timeout)], capture_output=True,
                             text=True, timeout=2 * timeout)
        took = time.monotonic() - t0
        js = subprocess.run(argv + ["--json"], capture_output=True, text=True, timeout=30)
    finally:
        server.proc.send_signal(signal.SIGCONT)
    print(f"status of a stopped daemon: query {took_query:.3f}s, CLI rc {res.returncode} "
          f"in {took:.2f}s: {res.stdout}")
    assert [r.get("unresponsive") for r in replies] == [True], replies
    assert took_query < 2.0, f"the query waited {took_query:.2f}s for a stopped daemon"
    assert took < timeout / 2, f"the CLI took {took:.2f}s: it waited out its timeout"
    assert res.returncode == 1, res
    assert f"daemon pid {pid}" in res.stdout and "NOT RESPONDING" in res.stdout, res.stdout
    assert str(sock) in res.stdout and "stopped" in res.stdout, res.stdout
    assert "no running tunconnector daemon" not in res.stdout
    assert js.returncode == 1 and '"unresponsive": true' in js.stdout, js.stdout
    assert sock.exists()  # a stopped daemon's socket is not stale: never removed
    # and once it runs again, status is back to normal
    ok = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "srv" in ok.stdout, ok


def test_a_hung_daemon_is_reported_after_the_timeout(tmp_path: Path) -> None:
    """Accepts connections, never answers (not stopped: a hung loop): named, not skipped."""
    path = tmp_path / f"{os.getpid()}.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    try:
        replies = query_all(str(tmp_path), timeout=0.3)
    finally:
        srv.close()
    assert replies == [{"pid": os.getpid(), "socket": str(path), "unresponsive": True,
                        "error": "no answer within 0.3s", "tunnels": []}]
    assert path.exists()
