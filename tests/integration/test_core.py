"""Real TUN/TAP devices in two namespaces joined by veth: every transport x framing x device."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from harness import Env

COMBOS = [
    ("tun", "udp", "native"),
    ("tun", "udp", "raw"),
    ("tun", "tcp", "native"),
    ("tun", "tcp", "simpletun"),
    ("tap", "udp", "native"),
    ("tap", "udp", "raw"),
    ("tap", "tcp", "native"),
    ("tap", "tcp", "simpletun"),
]


def pair(env: Env, dev_type: str, proto: str, framing: str, port: int = 55556,
         v6_underlay: bool = False, **extra: object) -> tuple[object, object]:
    common = {"dev_type": dev_type, "proto": proto, "framing": framing,
              "keepalive": 1, "dead_after": 4, **extra}
    server = env.config_daemon(env.a, [{
        "name": "srv", "mode": "server", "device": "tc0", "port": port,
        "address": ["10.77.0.1/24", "fd77::1/64"], **common}], "server")
    client = env.config_daemon(env.b, [{
        "name": "cli", "mode": "client", "device": "tc0",
        "remote": "fd00:100::1" if v6_underlay else env.lab.a_addrs[0], "remote_port": port,
        "address": ["10.77.0.2/24", "fd77::2/64"], **common}], "client")
    return server, client


@pytest.mark.parametrize("dev_type,proto,framing", COMBOS,
                         ids=["-".join(c) for c in COMBOS])
def test_ping_and_bulk(env: Env, dev_type: str, proto: str, framing: str) -> None:
    server, client = pair(env, dev_type, proto, framing)
    client.wait_state("up")  # type: ignore[attr-defined]
    if framing == "raw":
        # no handshake: the client is "up" at once, while the server may still be opening
        # its socket; the server is ready once its transport is open (state down, waiting)
        server.wait_ready()  # type: ignore[attr-defined]
    sent, got = env.b.ping("10.77.0.1", count=10, interval=0.05)
    assert (sent, got) == (10, 10)
    sent, got = env.a.ping("fd77::2", count=5, interval=0.05)
    assert (sent, got) == (5, 5)
    want, have, secs = env.transfer(env.b, env.a, "10.77.0.1")
    assert want == have
    st = server.tunnel()  # type: ignore[attr-defined]
    assert st["rx_bytes"] > 32 << 20
    print(f"{dev_type}/{proto}/{framing}: 32 MiB in {secs:.2f}s "
          f"({32 * 8 * 1.048576 / secs:.0f} Mbit/s)")


def test_ipv6_underlay_both_mode(env: Env) -> None:
    """One process: server for one tunnel and client for another (TunConnector's ``both``)."""
    a = env.daemon(env.a, _both_argv("tcs0", "10.78.0.1/24", "tcc0", "10.79.0.2/24",
                                     "fd00:100::2"), "both-a")
    b = env.daemon(env.b, _both_argv("tcs0", "10.79.0.1/24", "tcc0", "10.78.0.2/24",
                                     "fd00:100::1"), "both-b")
    a.wait_state("up", "client")
    b.wait_state("up", "client")
    assert env.b.ping("10.78.0.1", count=3, interval=0.1) == (3, 3)
    assert env.a.ping("10.79.0.1", count=3, interval=0.1) == (3, 3)
    assert a.stop() == 0 and b.stop() == 0


def _both_argv(sdev: str, sip: str, cdev: str, cip: str, remote: str) -> list[str]:
    from netns import tunconnector_cmd

    return tunconnector_cmd("-m", "both", "-p", sdev, "-s", sip, "-i", "55557",
                            "-n", cdev, "-c", cip, "-r", remote, "-o", "55557",
                            "--keepalive", "1", "--dead-after", "4")


def test_cli_flags_default_prefix_and_clean_exit(env: Env) -> None:
    from netns import tunconnector_cmd

    s = env.daemon(env.a, tunconnector_cmd("-m", "server", "-p", "tcx0", "-s", "10.80.0.1",
                                           "-i", "55555"), "s")
    c = env.daemon(env.b, tunconnector_cmd("-m", "client", "-n", "tcx0", "-c", "10.80.0.2",
                                           "-r", env.lab.a_addrs[0], "-o", "55555"), "c")
    c.wait_state("up")
    assert env.b.ping("10.80.0.1", count=3, interval=0.1) == (3, 3)
    addrs = env.a.run("ip", "-o", "addr", "show", "dev", "tcx0").stdout
    assert "10.80.0.1/24" in addrs
    # the daemon tuned glibc malloc for its data path (memory.py)
    ctl = subprocess.run(tunconnector_cmd("status", "--json", "--control-dir", str(s.ctl)),
                         capture_output=True, text=True, timeout=10)
    assert json.loads(ctl.stdout)[0]["malloc"].startswith("tuned"), ctl.stdout
    assert s.stop() == 0 and c.stop() == 0
    # devices the daemon created are gone after exit
    assert env.a.run("ip", "link", "show", "tcx0", check=False).returncode != 0


def _daemon_status(env: Env, top: str, name: str, device: str, port: int
                   ) -> tuple[Any, dict[str, Any]]:
    """A raw server daemon whose config starts with ``top``, and its status once ready."""
    from harness import to_toml
    from netns import tunconnector_cmd

    path = env.workdir / f"{name}.toml"
    path.write_text(top + "\n" + to_toml([{"name": "srv", "mode": "server", "device": device,
                                            "port": port, "framing": "raw"}]))
    s = env.daemon(env.a, tunconnector_cmd("run", "-c", str(path)), name)
    s.wait_ready()
    ctl = subprocess.run(tunconnector_cmd("status", "--json", "--control-dir", str(s.ctl)),
                         capture_output=True, text=True, timeout=10)
    return s, json.loads(ctl.stdout)[0]


def test_nice_applies_once_up(env: Env) -> None:
    """``nice`` (openvpn's too) is added to the daemon's nice value once its tunnels are
    up; the status says the value."""
    s, st = _daemon_status(env, "nice = 5", "nice", "tcn0", 55558)
    assert st["nice"] == 5, st
    assert s.stop() == 0


def test_sched_slice_applies_once_up(env: Env) -> None:
    """``sched_slice_us`` gives the daemon's loop thread a short scheduler slice once its
    tunnels are up: the kernel's own account (/proc/PID/sched) and the status say it."""
    import threading

    from tunconnector import sched

    took: list[int | None] = []
    probe = threading.Thread(target=lambda: took.append(sched.set_slice(300)))
    probe.start()
    probe.join()
    if took != [300]:
        pytest.skip(f"this kernel takes no custom scheduler slice (Linux < 6.12): {took}")
    s, st = _daemon_status(env, "sched_slice_us = 200", "slice", "tcs0", 55559)
    assert st["sched_slice_us"] == 200, st
    assert sched.current_slice_us(st["pid"]) == 200
    assert s.stop() == 0
