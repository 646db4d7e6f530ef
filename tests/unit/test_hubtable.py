"""The hub's peer table alone (proto/hubtable.py): what a new table does to the peers,
their addresses, routes and MAC pins, and what it reports. No hub, no files."""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

import pytest

from tunconnector.config import Config, PeerConfig, TunnelConfig
from tunconnector.errors import ConfigError
from tunconnector.keys import generate_keypair
from tunconnector.proto.assign import Assignment
from tunconnector.proto.hubtable import PeerTable, TableChanges, hub_networks, prefix_len_for
from tunconnector.proto.mactable import MacTable, parse_mac
from tunconnector.proto.pool import AddressPool
from tunconnector.proto.router import Router

KEYS = [generate_keypair()[1] for _ in range(4)]
MTU = 1400


def hub_config(**more: Any) -> TunnelConfig:
    cfg = Config.from_mapping({"tunnel": [{
        "name": "hub", "mode": "server", "address": "10.220.0.1/24", "port": 0,
        "private_key_file": "/nonexistent/hub.key", "pool": "10.220.0.0/24",
        "client_to_client": True, "push_routes": ["10.99.0.0/16"],
        "peer": [{"name": "b", "public_key": KEYS[1]}], **more}]})
    return cfg.tunnel[0]  # its peer list is the file's: each test applies its own


def make_table(cfg: TunnelConfig) -> PeerTable:
    pool = None
    if cfg.pool is not None:
        reserved: list[Any] = [i.ip for i in cfg.interfaces]
        pool = AddressPool(cfg.pool, reserved=reserved)
    return PeerTable(cfg, MTU, Router(client_to_client=cfg.client_to_client), MacTable(),
                     pool)


def keys(pc: PeerConfig, where: str) -> tuple[bytes, bytes | None]:
    return base64.b64decode(pc.public_key), None


A = PeerConfig("a", KEYS[0], address="10.220.0.50", allowed_ips=["192.168.10.0/24"])
B = PeerConfig("b", KEYS[1])


def test_initial_table_assigns_addresses_routes_and_leases() -> None:
    table = make_table(hub_config())
    result = table.apply([A, B], keys, initial=True)
    assert result == {"added": ["a", "b"], "removed": [], "changed": [], "unchanged": []}
    a, b = table.peers["a"], table.peers["b"]
    assert str(a.address) == "10.220.0.50" and str(b.address) == "10.220.0.2"
    assert a.prefixes == ["10.220.0.50/32", "192.168.10.0/24"]
    assert table.router.lookup("192.168.10.9") is a and table.router.lookup("10.220.0.2") is b
    assert b.assignment == Assignment(
        "10.220.0.2/24", ("10.220.0.0/24", "192.168.10.0/24", "10.99.0.0/16"), MTU)
    assert a.assignment == Assignment("10.220.0.50/24", ("10.220.0.0/24", "10.99.0.0/16"),
                                      MTU)
    assert table.by_key(base64.b64decode(KEYS[1])) is b and b.key_b64 == KEYS[1]
    assert table.take_changes() == TableChanges(leases_changed=True)  # b's lease is new
    assert table.pool is not None and table.pool.lookup(KEYS[1]) == b.address


def test_diff_outcomes_keep_unchanged_peers() -> None:
    table = make_table(hub_config())
    table.apply([A, B], keys, initial=True)
    table.take_changes()
    a, b = table.peers["a"], table.peers["b"]
    a_again = PeerConfig("a", KEYS[0], address="10.220.0.50",
                         allowed_ips=["192.168.10.0/24"])
    b_changed = PeerConfig("b", KEYS[1], allowed_ips=["172.16.0.0/24"])
    result = table.apply([a_again, PeerConfig("c", KEYS[2]), b_changed], keys)
    assert result == {"added": ["c"], "removed": [], "changed": ["b"], "unchanged": ["a"]}
    assert table.peers["a"] is a and a.cfg is a_again  # same object: its session stays
    assert table.peers["b"] is not b and table.take_changes().removed == [b]
    assert str(table.peers["b"].address) == "10.220.0.2"  # its lease follows its key
    assert table.router.lookup("172.16.0.5") is table.peers["b"]
    # with client_to_client, the others learn the new prefixes
    assert a.assignment is not None and "172.16.0.0/24" in a.assignment.routes

    c = table.peers["c"]
    result = table.apply([a_again], keys)
    assert result == {"added": [], "removed": ["c", "b"], "changed": [], "unchanged": ["a"]}
    assert set(table.peers) == {"a"} and c in table.take_changes().removed
    assert table.router.lookup("172.16.0.5") is None
    assert table.router.lookup(str(c.address)) is None
    assert table.by_key(c.public) is None


