"""A stranger's datagrams at a UDP tunnel's port cannot push its live peer's out.

The attacked daemon is stopped (SIGSTOP) while a stranger from another namespace sends
far more datagrams than its socket's receive queue holds; then the live peer pings
through the tunnel and the daemon is resumed. Before, the stranger's datagrams filled the
one queue and the kernel dropped the peer's echo requests with the rest. Now:

- a native client's socket is connected to its server (it hears nobody else): the
  kernel drops the stranger's datagrams (NoPorts) without queueing them;
- an OpenVPN-framing tunnel's live peer (a server's client, a client's server) has a
  connected socket of its own beside the shared one, which stays for the peer's
  authenticated moves: the stranger fills only the shared queue, and what the kernel
  dropped there is counted in the daemon's drops (``udp_queue_full``) with what it read
  and refused;
- a hub gives the peers that are up such a socket once its shared queue overflowed.

Every echo must come back once the daemon runs again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import pytest
from harness import Daemon, Env
from hublab import hub_lab, wait_client_address, wait_peers_up
from hublab import status as hub_status
from netns import Host, free_port, wait_for
from test_crypto import key_file
from test_hub import hub_config
from test_openvpn_static_interop import genkey, tc_tunnel

from tunconnector.keys import generate_keypair

SRV_ADDR, CL_ADDR = "10.77.0.1", "10.77.0.2"
HUB_IP = "10.220.0.1"
STRANGER = "192.168.100.66"
FLOOD = 12_000  # datagrams: several times what a 4 MiB receive queue holds
PINGS = 5

SEND = ("import os,socket,sys;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_SNDBUF,1<<20);"
        "s.bind((sys.argv[1],0));d=(sys.argv[2],int(sys.argv[3]));"
        "[s.sendto(os.urandom(1200),d) for _ in range(int(sys.argv[4]))]")


def udp_counters(host: Host) -> dict[str, int]:
    lines = [ln.split() for ln in host.run("cat", "/proc/net/snmp").stdout.splitlines()
             if ln.startswith("Udp:")]
    return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))


def pair(env: Env, kind: str) -> tuple[Daemon, Daemon, int]:
    """(server, client, client's port): static-key (openvpn framing), native, or native
    with keys, over UDP."""
    a_addr, b_addr = env.lab.a_addrs[0], env.lab.b_addrs[0]
    if kind == "static":
        key = genkey(env)
        common: dict[str, Any] = dict(dev_type="tun", device="tun1", openvpn_secret=str(key),
                                      openvpn_cipher="none")
        srv = env.config_daemon(env.a, [tc_tunnel(
            mode="server", port=1191, address=f"{SRV_ADDR}/24", **common)], "srv")
        cl = env.config_daemon(env.b, [tc_tunnel(
            mode="client", remote=a_addr, remote_port=1191, port=1191, bind=b_addr,
            address=f"{CL_ADDR}/24", **common)], "cl")
        return srv, cl, 1191
    common = {"dev_type": "tun", "proto": "udp", "framing": "native", "device": "tc0",
              "keepalive": 2, "dead_after": 20}
    sx: dict[str, Any] = {}
    cx: dict[str, Any] = {}
    if kind == "native-keys":
        s_priv, s_pub = generate_keypair()
        c_priv, c_pub = generate_keypair()
        sx = {"private_key_file": key_file(env, "s.key", s_priv), "peer_public_key": c_pub}
        cx = {"private_key_file": key_file(env, "c.key", c_priv), "peer_public_key": s_pub}
    srv = env.config_daemon(env.a, [{"name": "srv", "mode": "server", "port": 55556,
                                     "address": [f"{SRV_ADDR}/24"], **common, **sx}], "srv")
    cl = env.config_daemon(env.b, [{"name": "cli", "mode": "client", "remote": a_addr,
                                    "remote_port": 55556, "port": 55557,
                                    "address": [f"{CL_ADDR}/24"], **common, **cx}], "cl")
    return srv, cl, 55557


@pytest.mark.parametrize("kind,attacked", [("static", "server"), ("static", "client"),
                                           ("native", "client"), ("native-keys", "server")])
def test_stranger_flood_spares_the_live_peer(env: Env, kind: str, attacked: str) -> None:
    srv, cl, client_port = pair(env, kind)
    srv.wait_state("up", timeout=20)
    cl.wait_state("up", timeout=20)
    if attacked == "server":
        victim, live, live_host, target = srv, cl, env.b, SRV_ADDR
        port = 1191 if kind == "static" else 55556
        at_host, at_link, dst = env.a, env.lab.links[0][1], env.lab.a_addrs[0]
        stranger_host = env.b
    else:
        victim, live, live_host, target, port = cl, srv, env.a, CL_ADDR, client_port
        at_host, at_link, dst = env.b, env.lab.links[0][0], env.lab.b_addrs[0]
        stranger_host = env.a
    assert live_host.ping(target, count=3, interval=0.05) == (3, 3)
    stranger_host.run("ip", "addr", "add", f"{STRANGER}/24", "dev", at_link)
    assert victim.proc is not None
    kernel_before = udp_counters(at_host)
    drops_before = sum((victim.tunnel() or {}).get("drops", {}).values())
    victim.proc.send_signal(signal.SIGSTOP)
    ping: subprocess.Popen[bytes] | None = None
    try:
        stranger_host.run(sys.executable, "-c", SEND, STRANGER, dst, str(port), str(FLOOD))
        tx_before = (live.tunnel() or {})["tx_packets"]
        ping = live_host.popen("ping", "-n", "-q", "-c", str(PINGS), "-i", "0.05", "-W", "20",
                               target, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        # the echo requests have left the live daemon towards the stopped one
        assert wait_for(lambda: (live.tunnel() or {})["tx_packets"] >= tx_before + PINGS, 10)
        kernel = udp_counters(at_host)
    finally:
        victim.proc.send_signal(signal.SIGCONT)
    assert ping is not None
    out, _ = ping.communicate(timeout=30)
    summary = [ln for ln in out.decode().splitlines() if "packets transmitted" in ln]
    received = int(summary[0].split(",")[1].split()[0]) if summary else 0
    kernel_delta = {k: kernel[k] - kernel_before.get(k, 0) for k in kernel}
    st = victim.tunnel() or {}
    print(kind, attacked, "echoes", received, "kernel", kernel_delta, "drops", st.get("drops"))
    assert received == PINGS, (kernel_delta, st.get("drops"))
    if kind == "native":
        # the stranger's datagrams ended at the kernel, none in the client's queue
        assert kernel_delta["NoPorts"] >= FLOOD, kernel_delta
        assert not st["drops"].get("udp_queue_full"), st["drops"]
    else:
        # the shared queue overflowed; each stranger's datagram is dropped and counted:
        # read and refused by the daemon, or dropped by the kernel at the full queue
        assert kernel_delta["RcvbufErrors"] > 0, kernel_delta

        def counted() -> bool:
            drops = (victim.tunnel() or {}).get("drops", {})
            return sum(drops.values()) - drops_before >= FLOOD

        assert wait_for(counted, 10), victim.tunnel()
        assert (victim.tunnel() or {})["drops"]["udp_queue_full"] > 0
    assert live_host.ping(target, count=10, interval=0.05) == (10, 10)


def test_stranger_flood_at_a_hub_spares_its_peers() -> None:
    """A hub: once its shared queue overflows, a peer that is up gets a queue of its own;
    the next flood then costs it no echo."""
    with hub_lab(2) as lab:  # client 1's namespace is the stranger's, no daemon there
        port = free_port()
        peers = [{"name": "site-a", "public_key": lab.keys[0][1], "address": "10.220.0.50"}]
        hub = lab.daemon(lab.hub, hub_config(lab, port, c2c=False, peers=peers), "hub")
        client = lab.client(0, port=port, keepalive=2.0)
        wait_peers_up(hub, ["site-a"])
        wait_client_address(lab.clients[0], "hc0", "10.220.0.")
        assert lab.clients[0].ping(HUB_IP, count=3, interval=0.05) == (3, 3)
        assert hub.proc is not None

        def flood_while_stopped(then: Any = None) -> Any:
            assert hub.proc is not None
            hub.proc.send_signal(signal.SIGSTOP)
            try:
                lab.clients[1].run(sys.executable, "-c", SEND, "172.30.2.2", lab.underlay(1),
                                   str(port), str(FLOOD))
                return then() if then is not None else None
            finally:
                hub.proc.send_signal(signal.SIGCONT)

        # the first flood overflows the shared queue: counted, and the peer protected
        flood_while_stopped()

        def protected() -> bool:
            drops = hub_status(hub).get("drops", {})
            own = lab.hub.run("ss", "-Hun", "state", "established", "dst",
                              "172.30.1.2").stdout
            return drops.get("udp_queue_full", 0) > 0 and bool(own.strip())

        assert wait_for(protected, 30, interval=0.5), (hub_status(hub), hub.log())
        # the second one fills only the shared queue: the peer's echoes wait in its own
        tx_before = hub_status(client)["tx_packets"]
        pinger: list[subprocess.Popen[bytes]] = []

        def ping() -> None:
            pinger.append(lab.clients[0].popen(
                "ping", "-n", "-q", "-c", str(PINGS), "-i", "0.05", "-W", "20", HUB_IP,
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL))
            assert wait_for(lambda: hub_status(client)["tx_packets"] >= tx_before + PINGS,
                            20, interval=0.2)

        flood_while_stopped(ping)
        out, _ = pinger[0].communicate(timeout=30)
        summary = [ln for ln in out.decode().splitlines() if "packets transmitted" in ln]
        received = int(summary[0].split(",")[1].split()[0]) if summary else 0
        print("hub: echoes", received, "drops", hub_status(hub).get("drops"))
        assert received == PINGS, hub_status(hub).get("drops")
        assert lab.clients[0].ping(HUB_IP, count=10, interval=0.05) == (10, 10)
