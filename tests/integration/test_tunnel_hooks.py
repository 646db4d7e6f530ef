"""Event hooks on real tunnels: up/down programs run, and failing or hanging ones are harmless."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness import Daemon, Env
from netns import free_port, tunconnector_cmd, wait_for

# writes its environment as JSON to argv[1]/<event>.json
RECORD = (
    "import json, os, sys; "
    "p = os.path.join(sys.argv[1], os.environ['TUNCONNECTOR_EVENT'] + '.json'); "
    "open(p + '.tmp', 'w').write(json.dumps(dict(os.environ))); os.replace(p + '.tmp', p)"
)


def _tunnel(daemon: Daemon) -> dict[str, Any] | None:
    """The daemon's tunnel, or None when one `status` call is slow (a loaded machine)."""
    try:
        return daemon.tunnel("hk")
    except subprocess.TimeoutExpired:
        return None


def _read(path: Path) -> dict[str, str] | None:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def test_hooks_run_and_never_hurt_the_tunnel(env: Env) -> None:
    port = free_port()
    out = env.workdir / "hooks"
    out.mkdir()
    record = [sys.executable, "-c", RECORD, str(out)]
    hang = f"import time; time.sleep(600)  # hang-{port}"
    # server: its up hook hangs (killed at 1.5 s), its down hook cannot even start
    server = env.config_daemon(env.a, [{
        "name": "hk", "mode": "server", "device": "tchk0", "address": "10.77.0.1/24",
        "port": port, "keepalive": 0.5, "dead_after": 3.0,
        "hooks": {"up": [sys.executable, "-c", hang], "down": [str(out / "missing")],
                  "timeout": 1.5},
    }], "server")
    # client: up and down record their environment; a failing peer_up is never used here
    client = env.config_daemon(env.b, [{
        "name": "hk", "mode": "client", "device": "tchk1", "address": "10.77.0.2/24",
        "remote": env.lab.a_addrs[0], "remote_port": port, "keepalive": 0.5,
        "dead_after": 3.0,
        "hooks": {"up": record, "down": record, "timeout": 10},
    }], "client")
    assert wait_for(lambda: (_tunnel(server) or {}).get("state") == "up", 30, 0.3), server.log()
    assert wait_for(lambda: (_tunnel(client) or {}).get("state") == "up", 30, 0.3), client.log()

    assert wait_for(lambda: _read(out / "up.json") is not None, timeout=20), client.log()
    up = _read(out / "up.json")
    assert up is not None
    assert up["TUNCONNECTOR_EVENT"] == "up"
    assert up["TUNCONNECTOR_TUNNEL"] == "hk"
    assert up["TUNCONNECTOR_DEVICE"] == "tchk1" and up["dev"] == "tchk1"
    assert up["TUNCONNECTOR_LOCAL_ADDRESS"] == "10.77.0.2/24"
    assert up["ifconfig_local"] == "10.77.0.2"
    assert up["TUNCONNECTOR_REMOTE_ADDRESS"] == "10.77.0.1"
    assert up["TUNCONNECTOR_PEER"] == f"{env.lab.a_addrs[0]}:{port}"
    # the device existed and was configured when the hook ran: the hook could route
    assert env.b.run("ip", "-j", "addr", "show", "tchk1").returncode == 0

    # the server's hanging up hook is killed at its timeout, and counted
    def server_timed_out() -> bool:
        t = _tunnel(server)
        return bool(t and (t.get("hooks") or {}).get("up", {}).get("timeout") == 1)

    assert wait_for(server_timed_out, timeout=30, interval=0.3), server.log()
    st = _tunnel(server)
    assert st is not None and st["state"] == "up"
    assert "killed" in st["hooks"]["last_error"]
    assert env.a.run("pgrep", "-f", f"hang-{port}", check=False).returncode == 1  # nothing left
    # traffic flows regardless
    assert env.b.ping("10.77.0.1", count=3, interval=0.2) == (3, 3), client.log()

    # `status` shows the hook counters
    res = env.a.run(*tunconnector_cmd("status", "--control-dir", str(server.ctl)))
    assert "hooks" in res.stdout and "failures 1" in res.stdout, res.stdout

    # the server goes away: the client's peer dies -> down hook, with the same facts
    assert server.stop() == 0
    assert wait_for(lambda: _read(out / "down.json") is not None, timeout=20), client.log()
    down = _read(out / "down.json")
    assert down is not None and down["TUNCONNECTOR_EVENT"] == "down"
    assert down["TUNCONNECTOR_DEVICE"] == "tchk1"
    client_st = _tunnel(client)
    assert client_st is not None
    assert client_st["hooks"]["up"] == {"runs": 1, "ok": 1}
    assert client_st["hooks"]["down"] == {"runs": 1, "ok": 1}
    # the server's down hook (a missing program) failed on stop, and it still exited 0
    assert re.search(r"hook down of tunnel \S+: cannot start", server.log()), server.log()
