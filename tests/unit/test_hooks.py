"""Event hooks: real programs run without a shell, with a timeout, never fatal."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tunconnector.config import Config, HooksConfig
from tunconnector.errors import ConfigError
from tunconnector.hooks import Hooks, peer_env, tunnel_env

# writes its environment as JSON to argv[1]/<event>.json (and proves no shell ran it)
RECORD = (
    "import json, os, sys; "
    "p = os.path.join(sys.argv[1], os.environ['TUNCONNECTOR_EVENT'] + '.json'); "
    "open(p, 'w').write(json.dumps({'env': dict(os.environ), 'argv': sys.argv[1:]}))"
)


async def test_hook_writes_file_with_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_PASSWORD", "s3cret")
    hooks = Hooks(HooksConfig(up=[sys.executable, "-c", RECORD, str(tmp_path), "$HOME;x"],
                              timeout=10), tunnel="t1")
    env = tunnel_env(tunnel="t1", device="tc0", local_address="10.0.0.1/24",
                     remote_address="10.0.0.2", mtu=1400, dev_type="tun")
    env.update(peer_env(endpoint="192.0.2.7:55556"))
    assert hooks.fire("up", env)
    assert await hooks.wait_idle(30)
    got = json.loads((tmp_path / "up.json").read_text())
    e = got["env"]
    assert got["argv"] == [str(tmp_path), "$HOME;x"]  # passed verbatim: no shell
    assert e["TUNCONNECTOR_EVENT"] == "up" and e["script_type"] == "up"
    assert e["TUNCONNECTOR_TUNNEL"] == "t1"
    assert e["TUNCONNECTOR_DEVICE"] == "tc0" and e["dev"] == "tc0"
    assert e["TUNCONNECTOR_LOCAL_ADDRESS"] == "10.0.0.1/24" and e["ifconfig_local"] == "10.0.0.1"
    assert e["TUNCONNECTOR_REMOTE_ADDRESS"] == "10.0.0.2" and e["ifconfig_remote"] == "10.0.0.2"
    assert e["TUNCONNECTOR_PEER"] == "192.0.2.7:55556"
    assert e["trusted_ip"] == "192.0.2.7" and e["trusted_port"] == "55556"
    assert e["TUNCONNECTOR_MTU"] == "1400"
    assert "API_PASSWORD" not in e  # the API's credentials stay in the daemon
    assert "PATH" in e
    assert hooks.snapshot()["up"] == {"runs": 1, "ok": 1}
    assert hooks.snapshot()["failures"] == 0


async def test_peer_events_in_order(tmp_path: Path) -> None:
    log = tmp_path / "events"
    append = ("import os, sys; open(sys.argv[1], 'a').write(os.environ['TUNCONNECTOR_EVENT'] "
              "+ ' ' + os.environ['TUNCONNECTOR_PEER_NAME'] + ' ' + os.environ['trusted_ip'] "
              "+ '\\n')")
    argv = [sys.executable, "-c", append, str(log)]
    hooks = Hooks(HooksConfig(peer_up=argv, peer_down=argv), tunnel="hub")
    for i in range(3):
        hooks.fire("peer_up", peer_env(name=f"p{i}", endpoint=f"[2001:db8::{i}]:4000"))
        hooks.fire("peer_down", peer_env(name=f"p{i}", endpoint=f"[2001:db8::{i}]:4000"))
    assert await hooks.wait_idle(60)
    lines = log.read_text().splitlines()
    assert lines == [f"{ev} p{i} 2001:db8::{i}" for i in range(3)
                     for ev in ("peer_up", "peer_down")]
    assert not hooks.fire("up")  # no up hook configured: nothing queued


async def test_hanging_hook_is_killed_at_timeout(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    # the hook and a child it spawned (same process group) both hang; a shell, not a
    # Python, so it has written both pids long before the timeout even on a loaded machine
    hang = 'sleep 600 & echo "$$ $!" > "$1.tmp" && mv "$1.tmp" "$1"; wait'
    hooks = Hooks(HooksConfig(down=["/bin/sh", "-c", hang, "sh", str(pids)], timeout=4),
                  tunnel="t")
    hooks.fire("down", {})
    assert await hooks.wait_idle(30)
    snap = hooks.snapshot()
    assert snap["down"] == {"runs": 1, "timeout": 1}
    assert snap["failures"] == 1 and "killed" in snap["last_error"]
    assert pids.exists(), "the hook never ran far enough to write its pids"
    for pid in map(int, pids.read_text().split()):
        # SIGKILL is delivered at once, the exit takes a scheduling slot: bounded poll
        for _ in range(200):
            if not _alive(pid):
                break
            await asyncio.sleep(0.05)
        assert not _alive(pid), f"pid {pid} survived the timeout"


async def test_failures_are_counted_not_raised(tmp_path: Path) -> None:
    hooks = Hooks(HooksConfig(up=[sys.executable, "-c", "raise SystemExit(3)"],
                              down=[str(tmp_path / "no-such-program")]), tunnel="t")
    assert hooks.fire("up", {})
    assert hooks.fire("down", {})
    assert await hooks.wait_idle(30)
    snap = hooks.snapshot()
    assert snap["up"] == {"runs": 1, "failed": 1}
    assert snap["down"] == {"runs": 1, "failed": 1}
    assert snap["failures"] == 2
    assert "cannot start" in snap["last_error"]
    with pytest.raises(ValueError):
        hooks.fire("sideways", {})


def test_fire_without_loop_is_counted() -> None:
    hooks = Hooks(HooksConfig(up=["true"]), tunnel="t")
    assert not hooks.fire("up", {})
    assert hooks.snapshot()["up"] == {"not_run": 1}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie of an exited child counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def _cfg(hooks: object) -> dict[str, object]:
    return {"tunnel": [{"name": "x", "hooks": hooks}]}


def test_config_hooks() -> None:
    cfg = Config.from_mapping(_cfg({"up": ["/usr/local/bin/up", "a b"], "timeout": 3}))
    hooks = cfg.tunnel[0].hooks
    assert hooks is not None and hooks.up == ["/usr/local/bin/up", "a b"]
    assert hooks.down == [] and hooks.timeout == 3.0


@pytest.mark.parametrize("hooks, where", [
    ({"up": "/bin/up arg"}, "tunnel[0].hooks.up: expected an argv list"),
    ({"peer_down": ["", "x"]}, "tunnel[0].hooks.peer_down[0]"),
    ({"timeout": 0}, "tunnel[0].hooks.timeout"),
    ({"pre_up": ["x"]}, "tunnel[0].hooks.pre_up: unknown key"),
    ({"down": [1]}, None),  # numbers become strings like everywhere else
])
def test_config_hooks_rejects(hooks: object, where: str | None) -> None:
    if where is None:
        Config.from_mapping(_cfg(hooks))
        return
    with pytest.raises(ConfigError) as exc:
        Config.from_mapping(_cfg(hooks))
    assert str(exc.value).startswith(where), str(exc.value)


async def test_node_peer_hook(tmp_path: Path) -> None:
    """What hub code calls: the tunnel's facts plus the peer's, through the Node."""
    from tunconnector.node import Node

    node = Node({"tunnel": [{
        "name": "hub", "device": "tchub0", "address": "10.9.0.1/24",
        "hooks": {"peer_up": [sys.executable, "-c", RECORD, str(tmp_path)]},
    }]})
    try:
        assert node.peer_hook("hub", "peer_up", name="alice", endpoint="192.0.2.9:1194",
                              remote_address="10.9.0.7")
        assert not node.peer_hook("hub", "peer_down", name="alice")  # none configured
        assert await node.hooks["hub"].wait_idle(30)
    finally:
        node.netlink.close()
    e = json.loads((tmp_path / "peer_up.json").read_text())["env"]
    assert e["TUNCONNECTOR_DEVICE"] == "tchub0"
    assert e["TUNCONNECTOR_LOCAL_ADDRESS"] == "10.9.0.1/24"
    assert e["TUNCONNECTOR_PEER_NAME"] == "alice" and e["common_name"] == "alice"
    assert e["TUNCONNECTOR_PEER"] == "192.0.2.9:1194"
    assert e["TUNCONNECTOR_REMOTE_ADDRESS"] == "10.9.0.7"
    assert node.status()[0]["hooks"]["peer_up"] == {"runs": 1, "ok": 1}
