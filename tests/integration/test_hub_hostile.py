"""A hostile peer of a TAP hub: MAC stealing and a random-MAC flood (real daemons)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hublab import (  # noqa: E402
    Daemon,
    HubLab,
    hub_lab,
    peer,
    wait_client_address,
    wait_peers_up,
)
from netns import Host, free_port  # noqa: E402
from test_hub import hub_config  # noqa: E402

pytestmark = pytest.mark.slow

#: frames of EtherType 0x88b5 (local experimental) from SRC... to DST, RATE a second,
#: for SECS seconds; a source "random" is a fresh locally administered MAC each frame
SEND = """
import os, socket, sys, time
dev, dst = sys.argv[1], bytes.fromhex(sys.argv[2])
rate, secs = float(sys.argv[3]), float(sys.argv[4])
srcs = sys.argv[5:]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
n, t0 = 0, time.monotonic()
while time.monotonic() - t0 < secs:
    for src in srcs:
        mac = b"\\x02" + os.urandom(5) if src == "random" else bytes.fromhex(src)
        s.send(dst + mac + b"\\x88\\xb5" + n.to_bytes(4, "big") + bytes(42))
        n += 1
    if rate:
        time.sleep(max(0.0, t0 + n / len(srcs) / rate - time.monotonic()))
print(n)
"""

#: how many 0x88b5 frames arrive on DEV within SECS seconds
COUNT = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5))
s.bind((sys.argv[1], 0))
s.settimeout(0.2)
print("ready", flush=True)
n, end = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    try:
        s.recv(2048)
        n += 1
    except TimeoutError:
        pass
print(n, flush=True)
"""


def mac_of(host: Host, dev: str) -> str:
    return str(json.loads(host.run("ip", "-j", "link", "show", dev).stdout)[0]["address"])


def hexmac(mac: str) -> str:
    return mac.replace(":", "")


def tap_hub_two_sites(lab: HubLab) -> tuple[Daemon, int, Host, Host]:
    """A TAP hub (client-to-client on, 16 MACs per peer) with site-a, the attacker, and
    site-b, the victim, both up with their pool addresses: (hub, port, attacker, victim)."""
    port = free_port()
    hub = lab.daemon(lab.hub, hub_config(lab, port, c2c=True, dev_type="tap",
                                          max_macs_per_peer=16), "hub")
    lab.client(0, port=port, dev_type="tap")
    lab.client(1, port=port, dev_type="tap")
    wait_peers_up(hub, ["site-a", "site-b"])
    attacker, victim = lab.clients
    wait_client_address(attacker, "hc0", "10.220.0.")
    wait_client_address(victim, "hc1", "10.220.0.")
    return hub, port, attacker, victim


def test_tap_hub_mac_stealing_and_random_mac_flood() -> None:
    with hub_lab(2) as lab:
        hub, port, attacker, victim = tap_hub_two_sites(lab)
        assert victim.wait_ping("10.220.0.1", timeout=20)
        hub_mac, victim_mac = mac_of(lab.hub, "hub0"), mac_of(victim, "hc1")
        idle = victim.run("ping", "-q", "-c", "20", "-i", "0.05", "10.220.0.1").stdout
        # 1. stealing: 20 frames/s with the hub's MAC and the victim's as source, for 4 s,
        # while the victim pings the hub (100 echoes, 50 ms apart)
        ping = victim.popen("ping", "-q", "-c", "100", "-i", "0.05", "-W", "1", "10.220.0.1",
                            stdout=subprocess.PIPE, text=True)
        attacker.run(sys.executable, "-c", SEND, "hc0", "ff" * 6, "20", "4",
                     hexmac(hub_mac), hexmac(victim_mac), timeout=30)
        out, _ = ping.communicate(timeout=30)
        loss = float(out.split("received, ")[-1].split("% packet loss")[0])
        rtt = out.strip().splitlines()[-1].split(" = ")[-1]
        idle_rtt = idle.strip().splitlines()[-1].split(" = ")[-1]
        # after the attack: the hub still reaches the victim, the victim the hub
        after = victim.ping("10.220.0.1", count=20, interval=0.05)
        steal_drops = dict(peer(hub, "site-a")["drops"])
        # 2. a random-source flood from the attacker: beyond its 16 MACs nothing reaches
        # the victim (it was flooded to every peer before)
        counter = victim.popen(sys.executable, "-c", COUNT, "hc1", "6",
                               stdout=subprocess.PIPE, text=True)
        assert counter.stdout is not None and counter.stdout.readline().strip() == "ready"
        sent = int(attacker.run(sys.executable, "-c", SEND, "hc0", "ff" * 6, "3000", "2",
                                "random", timeout=30).stdout)
        got = int(counter.communicate(timeout=30)[0].split()[-1])
        drops = peer(hub, "site-a")["drops"]
        print(f"stealing: victim loss {loss}% during (rtt min/avg/max/mdev {rtt}, idle "
              f"{idle_rtt}), {after} after, attacker drops "
              f"{steal_drops}; flood: sent {sent}, the victim got {got}, drops {drops}")
        assert loss <= 1.0, out
        assert after == (20, 20)
        assert steal_drops.get("mac_pinned", 0) >= 70, steal_drops
        assert steal_drops.get("mac_move_refused", 0) >= 70, steal_drops
        assert sent >= 3000 and got <= 16, (sent, got)
        assert drops.get("mac_limit", 0) >= 0.8 * (sent - 16), (sent, drops)
        assert victim.ping("10.220.0.1", count=20, interval=0.05) == (20, 20)
