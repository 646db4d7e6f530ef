"""framing = "openvpn" (static-key mode) against the real openvpn 2.6 from Debian.

The openvpn side runs the Multi-link enabler's configs verbatim (dev tap, proto udp4,
port 1191, secret, cipher none, keepalive 15 60 / ping 15) or the variants the tests name.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import Daemon, Env
from netns import Host, tunconnector_cmd, wait_for

pytestmark = [
    pytest.mark.openvpn,
    pytest.mark.skipif(shutil.which("openvpn") is None, reason="needs openvpn (Debian package)"),
]

TC_ADDR = "10.77.0.2"
OV_ADDR = "10.77.0.1"


def genkey(env: Env, name: str = "ta.key") -> Path:
    path = env.workdir / name
    res = subprocess.run(tunconnector_cmd("genkey", "--openvpn", str(path)),
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert os.stat(path).st_mode & 0o777 == 0o600
    return path


class OpenVPN:
    """One openvpn process in a namespace, its device addressed by the test."""

    def __init__(self, env: Env, host: Host, name: str, lines: list[str], dev: str,
                 addr: str | None) -> None:
        self.env, self.host, self.name, self.dev, self.addr = env, host, name, dev, addr
        self.conf = env.workdir / f"{name}.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log_path = env.workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OpenVPN:
        log = open(self.log_path, "ab")
        self.proc = self.host.popen("openvpn", "--config", str(self.conf), "--verb", "4",
                                    stdout=log, stderr=subprocess.STDOUT)
        assert wait_for(lambda: self.host.run("ip", "link", "show", self.dev,
                                              check=False).returncode == 0, 15), self.log()
        if self.addr:
            self.host.run("ip", "addr", "replace", f"{self.addr}/24", "dev", self.dev)
        self.host.run("ip", "link", "set", self.dev, "up")
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def openvpns(env: Env) -> Any:
    started: list[OpenVPN] = []

    def make(host: Host, name: str, lines: list[str], dev: str,
             addr: str | None = None) -> OpenVPN:
        o = OpenVPN(env, host, name, lines, dev, addr).start()
        started.append(o)
        return o

    yield make
    for o in started:
        o.stop()


def enabler_server(key: Path, dev: str = "tap1", port: int = 1191) -> list[str]:
    """The enabler's server config (deployment/docker/server), verbatim but for paths."""
    return [f"dev {dev}", "proto udp4", f"port {port}", f"secret {key}", "cipher none",
            "keepalive 15 60"]


def enabler_client(key: Path, remote: str, local: str, dev: str = "tap1",
                   port: int = 1191) -> list[str]:
    """The enabler's client config: remote, local bound, ping 15."""
    return [f"dev {dev}", "proto udp4", f"remote {remote} {port}", f"local {local}",
            f"port {port}", f"secret {key}", "cipher none", "ping 15"]


def tc_tunnel(**kw: Any) -> dict[str, Any]:
    t = {"name": "ov", "framing": "openvpn", "keepalive": 15, "dead_after": 60}
    t.update(kw)
    return t


def check_traffic(env: Env, tc_host: Host, ov_host: Host, nbytes: int = 32 << 20) -> None:
    assert tc_host.ping(OV_ADDR, count=20, interval=0.05) == (20, 20)
    assert ov_host.ping(TC_ADDR, count=20, interval=0.05) == (20, 20)
    want, have, _ = env.transfer(tc_host, ov_host, OV_ADDR, nbytes=nbytes)
    assert want == have
    want, have, _ = env.transfer(ov_host, tc_host, TC_ADDR, nbytes=nbytes)
    assert want == have


def test_client_against_enabler_openvpn_server(env: Env, openvpns: Any) -> None:
    key = genkey(env)
    ov = openvpns(env.b, "ovs", enabler_server(key), "tap1", OV_ADDR)
    tc = env.config_daemon(env.a, [tc_tunnel(
        mode="client", dev_type="tap", device="tap1", remote=env.lab.b_addrs[0],
        remote_port=1191, port=1191, bind=env.lab.a_addrs[0], openvpn_secret=str(key),
        openvpn_cipher="none", address=f"{TC_ADDR}/24")], "tc")
    tc.wait_state("up")
    check_traffic(env, env.a, env.b)
    assert ov.alive()
    assert "Peer Connection Initiated" in ov.log()
    assert "WARNING: 'link-mtu'" not in ov.log() and "OPTIONS" not in ov.log().upper() \
        or "inconsistent" not in ov.log(), ov.log()
    st = tc.tunnel()
    assert st is not None and st["crypto"]["peer_options"].startswith("V4,dev-type tap")


def test_openvpn_enabler_client_against_server(env: Env, openvpns: Any) -> None:
    key = genkey(env)
    tc = env.config_daemon(env.a, [tc_tunnel(
        mode="server", dev_type="tap", device="tap1", port=1191, openvpn_secret=str(key),
        openvpn_cipher="none", address=f"{TC_ADDR}/24")], "tc")
    tc.wait_state("down")
    openvpns(env.b, "ovc", enabler_client(key, env.lab.a_addrs[0], env.lab.b_addrs[0]),
             "tap1", OV_ADDR)
    tc.wait_state("up")
    check_traffic(env, env.a, env.b)


def wait_down_then_stop(d: Daemon) -> None:
    d.stop()
