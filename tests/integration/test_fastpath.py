"""Offload fast path vs per-packet path, and every mix of the two, with real devices.

The client (B) sends 32 MiB to the server (A). With offload on the sending side the
kernel hands the daemon TSO super-packets that travel as fragmented native messages
(UDP GSO/GRO) or stream frames (TCP); a receiver without offload segments them in
software. The data must arrive intact whichever side runs which path.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from harness import Env

pytestmark = [pytest.mark.privileged, pytest.mark.netns]

# dev_type, proto, server offload, client offload, encrypted
CASES = [
    ("tun", "udp", "auto", "auto", False),
    ("tun", "udp", "off", "auto", False),   # GSO sender -> software segmentation
    ("tun", "udp", "auto", "off", False),   # per-packet sender -> vnet receiver
    ("tun", "tcp", "auto", "auto", False),
    ("tun", "tcp", "off", "auto", False),
    ("tap", "udp", "auto", "auto", False),
    ("tap", "udp", "off", "auto", False),
    ("tun", "udp", "auto", "auto", True),
    ("tun", "udp", "off", "auto", True),
    ("tun", "tcp", "auto", "auto", True),
]


def _key(workdir: Path) -> str:
    path = workdir / "psk.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(base64.b64encode(os.urandom(32)).decode() + "\n")
    return str(path)


def _pair(env: Env, dev_type: str, proto: str, srv_off: str, cli_off: str,
          encrypted: bool) -> tuple[object, object]:
    common: dict[str, object] = {"dev_type": dev_type, "proto": proto, "keepalive": 1,
                                 "dead_after": 4}
    if encrypted:
        common["key_file"] = _key(env.workdir)
    server = env.config_daemon(env.a, [{
        "name": "srv", "mode": "server", "device": "tcf0", "port": 55580,
        "address": ["10.78.0.1/24"], "offload": srv_off, **common}], "server")
    client = env.config_daemon(env.b, [{
        "name": "cli", "mode": "client", "device": "tcf0", "remote": env.lab.a_addrs[0],
        "remote_port": 55580, "address": ["10.78.0.2/24"], "offload": cli_off,
        **common}], "client")
    return server, client


def _path_line(log: str) -> str:
    lines = [ln for ln in log.splitlines() if "data path:" in ln]
    assert lines, log
    return lines[-1]


@pytest.mark.parametrize("dev_type,proto,srv_off,cli_off,encrypted", CASES,
                         ids=[f"{d}-{p}-srv_{s}-cli_{c}{'-aead' if e else ''}"
                              for d, p, s, c, e in CASES])
def test_transfer_any_offload_mix(env: Env, dev_type: str, proto: str, srv_off: str,
                                  cli_off: str, encrypted: bool) -> None:
    server, client = _pair(env, dev_type, proto, srv_off, cli_off, encrypted)
    client.wait_state("up")  # type: ignore[attr-defined]
    server.wait_state("up")  # type: ignore[attr-defined]
    sent, got = env.b.ping("10.78.0.1", count=5, interval=0.05)
    assert (sent, got) == (5, 5)
    want, have, secs = env.transfer(env.b, env.a, "10.78.0.1")
    assert want == have
    for daemon, mode in ((server, srv_off), (client, cli_off)):
        line = _path_line(daemon.log())  # type: ignore[attr-defined]
        if mode == "off":
            assert "per-packet path (off by configuration)" in line, line
        else:
            assert "offload path" in line, line
    st = server.tunnel()  # type: ignore[attr-defined]
    assert st is not None and st["rx_bytes"] > 32 << 20
    assert not st["drops"].get("device_refused"), st["drops"]
    print(f"{dev_type}/{proto} srv={srv_off} cli={cli_off} enc={encrypted}: "
          f"32 MiB in {secs:.2f}s ({32 * 8 * 1.048576 / secs:.0f} Mbit/s)")


def test_env_forces_per_packet_path(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """TUNCONNECTOR_OFFLOAD=off: the offload-refused path, end to end."""
    monkeypatch.setenv("TUNCONNECTOR_OFFLOAD", "off")
    server, client = _pair(env, "tun", "udp", "auto", "auto", False)
    client.wait_state("up")  # type: ignore[attr-defined]
    want, have, _ = env.transfer(env.b, env.a, "10.78.0.1")
    assert want == have
    for daemon in (server, client):
        line = _path_line(daemon.log())  # type: ignore[attr-defined]
        assert "per-packet path (off by $TUNCONNECTOR_OFFLOAD)" in line, line


EXPRESS_CASES = [("tun", "udp", "auto", False), ("tun", "udp", "auto", True),
                 ("tun", "udp", "off", False), ("tap", "udp", "auto", True),
                 ("tun", "tcp", "auto", False), ("tun", "tcp", "auto", True)]


@pytest.mark.parametrize("dev_type,proto,off,encrypted", EXPRESS_CASES,
                         ids=[f"{d}-{p}-{o}{'-aead' if e else ''}"
                              for d, p, o, e in EXPRESS_CASES])
def test_express_lane_carries_sparse_packets(env: Env, dev_type: str, proto: str, off: str,
                                             encrypted: bool) -> None:
    """Sparse packets (pings 50 ms apart) take the express lane both ways on both
    sides; bulk data after them takes the batch path and arrives intact."""
    server, client = _pair(env, dev_type, proto, off, off, encrypted)
    client.wait_state("up")  # type: ignore[attr-defined]
    server.wait_state("up")  # type: ignore[attr-defined]
    sent, got = env.b.ping("10.78.0.1", count=20, interval=0.05)
    assert (sent, got) == (20, 20)
    for daemon in (server, client):
        fp = daemon.tunnel()["fastpath"]  # type: ignore[attr-defined]
        assert fp["express_tx"] >= 18 and fp["express_rx"] >= 18, fp
    want, have, _ = env.transfer(env.b, env.a, "10.78.0.1")
    assert want == have
    st = server.tunnel()  # type: ignore[attr-defined]
    assert st["fastpath"]["express_rx"] < st["rx_packets"] // 2, st  # bulk went batched


def test_express_lane_can_be_turned_off(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNCONNECTOR_EXPRESS", "0")
    server, client = _pair(env, "tun", "udp", "auto", "auto", False)
    client.wait_state("up")  # type: ignore[attr-defined]
    sent, got = env.b.ping("10.78.0.1", count=5, interval=0.05)
    assert (sent, got) == (5, 5)
    fp = server.tunnel()["fastpath"]  # type: ignore[attr-defined]
    assert fp["express_tx"] == 0 and fp["express_rx"] == 0, fp