def test_a_key_moved_to_another_name() -> None:
    table = make_table(hub_config())
    table.apply([A, B], keys, initial=True)
    table.take_changes()
    a, b = table.peers["a"], table.peers["b"]
    # a's key now belongs to c: a goes, c is a new peer (no session carried over)
    result = table.apply([PeerConfig("c", KEYS[0]), B], keys)
    assert result == {"added": ["c"], "removed": ["a"], "changed": [], "unchanged": ["b"]}
    assert table.take_changes().removed == [a]
    assert table.by_key(base64.b64decode(KEYS[0])) is table.peers["c"]
    assert table.router.lookup("192.168.10.9") is None
    # two names swap keys at once: each becomes a new peer
    result = table.apply([PeerConfig("b", KEYS[0]), PeerConfig("c", KEYS[1])], keys)
    assert result == {"added": ["c"], "removed": [], "changed": ["b"], "unchanged": []}
    assert {p.name for p in table.take_changes().removed} == {"b", "c"}
    assert table.peers["b"] is not b
    assert table.by_key(base64.b64decode(KEYS[0])) is table.peers["b"]
    assert table.by_key(base64.b64decode(KEYS[1])) is table.peers["c"]


def test_pool_exhausted_leaves_a_peer_without_address() -> None:
    table = make_table(hub_config(address="10.220.0.1/30", pool="10.220.0.0/30"))
    b, c = PeerConfig("b", KEYS[1]), PeerConfig("c", KEYS[2])
    table.apply([b, c], keys, initial=True)
    changes = table.take_changes()
    assert str(table.peers["b"].address) == "10.220.0.2"
    assert table.peers["c"].address is None and table.peers["c"].prefixes == []
    [(p, why)] = changes.no_address
    assert p is table.peers["c"] and "exhausted" in why
    assert table.peers["c"].assignment == Assignment(None, ("10.220.0.0/30", "10.99.0.0/16"),
                                                     MTU)
    assert changes.leases_changed
    # b leaves: c gets the address; b's lease is reclaimed for a configured key
    table.apply([c], keys)
    changes = table.take_changes()
    assert str(table.peers["c"].address) == "10.220.0.2"
    assert changes.leases_changed and changes.no_address == []


def test_a_fixed_address_takes_a_lease_over() -> None:
    table = make_table(hub_config())
    table.apply([B], keys, initial=True)
    table.take_changes()
    assert str(table.peers["b"].address) == "10.220.0.2"
    # a new peer is given b's leased address as its fixed one: b moves on
    c = PeerConfig("c", KEYS[2], address="10.220.0.2")
    result = table.apply([B, c], keys)
    assert result == {"added": ["c"], "removed": [], "changed": [], "unchanged": ["b"]}
    assert str(table.peers["c"].address) == "10.220.0.2"
    assert str(table.peers["b"].address) == "10.220.0.3"
    assert table.router.lookup("10.220.0.2") is table.peers["c"]
    assert table.router.lookup("10.220.0.3") is table.peers["b"]
    assert table.take_changes().leases_changed
    # c goes: b keeps the address it has, nobody is routed to c's
    table.apply([B], keys)
    assert str(table.peers["b"].address) == "10.220.0.3"
    assert table.router.lookup("10.220.0.2") is None


@pytest.mark.parametrize("peers", [
    [A, PeerConfig("d", KEYS[2], address="10.220.0.50")],  # one address, two peers
    [A, PeerConfig("d", KEYS[2], address="10.220.0.1")],  # the hub's own address
    [A, PeerConfig("d", KEYS[0])],  # one key, two names
    [A, PeerConfig("a", KEYS[2])],  # one name, twice
])
def test_conflicts_are_refused_and_change_nothing(peers: list[PeerConfig]) -> None:
    table = make_table(hub_config())
    table.apply([A, B], keys, initial=True)
    table.take_changes()
    before = dict(table.peers)
    with pytest.raises(ConfigError):
        table.apply(peers, keys)
    assert table.peers == before and table.take_changes() == TableChanges()


def test_one_key_two_names_in_an_unchecked_table() -> None:
    table = make_table(hub_config())
    with pytest.raises(ConfigError, match="the same key is given to two peers"):
        table.apply([A, PeerConfig("d", KEYS[0])], keys, initial=True)


def test_tap_pins_macs_and_announces_the_gateway() -> None:
    cfg = hub_config(dev_type="tap", client_to_client=False, push_routes=[])
    table = make_table(cfg)
    mac = "02:00:00:00:00:0b"
    table.apply([PeerConfig("b", KEYS[1], mac=mac)], keys, initial=True)
    b = table.peers["b"]
    assert table.macs.pinned(b) == [parse_mac(mac)]
    assert b.assignment == Assignment("10.220.0.2/24", ("10.220.0.0/24",), MTU, "10.220.0.1")
    table.apply([], keys)
    assert table.macs.pinned(b) == [] and table.take_changes().removed == [b]


def test_networks_and_prefix_lengths() -> None:
    inside = hub_config()
    assert hub_networks(inside) == ["10.220.0.0/24"]  # the pool is within the interface
    apart = hub_config(pool="10.230.0.0/16")
    assert hub_networks(apart) == ["10.220.0.0/24", "10.230.0.0/16"]
    ip = ipaddress.ip_address
    assert prefix_len_for(apart, ip("10.220.0.9")) == 24
    assert prefix_len_for(apart, ip("10.230.4.4")) == 16
    assert prefix_len_for(apart, ip("10.240.0.1")) == 32


def test_clear_forgets_every_peer() -> None:
    table = make_table(hub_config())
    table.apply([A, B], keys, initial=True)
    table.clear()
    assert table.peers == {} and table.by_key(base64.b64decode(KEYS[0])) is None
