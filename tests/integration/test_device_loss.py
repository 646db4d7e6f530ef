"""A deleted TUN device (``ip link del``) during traffic: noticed, reported, brought back.

A device the daemon created is created again (name, addresses, MTU, routes) and traffic
resumes within 5 s; while it cannot be (the name taken by another link) the tunnel says
``down`` with the reason. A persistent device the daemon only attached to is waited for
and attached again when ``tunconnector mktun`` brings it back. A hub's device likewise,
with the kernel routes to its peers' networks.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import Any

import pytest
from harness import Env
from hublab import hub_lab, hub_toml, wait_client_address, wait_peers_up
from netns import Host, free_port, tunconnector_cmd, wait_for
from test_core import pair
from test_openvpn_static_interop import (  # noqa: F401  (openvpns: a fixture)
    OV_ADDR,
    TC_ADDR,
    enabler_client,
    genkey,
    openvpns,
    tc_tunnel,
)

#: a daemon's start-up (interpreter, imports) on a shared, loaded 2-core machine
START = 30.0


def _ping_flood(env: Env) -> subprocess.Popen[bytes]:
    """Traffic through the tunnel while the device goes (stopped by the test)."""
    return env.b.popen("ping", "-n", "-q", "-i", "0.01", "-W", "1", "10.77.0.1",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _replace_with_veth(host: Host, daemon: Any, dev: str = "tc0") -> None:
    """Delete ``dev`` and take its name with a veth link while the daemon is held stopped
    (SIGSTOP, as an operator's debugger or ``kill -STOP`` would): it cannot recreate the
    device in between, whatever the machine's speed. Resumed, it finds the name taken."""
    pid = daemon.proc.pid  # ``ip netns exec`` execs the daemon: the same process
    os.kill(pid, signal.SIGSTOP)
    try:
        host.run("ip", "link", "del", dev)
        host.run("ip", "link", "add", dev, "type", "veth", "peer", "name", f"{dev}peer")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert "veth" in host.run("ip", "-d", "link", "show", dev).stdout


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_deleted_device_is_recreated_and_status_is_honest(env: Env, proto: str) -> None:
    server, client = pair(env, "tun", proto, "native")
    client.wait_state("up", timeout=START)  # type: ignore[attr-defined]
    server.wait_state("up", timeout=START)  # type: ignore[attr-defined]
    env.a.run("ip", "route", "add", "10.88.0.0/16", "via", "10.77.0.2", "dev", "tc0")
    flood = _ping_flood(env)
    try:
        # 1. deleted during traffic: back within 5 s, with its addresses and routes
        # the deletion must hit a busy device: wait until the flood is crossing it
        def rx() -> int:
            out = env.a.run("cat", "/sys/class/net/tc0/statistics/rx_packets").stdout
            return int(out)
        rx0 = rx()
        assert wait_for(lambda: rx() >= rx0 + 20, timeout=10.0), "no flood through tc0"
        env.a.run("ip", "link", "del", "tc0")
        t0 = time.monotonic()
        assert env.b.wait_ping("10.77.0.1", timeout=5.0), server.log()  # type: ignore[attr-defined]
        took = time.monotonic() - t0
        print(f"{proto}: traffic back {took:.2f}s after ip link del")
        assert took < 5.0
        st = server.tunnel()  # type: ignore[attr-defined]
        assert st["state"] == "up" and st["error"] is None, st
        assert st["device_losses"] == 1 and st["device_last_outage"] < 5.0, st
        routes = env.a.run("ip", "route", "show", "dev", "tc0").stdout
        assert "10.88.0.0/16 via 10.77.0.2" in routes, routes
        link = env.a.run("ip", "addr", "show", "dev", "tc0").stdout
        assert "10.77.0.1/24" in link and "fd77::1/64" in link, link
        log = server.log()  # type: ignore[attr-defined]
        assert "device tc0 " in log and "recreating it" in log, log  # the reason, logged
        assert "up -> down" in log and "device tc0 recreated" in log, log
        assert env.a.ping("fd77::2", count=3, interval=0.1) == (3, 3)

        # 2. while it cannot come back (another link took the name): down, with why
        _replace_with_veth(env.a, server)
        def down() -> bool:
            t = server.tunnel()  # type: ignore[attr-defined]
            return bool(t and t["state"] == "down" and "tc0" in (t["error"] or ""))
        assert wait_for(down, timeout=5.0), server.tunnel()  # type: ignore[attr-defined]
        st = server.tunnel()  # type: ignore[attr-defined]
        assert "cannot be reopened yet" in st["error"], st
        print(f"{proto}: while blocked: {st['state']}: {st['error']}")
        env.a.run("ip", "link", "del", "tc0")  # the name is free again
        t0 = time.monotonic()
        assert env.b.wait_ping("10.77.0.1", timeout=5.0), server.log()  # type: ignore[attr-defined]
        print(f"{proto}: back {time.monotonic() - t0:.2f}s after the name was freed")
        server.wait_state("up", timeout=5.0)  # type: ignore[attr-defined]
    finally:
        flood.kill()
        flood.wait(5)


def test_persistent_device_is_waited_for_and_reattached(env: Env) -> None:
    env.a.run(*tunconnector_cmd("mktun", "--dev", "tc0", "--dev-type", "tun"))
    server, client = pair(env, "tun", "udp", "native")
    client.wait_state("up", timeout=START)  # type: ignore[attr-defined]
    assert env.b.ping("10.77.0.1", count=3, interval=0.1) == (3, 3)
    assert "attached to existing device tc0" in server.log()  # type: ignore[attr-defined]
    env.a.run("ip", "link", "del", "tc0")
    # not recreated by the daemon (it is not its device): down, saying it waits
    st = server.wait_state("down", timeout=5.0)  # type: ignore[attr-defined]
    assert "waiting for it to come back" in (st["error"] or ""), st
    # an absence over time: still waiting a second later, not recreating it on its own
    time.sleep(1.0)
    assert env.a.run("ip", "link", "show", "tc0", check=False).returncode != 0
    assert server.tunnel()["state"] == "down"  # type: ignore[attr-defined]
    env.a.run(*tunconnector_cmd("mktun", "--dev", "tc0", "--dev-type", "tun"))
    t0 = time.monotonic()
    assert env.b.wait_ping("10.77.0.1", timeout=8.0), server.log()  # type: ignore[attr-defined]
    print(f"persistent: traffic back {time.monotonic() - t0:.2f}s after mktun")
    st = server.wait_state("up", timeout=5.0)  # type: ignore[attr-defined]
    assert st["error"] is None and st["device_losses"] == 1, st
    assert "re-attached" in server.log()  # type: ignore[attr-defined]
    server.stop()  # type: ignore[attr-defined]
    # an attached device outlives the daemon, as before
    assert env.a.run("ip", "link", "show", "tc0", check=False).returncode == 0
    env.a.run(*tunconnector_cmd("rmtun", "--dev", "tc0"))


@pytest.mark.openvpn
@pytest.mark.skipif(shutil.which("openvpn") is None, reason="needs openvpn (Debian package)")
def test_openvpn_framing_recreates_its_device(env: Env, openvpns: Any) -> None:  # noqa: F811
    """The generic adapter (framing openvpn) has the same supervisor; a TAP keeps its MAC."""
    key = genkey(env)
    tc = env.config_daemon(env.a, [tc_tunnel(
        mode="server", dev_type="tap", device="tap1", port=1191, openvpn_secret=str(key),
        openvpn_cipher="none", address=f"{TC_ADDR}/24", keepalive=1, dead_after=10)], "tc")
    tc.wait_state("down", timeout=START)
    openvpns(env.b, "ovc", enabler_client(key, env.lab.a_addrs[0], env.lab.b_addrs[0]),
             "tap1", OV_ADDR)
    tc.wait_state("up", timeout=START)
    assert env.b.wait_ping(TC_ADDR, timeout=10.0)
    mac = env.a.run("cat", "/sys/class/net/tap1/address").stdout
    env.a.run("ip", "link", "del", "tap1")
    t0 = time.monotonic()
    assert env.b.wait_ping(TC_ADDR, timeout=5.0), tc.log()
    print(f"openvpn framing: traffic back {time.monotonic() - t0:.2f}s after ip link del")
    st = tc.wait_state("up", timeout=5.0)
    assert st["device_losses"] == 1 and st["error"] is None, st
    assert "device tap1 recreated" in tc.log()
    # the same MAC: the peer's ARP cache still points at it
    assert env.a.run("cat", "/sys/class/net/tap1/address").stdout == mac


def test_bridged_tap_rejoins_its_bridge(env: Env) -> None:
    """A TAP that was a bridge port (the address on the bridge) is a port again."""
    common = {"dev_type": "tap", "proto": "udp", "framing": "native", "keepalive": 1,
              "dead_after": 4, "port": 55559}
    server = env.config_daemon(env.a, [{"name": "srv", "mode": "server", "device": "tc0",
                                        **common}], "server")
    env.config_daemon(env.b, [{"name": "cli", "mode": "client", "device": "tc0",
                               "remote": env.lab.a_addrs[0], "remote_port": 55559,
                               "address": ["10.77.0.2/24"], **common}], "client")
    server.wait_state("up", timeout=START)  # type: ignore[attr-defined]
    env.a.run("ip", "link", "add", "br0", "type", "bridge")
    env.a.run("ip", "addr", "add", "10.77.0.1/24", "dev", "br0")
    env.a.run("ip", "link", "set", "br0", "up")
    env.a.run("ip", "link", "set", "tc0", "master", "br0")
    assert env.b.wait_ping("10.77.0.1", timeout=10.0)
    env.a.run("ip", "link", "del", "tc0")
    t0 = time.monotonic()
    assert env.b.wait_ping("10.77.0.1", timeout=5.0), server.log()  # type: ignore[attr-defined]
    print(f"bridged tap: traffic back {time.monotonic() - t0:.2f}s after ip link del")
    assert "master br0" in env.a.run("ip", "link", "show", "tc0").stdout


def test_hub_device_is_recreated() -> None:
    """A hub's TUN deleted while a client pings through it comes back with its addresses,
    MTU and the kernel routes to the peers' networks; while it cannot (the name taken) the
    hub says ``down`` with the reason; both clients reach the hub again, and the hub the
    networks behind them."""
    with hub_lab(2) as lab:
        port = free_port()
        hub = lab.daemon(lab.hub, hub_toml({
            "name": "hub", "mode": "server", "device": "hub0", "dev_type": "tun",
            "address": "10.221.0.1/24", "mtu": 1360, "port": port,
            "private_key_file": str(lab.hub_priv), "pool": "10.221.0.0/24",
            "keepalive": 1.0, "dead_after": 6.0,
            "state_file": str(lab.workdir / "hub-state.json"),
        }, [
            {"name": "site-a", "public_key": lab.keys[0][1], "address": "10.221.0.50",
             "allowed_ips": ["192.168.30.0/24"]},
            {"name": "site-b", "public_key": lab.keys[1][1],
             "allowed_ips": ["192.168.31.0/24"]},
        ]), "hub")
        nets = ["192.168.30", "192.168.31"]
        for i, c in enumerate(lab.clients):
            lab.client(i, port=port)
            c.run("ip", "addr", "add", f"{nets[i]}.1/32", "dev", "lo")  # behind the peer
        before = wait_peers_up(hub, ["site-a", "site-b"], timeout=START * 2)
        for i, c in enumerate(lab.clients):
            wait_client_address(c, f"hc{i}", "10.221.0.")

        def routes() -> str:
            return lab.hub.run("ip", "route", "show", "dev", "hub0", check=False).stdout

        assert all(f"{n}.0/24" in routes() for n in nets), routes()

        def rx() -> int:
            out = lab.hub.run("cat", "/sys/class/net/hub0/statistics/rx_packets",
                              check=False).stdout
            return int(out) if out.strip().isdigit() else 0

        flood = lab.clients[0].popen("ping", "-n", "-q", "-i", "0.01", "-W", "1",
                                     "10.221.0.1", stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        try:
            # 1. deleted while the flood crosses it: recreated, traffic resumes
            rx0 = rx()
            assert wait_for(lambda: rx() >= rx0 + 20, timeout=10.0), "no flood through hub0"
            lab.hub.run("ip", "link", "del", "hub0")
            t0 = time.monotonic()
            for c in lab.clients:
                assert c.wait_ping("10.221.0.1", timeout=10.0), hub.log()
            print(f"hub: traffic back {time.monotonic() - t0:.2f}s after ip link del")
            st = hub.wait_state("up", timeout=START)
            assert st["error"] is None and st["device_losses"] == 1, st
            log = hub.log()
            assert "device hub0 " in log and "recreating it" in log, log
            assert "up -> down" in log and "device hub0 recreated" in log, log

            # 2. while it cannot come back (another link took the name): down, with why
            _replace_with_veth(lab.hub, hub, "hub0")

            def down() -> bool:
                t = hub.tunnel()
                return bool(t and t["state"] == "down" and "hub0" in (t["error"] or ""))

            assert wait_for(down, timeout=START), hub.tunnel()
            st = hub.tunnel() or {}
            assert "cannot be reopened yet" in (st.get("error") or ""), st
            print(f"hub: while blocked: {st['state']}: {st['error']}")
            lab.hub.run("ip", "link", "del", "hub0")  # the name is free again
            t0 = time.monotonic()
            for c in lab.clients:
                assert c.wait_ping("10.221.0.1", timeout=10.0), hub.log()
            print(f"hub: back {time.monotonic() - t0:.2f}s after the name was freed")
            st = hub.wait_state("up", timeout=START)
            assert st["error"] is None and st["device_losses"] == 2, st
        finally:
            flood.kill()
            flood.wait(5)
        # what the hub puts on its device is back: address, MTU, the peers' routes, and
        # the same data path (the offload device when the kernel has it)
        link = lab.hub.run("ip", "addr", "show", "dev", "hub0").stdout
        assert "10.221.0.1/24" in link and "mtu 1360" in link, link
        assert all(f"{n}.0/24" in routes() for n in nets), routes()
        assert st["data_path"] == before["data_path"], (st, before)
        for i, c in enumerate(lab.clients):  # both clients, and through the routes
            assert c.ping("10.221.0.1", count=3, interval=0.2) == (3, 3), i
            assert lab.hub.ping(f"{nets[i]}.1", count=3, interval=0.2) == (3, 3), i
