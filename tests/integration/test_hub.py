"""Hub mode: one hub, three clients, each in its own namespace (real daemons, real TUN/TAP)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hublab import (  # noqa: E402
    HubLab,
    hub_lab,
    hub_toml,
    peer,
    status,
    wait_client_address,
    wait_peers_up,
)
from netns import free_port  # noqa: E402

pytestmark = pytest.mark.slow


def hub_config(lab: HubLab, port: int, *, c2c: bool, dev_type: str = "tun",
               peers: list[dict[str, Any]] | None = None, extra: str = "",
               **more: Any) -> str:
    tunnel: dict[str, Any] = {
        "name": "hub", "mode": "server", "device": "hub0", "dev_type": dev_type,
        "address": "10.220.0.1/24", "port": port, "private_key_file": str(lab.hub_priv),
        "pool": "10.220.0.0/24", "client_to_client": c2c, "push_routes": ["10.99.0.0/16"],
        "keepalive": 1.0, "dead_after": 6.0,
        "state_file": str(lab.workdir / "hub-state.json"), **more,
    }
    if peers is None:
        peers = [
            {"name": "site-a", "public_key": lab.keys[0][1], "address": "10.220.0.50",
             "allowed_ips": ["192.168.10.0/24"]},
            {"name": "site-b", "public_key": lab.keys[1][1]},
            {"name": "site-c", "public_key": lab.keys[2][1]},
        ]
    return hub_toml(tunnel, peers, extra)


def test_tun_hub_pool_fixed_routes_spoofing_restart() -> None:
    with hub_lab(3) as lab:
        port = free_port()
        hub = lab.daemon(lab.hub, hub_config(lab, port, c2c=True), "hub")
        clients = [lab.client(i, port=port) for i in range(3)]
        # a network behind site-a
        a = lab.clients[0]
        a.run("ip", "addr", "add", "192.168.10.1/32", "dev", "lo")
        st = wait_peers_up(hub, ["site-a", "site-b", "site-c"])
        addrs = {p["name"]: p["address"] for p in st["peers"]}
        assert addrs["site-a"] == "10.220.0.50"  # fixed
        assert addrs["site-b"].startswith("10.220.0.") and addrs["site-c"].startswith(
            "10.220.0.")
        assert len(set(addrs.values())) == 3
        for i, name in enumerate(("site-a", "site-b", "site-c")):
            assert wait_client_address(lab.clients[i], f"hc{i}", "10.220.0.") == addrs[name]
        # pushed routes and the other peer's network are installed on the client
        routes = lab.clients[1].run("ip", "route", "show", "dev", "hc1").stdout
        assert "10.99.0.0/16" in routes and "192.168.10.0/24" in routes, routes
        # hub -> every peer; peer -> peer (client_to_client); both -> the network behind a
        for name in ("site-a", "site-b", "site-c"):
            assert lab.hub.ping(addrs[name], count=3, interval=0.2) == (3, 3), name
        b, c = lab.clients[1], lab.clients[2]
        assert b.ping(addrs["site-c"], count=3, interval=0.2) == (3, 3)
        assert b.ping("192.168.10.1", count=3, interval=0.2) == (3, 3)
        assert lab.hub.ping("192.168.10.1", count=3, interval=0.2) == (3, 3)
        # a spoofed inner source from site-b is dropped and counted on site-b
        b.run("ip", "addr", "add", "10.220.0.77/32", "dev", "hc1")
        sent, got = b.ping("10.220.0.1", count=3, interval=0.2)
        assert sent == 3  # not spoofed yet: b's own source
        b.run("ping", "-n", "-c", "3", "-i", "0.2", "-W", "1", "-I", "10.220.0.77",
              "10.220.0.1", check=False)
        assert peer(hub, "site-b")["drops"].get("spoofed_source", 0) >= 3
        assert status(hub)["drops"].get("spoofed_source", 0) >= 3
        # a restarted client gets the same address
        clients[2].stop()
        clients[2] = lab.client(2, port=port, name="client2b")
        wait_peers_up(hub, ["site-c"])
        assert wait_client_address(c, "hc2", "10.220.0.") == addrs["site-c"]
        assert c.ping("10.220.0.1", count=3, interval=0.2) == (3, 3)
        # ... and so after a hub restart (the lease is in the state file)
        hub.stop()
        hub = lab.daemon(lab.hub, hub_config(lab, port, c2c=True), "hub2")
        st = wait_peers_up(hub, ["site-a", "site-b", "site-c"], timeout=30)
        assert {p["name"]: p["address"] for p in st["peers"]} == addrs


def test_client_to_client_off() -> None:
    with hub_lab(3) as lab:
        port = free_port()
        hub = lab.daemon(lab.hub, hub_config(lab, port, c2c=False), "hub")
        for i in range(3):
            lab.client(i, port=port)
        st = wait_peers_up(hub, ["site-a", "site-b", "site-c"])
        addrs = {p["name"]: p["address"] for p in st["peers"]}
        b = lab.clients[1]
        wait_client_address(b, "hc1", "10.220.0.")
        assert b.ping("10.220.0.1", count=3, interval=0.2) == (3, 3)
        assert lab.hub.ping(addrs["site-c"], count=3, interval=0.2) == (3, 3)
        sent, got = b.ping(addrs["site-c"], count=3, interval=0.2)
        assert got == 0
        assert peer(hub, "site-b")["drops"].get("client_to_client", 0) >= 3
        routes = b.run("ip", "route", "show", "dev", "hc1").stdout
        assert "192.168.10.0/24" not in routes  # other peers' networks are not pushed
