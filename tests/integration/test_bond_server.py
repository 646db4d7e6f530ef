"""The multi-link *server* from a ``[[bond]]`` TOML section, on the host kernel.

The server side needs only TAP and bridge (no bonding module), so it is tested here
without the VM: TAP endpoints bridged with ``bridge_ip``, carrier following each
tunnel's liveness, and a plain TAP tunnel client reaching the bridge address.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netns import lab, tunconnector_cmd, wait_for  # noqa: E402

pytestmark = [pytest.mark.privileged, pytest.mark.netns]


def _links(host: Any, *args: str) -> list[dict[str, object]]:
    res = host.run("ip", "-j", "link", "show", *args, check=False)
    if res.returncode != 0:
        return []
    return json.loads(res.stdout or "[]")


def _operstate(host: Any, dev: str) -> str:
    links = _links(host, "dev", dev)
    return str(links[0]["operstate"]) if links else "absent"


def test_toml_server_bridge_and_carrier() -> None:
    with lab(n_links=1) as lb, tempfile.TemporaryDirectory() as tmp:
        srv = Path(tmp) / "server.toml"
        srv.write_text(
            'log_level = "debug"\n'
            f'control_dir = "{tmp}/ctl-s"\n'
            '[[bond]]\nrole = "server"\nname = "br0"\nbridge_ip = "10.8.0.254"\n'
            "links = 2\nkeepalive = 0.2\ndead_after = 1.0\n"
        )
        cli = Path(tmp) / "client.toml"
        cli.write_text(
            f'control_dir = "{tmp}/ctl-c"\n'
            '[[tunnel]]\nname = "c1"\nmode = "client"\ndev_type = "tap"\n'
            f'device = "tapc1"\naddress = ["10.8.0.1/24"]\nremote = "{lb.b_addrs[0]}"\n'
            'remote_port = 1191\nkeepalive = 0.2\ndead_after = 1.0\noffload = "off"\n'
        )
        slog = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115
        server = lb.b.popen(
            *tunconnector_cmd("run", "-c", str(srv)), stdout=slog, stderr=subprocess.STDOUT
        )
        client = None
        try:
            assert wait_for(lambda: len(_links(lb.b, "master", "br0")) == 2, 30), (
                Path(tmp) / "server.log"
            ).read_text()
            ports = sorted(str(link["ifname"]) for link in _links(lb.b, "master", "br0"))
            assert ports == ["tap1", "tap2"]
            addr = lb.b.run("ip", "-j", "addr", "show", "dev", "br0").stdout
            assert "10.8.0.254" in addr
            # no client yet: both endpoints have no carrier (their tunnels are not up)
            assert _operstate(lb.b, "tap1") == "DOWN"
            assert _operstate(lb.b, "tap2") == "DOWN"
            client = lb.a.popen(
                *tunconnector_cmd("run", "-c", str(cli)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            assert wait_for(lambda: _operstate(lb.b, "tap1") == "UP", 30)
            assert _operstate(lb.b, "tap2") == "DOWN"
            assert lb.a.wait_ping("10.8.0.254", timeout=20)
            assert lb.a.ping("10.8.0.254", count=10, interval=0.05) == (10, 10)
            # the client goes away: after dead_after the server drops tap1's carrier
            client.send_signal(signal.SIGTERM)
            client.wait(timeout=20)
            client = None
            assert wait_for(lambda: _operstate(lb.b, "tap1") == "DOWN", 10)
        finally:
            for proc in (client, server):
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            slog.close()
