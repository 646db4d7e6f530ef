"""The hub's peer table without devices or sockets: assignment, live changes, leases."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from tunconnector.config import Config, PeerConfig
from tunconnector.errors import ConfigError
from tunconnector.hub import Hub
from tunconnector.io import netlink as nl
from tunconnector.keys import generate_keypair, write_key_file
from tunconnector.proto.assign import Assignment

KEYS = [generate_keypair()[1] for _ in range(4)]


def make_hub(tmp_path: Path, c2c: bool = True, **more: object) -> Hub:
    key = tmp_path / "hub.key"
    if not key.exists():
        write_key_file(key, generate_keypair()[0])
    cfg = Config.from_mapping({"tunnel": [{
        "name": "hub", "mode": "server", "address": "10.220.0.1/24", "port": 0,
        "private_key_file": str(key), "pool": "10.220.0.0/24", "client_to_client": c2c,
        "push_routes": ["10.99.0.0/16"], "state_file": str(tmp_path / "state.json"),
        "peer": [
            {"name": "a", "public_key": KEYS[0], "address": "10.220.0.50",
             "allowed_ips": ["192.168.10.0/24"]},
            {"name": "b", "public_key": KEYS[1]},
        ], **more}]})
    hub = Hub(cfg.tunnel[0])
    hub.peer_table.load()
    return hub


def test_assignments(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    a, b = hub.peers["a"], hub.peers["b"]
    assert str(a.address) == "10.220.0.50" and str(b.address) == "10.220.0.2"
    assert b.assignment == Assignment("10.220.0.2/24",
                                      ("10.220.0.0/24", "192.168.10.0/24", "10.99.0.0/16"),
                                      hub.mtu)
    assert a.assignment is not None and "192.168.10.0/24" not in a.assignment.routes
    assert hub.router.lookup("192.168.10.9") is a
    off = make_hub(tmp_path / "x" if (tmp_path / "x").mkdir() is None else tmp_path, c2c=False)
    assert off.peers["b"].assignment.routes == ("10.220.0.0/24", "10.99.0.0/16")  # type: ignore[union-attr]


def test_live_changes_keep_unchanged_peers(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    a = hub.peers["a"]
    table = [a.cfg, PeerConfig("c", KEYS[2]),
             PeerConfig("b", KEYS[1], allowed_ips=["172.16.0.0/24"])]
    result = hub._apply_peer_table(table)
    assert result == {"added": ["c"], "removed": [], "changed": ["b"], "unchanged": ["a"]}
    assert hub.peers["a"] is a  # same object: its session would survive
    assert hub.router.lookup("172.16.0.5") is hub.peers["b"]
    result = hub._apply_peer_table([a.cfg])
    assert result["removed"] == ["c", "b"] and set(hub.peers) == {"a"}
    assert hub.router.lookup("172.16.0.5") is None
    with pytest.raises(ConfigError):
        hub._apply_peer_table([a.cfg, PeerConfig("d", KEYS[0])])  # one key, two names


def test_leases_survive_restart(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    hub._apply_peer_table([p.cfg for p in hub.peers.values()] + [PeerConfig("c", KEYS[2])])
    addrs = {n: str(p.address) for n, p in hub.peers.items()}
    saved = json.loads((tmp_path / "state.json").read_text())
    assert KEYS[2] in saved["pool"]["leases"]
    again = make_hub(tmp_path)  # a new process: b's lease comes from the file
    again._apply_peer_table([PeerConfig("c", KEYS[2])] + [p.cfg for p in again.peers.values()])
    assert {n: str(p.address) for n, p in again.peers.items()} == addrs


def test_status_lists_peers(tmp_path: Path) -> None:
    hub = make_hub(tmp_path)
    st = hub.status()
    assert st["hub"] and st["peers_configured"] == 2 and st["peers_up"] == 0
    names = {p["name"]: p for p in st["peers"]}
    assert names["a"]["address"] == "10.220.0.50" and names["a"]["state"] == "never"
    assert names["b"]["key"] == KEYS[1][:8]


def test_peer_hooks_environment(tmp_path: Path) -> None:
    from tunconnector.hubcontrol import PeerHooks

    fired: list[tuple[str, dict[str, str]]] = []

    class Fake:
        def fire(self, event: str, env: dict[str, str]) -> bool:
            fired.append((event, env))
            return True

    hub = make_hub(tmp_path)
    hooks = PeerHooks(Fake(), lambda: {"TUNCONNECTOR_TUNNEL": "hub"})
    hub.set_hooks(hooks)
    p = hub.peers["b"]
    p.addr = ("172.30.2.2", 4000)
    hub.state = hub.state.DOWN
    hub._peer_state(p, True, "alive")
    hub._peer_state(p, False, "gone")
    assert [e for e, _ in fired] == ["peer_up", "peer_down"]
    env = fired[0][1]
    assert env["TUNCONNECTOR_TUNNEL"] == "hub" and env["TUNCONNECTOR_PEER_NAME"] == "b"
    assert env["TUNCONNECTOR_PEER"] == "172.30.2.2:4000"
    assert env["TUNCONNECTOR_REMOTE_ADDRESS"] == "10.220.0.2"
    assert env["TUNCONNECTOR_PEER_PUBLIC_KEY"] == KEYS[1]


class _Links:
    """Netlink for one TAP: each new device starts with its own random MAC."""

    def __init__(self) -> None:
        self.lladdr = "02:00:00:00:00:01"
        self.set: list[str] = []

    def new_device(self) -> None:
        self.lladdr = "02:00:00:00:00:02"

    async def call(self, fn: Any, name: str, *args: Any, **kw: Any) -> Any:
        if fn is nl.get_lladdr:
            return self.lladdr
        if fn is nl.set_lladdr:
            self.lladdr = args[0]
            self.set.append(args[0])
            return None
        raise AssertionError(fn)


def test_tap_hub_keeps_its_mac_and_pin_on_a_recreated_device(tmp_path: Path) -> None:
    """A TAP hub's device deleted and recreated gets the MAC it had back (the peers' ARP
    caches point at it), and the pin against peers follows that one MAC only."""
    from tunconnector.proto.mactable import LOCAL, parse_mac

    hub = make_hub(tmp_path, dev_type="tap")
    links = _Links()
    hub.netlink = links  # type: ignore[assignment]
    asyncio.run(hub._own_lladdr("tap0"))
    first = parse_mac("02:00:00:00:00:01")
    assert links.set == [] and hub.macs.pinned(LOCAL) == [first]
    links.new_device()
    asyncio.run(hub._own_lladdr("tap0"))
    assert links.set == ["02:00:00:00:00:01"] and links.lladdr == "02:00:00:00:00:01"
    assert hub.macs.pinned(LOCAL) == [first]
