"""Runs INSIDE the VM guest: a tunconnector client bond whose links end at real openvpn
processes running the Multi-link enabler's server config.

Server namespace: two ``openvpn`` (dev tap1/tap2, proto udp4, port 1191/1192, secret,
cipher none, keepalive 15 60), taps in bridge br0 holding 10.8.0.254. Client namespace:
``[[bond]] wire = "openvpn"`` over "eth0" and "wlan0" (veth pairs), active-backup with the
enabler's bonding options. One link is cut (its veth peer down, then an nftables drop);
traffic must go on over the other.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.skipif(os.environ.get("TUNCONNECTOR_IN_VM") != "1", reason="guest only"),
]

SHARE = Path(os.environ.get("TCVM_SHARE", "/tmp"))
BRIDGE_IP = "10.8.0.254"
BOND_IP = "10.8.0.253"
#: the enabler's bonding options, with an ARP interval the per-packet path keeps up with
#: under TCG emulation
ARP_INTERVAL_MS = 500


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def wait_for(pred: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> float:
    start = time.monotonic()
    while True:
        try:
            if pred():
                return time.monotonic() - start
        except (OSError, ValueError):
            pass
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


@dataclass
class Lab:
    cns: str
    sns: str
    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def client(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.cns, *args, check=check)

    def server(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.sns, *args, check=check)

    def active(self) -> str:
        """bond0's active slave, from netlink (this guest's sysfs is not per namespace)."""
        res = sh("ip", "-n", self.cns, "-j", "-d", "link", "show", "bond0", check=False)
        if res.returncode != 0:
            return ""
        info = json.loads(res.stdout)[0].get("linkinfo", {}).get("info_data", {})
        return str(info.get("active_slave", ""))

    def ping_ok(self, count: int = 1) -> bool:
        res = self.client("ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", "1",
                          BRIDGE_IP, check=False)
        return res.returncode == 0 and " 0% packet loss" in res.stdout

    def spawn(self, ns: str, args: list[str], log: str) -> subprocess.Popen[bytes]:
        out = (self.tmp / log).open("ab")
        p = subprocess.Popen(["ip", "netns", "exec", ns, *args], stdout=out,
                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    def log(self, name: str) -> str:
        try:
            return (self.tmp / name).read_text(errors="replace")[-3000:]
        except OSError:
            return ""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    tag = uuid.uuid4().hex[:6]
    cns, sns = f"ovc-{tag}", f"ovs-{tag}"
    tmp = SHARE / f"openvpn-bond-{tag}"
    tmp.mkdir(parents=True)
    for ns in (cns, sns):
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    for cname, sname, net in (("eth0", "seth0", "10.1.0"), ("wlan0", "swlan0", "10.2.0")):
        a, b = f"t{tag}{cname[0]}", f"u{tag}{cname[0]}"
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        sh("ip", "link", "set", a, "netns", cns, "name", cname)
        sh("ip", "link", "set", b, "netns", sns, "name", sname)
        sh("ip", "-n", cns, "addr", "add", f"{net}.1/24", "dev", cname)
        sh("ip", "-n", sns, "addr", "add", f"{net}.2/24", "dev", sname)
        sh("ip", "-n", cns, "link", "set", cname, "up")
        sh("ip", "-n", sns, "link", "set", sname, "up")
    the_lab = Lab(cns, sns, tmp)
    key = tmp / "ta.key"
    from tunconnector.keys import write_openvpn_key_file

    write_openvpn_key_file(key)  # in-process: a new interpreter takes long under TCG
    try:
        # the enabler's server: one openvpn per link, taps bridged into br0
        sh("ip", "-n", sns, "link", "add", "br0", "address", "02:00:00:00:08:fe", "type",
           "bridge")
        sh("ip", "-n", sns, "addr", "add", f"{BRIDGE_IP}/24", "dev", "br0")
        sh("ip", "-n", sns, "link", "set", "br0", "up")
        for i in (1, 2):  # persistent taps, bridged once: openvpn reattaches after restarts
            sh("ip", "netns", "exec", sns, "openvpn", "--mktun", "--dev", f"tap{i}",
               "--dev-type", "tap")
            sh("ip", "-n", sns, "link", "set", f"tap{i}", "master", "br0")
            sh("ip", "-n", sns, "link", "set", f"tap{i}", "up")
        for i in (1, 2):
            conf = tmp / f"server{i}.conf"
            conf.write_text(f"dev tap{i}\nproto udp4\nport {1190 + i}\nsecret {key}\n"
                            "cipher none\nkeepalive 15 60\nverb 3\n")
            the_lab.spawn(sns, ["openvpn", "--config", str(conf)], f"openvpn{i}.log")
        # the client: a tunconnector bond whose links speak openvpn static key
        conf = tmp / "client.toml"
        conf.write_text(
            f'log_level = "debug"\ncontrol_dir = "/tmp/ctl-{tag}"\n\n[[bond]]\n'
            'role = "client"\n'
            f'name = "bond0"\nip_address = "{BOND_IP}"\nwire = "openvpn"\n'
            f'openvpn_secret = "{key}"\n'
            'slaves = [{hw_int = "eth0", ip_server = "10.1.0.2"},\n'
            '          {hw_int = "wlan0", ip_server = "10.2.0.2"}]\n'
            '[bond.bonding]\nbonding_mode = "1"\nprimary = "tap1"\n'
            f'arp_ip_target = "{BRIDGE_IP}"\narp_interval = "{ARP_INTERVAL_MS}"\n'
            'fail_over_mac = "1"\n'
            'arp_validate = "5"\n')
        the_lab.spawn(cns, [sys.executable, "-m", "tunconnector", "run", "-c", str(conf)],
                      "client.log")
        yield the_lab
    finally:
        for p in the_lab.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in the_lab.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for ns in (cns, sns):
            sh("ip", "netns", "del", ns, check=False)


def test_bond_up_over_openvpn_links(lab: Lab) -> None:
    try:  # the daemon's start-up alone can take a minute or two under TCG
        wait_for(lambda: lab.active() == "tap1" and lab.ping_ok(), 240,
                 "ping through bond0 on tap1")
    except AssertionError as exc:
        diag = "\n".join(
            lab.client(*cmd, check=False).stdout
            for cmd in (("cat", "/proc/net/bonding/bond0"), ("ip", "-d", "link"),
                        ("ip", "neigh"), ("ip", "-s", "link")))
        diag += lab.server("ip", "-s", "link", check=False).stdout
        diag += sh(sys.executable, "-m", "tunconnector", "status", "--json", "--control-dir",
                   f"/tmp/ctl-{lab.cns[4:]}", check=False, timeout=120).stdout
        (lab.tmp / "diag.txt").write_text(diag)
        raise AssertionError(f"{exc}\n--- client\n{lab.log('client.log')}\n--- openvpn1\n"
                             f"{lab.log('openvpn1.log')}\n--- diag\n{diag[-3000:]}") from None
    assert lab.ping_ok(count=20), lab.log("client.log")
    for i in (1, 2):
        assert "Peer Connection Initiated" in lab.log(f"openvpn{i}.log")


def test_failover_when_a_link_is_cut(lab: Lab, record_property: Callable[[str, object], None]
                                     ) -> None:
    wait_for(lambda: lab.active() == "tap1" and lab.ping_ok(), 60, "bond on tap1")
    # 1: the link's far end goes down (eth0 loses carrier)
    lab.server("ip", "link", "set", "seth0", "down")
    took = wait_for(lambda: lab.active() == "tap2" and lab.ping_ok(), 20, "failover to tap2")
    record_property("openvpn_failover_link_down_s", round(took, 2))
    assert lab.ping_ok(count=20)
    lab.server("ip", "link", "set", "seth0", "up")
    wait_for(lambda: lab.active() == "tap1" and lab.ping_ok(), 30, "failback to tap1")
    # 2: the path silently drops everything (only the ARP monitor can tell)
    # (both ways on the client's eth0: a one-way drop leaves the server's ARP requests
    # arriving on tap1, which the ARP monitor counts as life)
    for cmd in (("add", "table", "inet", "cut"),
                ("add", "chain", "inet", "cut", "i",
                 "{ type filter hook input priority 0; }"),
                ("add", "chain", "inet", "cut", "o",
                 "{ type filter hook output priority 0; }"),
                ("add", "rule", "inet", "cut", "i", "iifname", "eth0", "drop"),
                ("add", "rule", "inet", "cut", "o", "oifname", "eth0", "drop")):
        sh("ip", "netns", "exec", lab.cns, "nft", *cmd)
    took = wait_for(lambda: lab.active() == "tap2" and lab.ping_ok(), 30,
                    "failover to tap2 on a silent drop")
    record_property("openvpn_failover_silent_drop_s", round(took, 2))
    assert lab.ping_ok(count=20)
    sh("ip", "netns", "exec", lab.cns, "nft", "delete", "table", "inet", "cut")
