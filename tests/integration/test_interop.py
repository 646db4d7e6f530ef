"""Interop: ``raw`` UDP framing against socat's TUN over UDP; persistent devices (mktun)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from harness import Env
from netns import tunconnector_cmd, wait_for


@pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat")
def test_raw_udp_against_socat_tun(env: Env) -> None:
    # tunconnector on A: raw UDP, fixed peer (point to point, like a QEMU dgram NIC)
    tc = env.config_daemon(env.a, [{
        "name": "raw", "mode": "client", "framing": "raw", "device": "tcraw0",
        "port": 55556, "remote": env.lab.b_addrs[0], "remote_port": 55600,
        "address": "10.66.0.1/24", "mtu": 1400}], "tc")
    tc.wait_state("up")
    # socat on B: TUN without packet info <-> UDP, one frame per datagram
    socat = env.b.popen(
        "socat", "-d", "-d",
        f"UDP:{env.lab.a_addrs[0]}:55556,sourceport=55600",
        "TUN:10.66.0.2/24,tun-type=tun,iff-no-pi,iff-up,tun-name=socat0",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert wait_for(lambda: env.b.run("ip", "link", "show", "socat0",
                                          check=False).returncode == 0, 10)
        env.b.run("ip", "link", "set", "socat0", "mtu", "1400")
        assert env.a.ping("10.66.0.2", count=5, interval=0.1) == (5, 5)
        assert env.b.ping("10.66.0.1", count=5, interval=0.1) == (5, 5)
        want, have, _ = env.transfer(env.b, env.a, "10.66.0.1", nbytes=4 << 20)
        assert want == have
    finally:
        socat.terminate()
        socat.wait(5)


@pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat")
def test_raw_packet_info_against_socat_default_tun(env: Env) -> None:
    """socat's TUN without iff-no-pi: 4 bytes of packet information before every frame,
    both ways; ``packet_info = true`` adds and strips them."""
    tc = env.config_daemon(env.a, [{
        "name": "rawpi", "mode": "server", "framing": "raw", "packet_info": True,
        "device": "tcpi0", "port": 55556, "address": "10.68.0.1/24", "mtu": 1400}], "tc")
    tc.wait_ready()
    socat = env.b.popen(
        "socat", "-d", "-d",
        f"UDP:{env.lab.a_addrs[0]}:55556,sourceport=55601",
        "TUN:10.68.0.2/24,tun-type=tun,iff-up,tun-name=socatpi0",
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        assert wait_for(lambda: env.b.run("ip", "link", "show", "socatpi0",
                                          check=False).returncode == 0, 10)
        env.b.run("ip", "link", "set", "socatpi0", "mtu", "1400")
        # socat speaks first (the raw server learns its peer from the first datagram)
        assert env.b.ping("10.68.0.1", count=5, interval=0.1)[1] >= 4
        assert env.a.ping("10.68.0.2", count=5, interval=0.1) == (5, 5)
        want, have, _ = env.transfer(env.b, env.a, "10.68.0.1", nbytes=4 << 20)
        assert want == have
        want, have, _ = env.transfer(env.a, env.b, "10.68.0.2", nbytes=4 << 20, port=5202)
        assert want == have
        t = tc.tunnel("rawpi")
        assert t is not None and not t["drops"].get("truncated"), t
    finally:
        socat.terminate()
        socat.wait(5)


def test_mktun_rmtun_and_attach(env: Env) -> None:
    made = env.a.run(*tunconnector_cmd("mktun", "--dev", "tcp0", "--dev-type", "tap"))
    assert "tcp0 created" in made.stdout
    assert "tcp0" in env.a.run("ip", "-d", "link", "show", "tcp0").stdout
    # a daemon attaches to the persistent device and leaves it in place on exit
    srv = env.config_daemon(env.a, [{"name": "s", "mode": "server", "dev_type": "tap",
                                     "device": "tcp0", "port": 55556,
                                     "address": "10.67.0.1/24", "keepalive": 1,
                                     "dead_after": 3}], "s")
    cli = env.config_daemon(env.b, [{"name": "c", "mode": "client", "dev_type": "tap",
                                     "device": "tcp1", "remote": env.lab.a_addrs[0],
                                     "address": "10.67.0.2/24", "keepalive": 1,
                                     "dead_after": 3}], "c")
    cli.wait_state("up")
    assert env.b.ping("10.67.0.1", count=3, interval=0.1) == (3, 3)
    assert srv.stop() == 0
    assert env.a.run("ip", "link", "show", "tcp0", check=False).returncode == 0
    env.a.run(*tunconnector_cmd("rmtun", "--dev", "tcp0"))
    assert env.a.run("ip", "link", "show", "tcp0", check=False).returncode != 0


def test_clear_errors_and_exit_codes(env: Env) -> None:
    res = env.a.run(*tunconnector_cmd("-m", "server", "-p", "x" * 20, "-s", "10.0.0.1"),
                    check=False)
    assert res.returncode == 2, res.stderr  # refused by the configuration check, not later
    assert "interface name" in res.stderr and "must be 1..15 bytes long" in res.stderr, (
        res.stderr)
    blocker = env.a.popen("python3", "-c",
                          "import socket,time;s=socket.socket(socket.AF_INET6,"
                          "socket.SOCK_DGRAM);s.bind(('::',55599));print('ok',flush=True);"
                          "time.sleep(30)", stdout=subprocess.PIPE)
    try:
        assert blocker.stdout is not None and blocker.stdout.readline()
        res = env.a.run(*tunconnector_cmd("-m", "server", "-s", "10.0.0.1", "-i", "55599"),
                        check=False, timeout=20)
        assert res.returncode == 1
        assert "55599" in res.stderr and "in use" in res.stderr, res.stderr
    finally:
        blocker.kill()
        blocker.wait()
