"""The library face in-process: Node from a config object, wait_up, counters, stop.

The test thread enters the lab's namespace A (setns is per thread; the Node's netlink
worker thread is created afterwards and inherits it). Both tunnels run in this one Node
with their devices moved into two further namespaces, so traffic crosses real devices.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
from harness import PY, Env

import tunconnector
from tunconnector import Config, Node, State
from tunconnector.io.netns import entered as in_netns


@contextlib.contextmanager
def app_namespaces(*names: str) -> Iterator[None]:
    for n in names:
        subprocess.run(["ip", "netns", "add", n], check=True)
    try:
        yield
    finally:
        for n in names:
            subprocess.run(["ip", "netns", "del", n], check=False)


async def ping(ns: str, target: str, count: int = 3) -> bool:
    """Async: the tunnel runs on this very loop, a blocking ping would starve it."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", str(count), "-i", "0.1",
        "-W", "2", target, stdout=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(proc.wait(), 30) == 0


@pytest.mark.parametrize("proto", ["udp", "tcp"])
async def test_node_in_process(env: Env, proto: str) -> None:
    tag = secrets.token_hex(3)
    app_s, app_c = f"tcs{tag}", f"tcc{tag}"
    config = Config.from_mapping({
        "control_dir": str(env.workdir / "ctl"),
        "tunnel": [
            {"name": "s", "mode": "server", "device": "tlib0", "port": 55590, "proto": proto,
             "address": "10.90.0.1/24", "netns": app_s, "keepalive": 1, "dead_after": 3},
            {"name": "c", "mode": "client", "device": "tlib1", "remote": env.lab.a_addrs[0],
             "remote_port": 55590, "proto": proto, "address": "10.90.0.2/24",
             "netns": app_c, "keepalive": 1, "dead_after": 3},
        ],
    })
    states: list[tuple[str, str]] = []
    with app_namespaces(app_s, app_c), in_netns(env.a.ns):
        async with Node(config) as node:
            node.tunnel("s").add_listener(lambda t, old, new: states.append((t.name, new)))
            await node.tunnel("c").wait_up(timeout=5)
            await node.tunnel("s").wait_up(timeout=5)
            assert await ping(app_c, "10.90.0.1")
            c = node.tunnel("c")
            assert c.stats.tx_packets >= 3 and c.stats.rx_packets >= 3
            st = {t["name"]: t for t in node.status()}
            assert st["s"]["state"] == "up" and st["c"]["netns"] == app_c
            # stop one tunnel: the peer notices (dead_after 3 s), the other keeps running
            await node.stop_tunnel("c")
            assert c.state == State.STOPPED
            await node.tunnel("s").wait_state(State.DOWN, timeout=8)
            await node.start_tunnel("c")
            await node.tunnel("c").wait_up(timeout=5)
            assert await ping(app_c, "10.90.0.1")
        # devices the Node created are gone with it
        out = subprocess.run(["ip", "netns", "exec", app_s, "ip", "link", "show", "tlib0"],
                             capture_output=True)
        assert out.returncode != 0
    assert ("s", State.UP) in states and ("s", State.DOWN) in states


async def test_library_errors_are_typed(env: Env) -> None:
    with in_netns(env.a.ns):
        # address in use: a clear TransportError, nothing left behind
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind(("0.0.0.0", 55591))
        try:
            node = Node({"tunnel": [{"name": "x", "mode": "server", "device": "tlib9",
                                     "port": 55591, "bind": "0.0.0.0"}]})
            with pytest.raises(tunconnector.TransportError, match="55591.*in use"):
                await node.start()
            assert node.tunnel("x").state == State.FAILED
        finally:
            blocker.close()
        with pytest.raises(tunconnector.ConfigError, match="tunnel\\[0\\].device"):
            Node({"tunnel": [{"name": "x", "device": "much-too-long-name0"}]})
        with pytest.raises(tunconnector.DeviceError, match="netns 'nope-missing'|namespace"):
            await Node({"tunnel": [{"name": "x", "device": "tlib8", "port": 55592,
                                    "netns": "nope-missing"}]}).start()


def test_busy_device_error_closes_nothing_else(env: Env) -> None:
    """A device another process (here: another queue) holds is a DeviceError, and the
    failed open must not close a file descriptor later reused by something else
    (pytun-pmd3 closed its fd twice; the second close hit the daemon's control socket
    and uvloop aborted the process)."""
    import gc

    from tunconnector.io.device import Device

    with in_netns(env.a.ns):
        holder = Device("tbusy9", "tun")
        try:
            victim = None
            try:
                Device("tbusy9", "tun")
            except tunconnector.DeviceError as exc:
                assert "busy" in str(exc)
                # takes the number the failed open freed, while the error is still alive
                victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            assert victim is not None, "a busy device must be refused"
            try:
                gc.collect()  # the error and what it references are gone now
                victim.getsockname()  # EBADF if the failed open closed the number again
            finally:
                victim.close()
        finally:
            holder.close()


def test_daemon_with_a_busy_device_exits_cleanly(env: Env) -> None:
    cli = [PY, "-m", "tunconnector", "-m", "server", "-p", "tbusy8", "-s", "10.79.0.1/24"]
    first = env.a.popen(*cli, "-i", "55593", stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while env.a.run("ip", "link", "show", "tbusy8", check=False).returncode != 0:
            assert time.monotonic() < deadline and first.poll() is None, "first daemon"
            time.sleep(0.05)
        res = env.a.run(*cli, "-i", "55594", "--offload", "off", check=False)
        assert res.returncode == 1, (res.returncode, res.stderr)  # not -6/134 (SIGABRT)
        assert "busy" in res.stderr
    finally:
        first.terminate()
        first.wait(timeout=30)
