"""The hub's address pool: leases, reservations, persistence, exhaustion."""

from __future__ import annotations

import ipaddress
import json

import pytest

from tunconnector.proto.pool import AddressPool, PoolExhausted


def test_assign_is_stable_and_skips_reserved() -> None:
    p = AddressPool("10.220.0.0/24", reserved=["10.220.0.1", "10.220.0.2"])
    a = p.assign("key-a")
    assert a == ipaddress.ip_address("10.220.0.3")
    assert p.assign("key-a") == a  # reconnect: same address
    b = p.assign("key-b")
    assert b != a and b not in (ipaddress.ip_address("10.220.0.1"),
                                ipaddress.ip_address("10.220.0.2"))


def test_persisted_across_restarts() -> None:
    p = AddressPool("10.220.0.0/24", reserved=["10.220.0.1"])
    addrs = {k: p.assign(k) for k in ("x", "y", "z")}
    saved = json.loads(json.dumps(p.dump()))
    q = AddressPool("10.220.0.0/24", reserved=["10.220.0.1"])
    assert q.load(saved) == 3
    assert {k: q.assign(k) for k in ("z", "y", "x")} == addrs
    # junk in the state file is skipped, never fatal
    r = AddressPool("10.220.0.0/24", reserved=["10.220.0.1"])
    assert r.load({"leases": {"a": "10.9.9.9", "b": "nonsense", "c": "10.220.0.1",
                              "d": "10.220.0.255", "e": "10.220.0.7"}}) == 1
    assert r.load(["not", "a", "dict"]) == 0


def test_fixed_address_reserved_later_moves_the_lease() -> None:
    p = AddressPool("10.220.0.0/24", reserved=["10.220.0.1"])
    a = p.assign("k")
    p.reserve(a)  # an operator fixed that address for another peer
    assert p.assign("k") != a


def test_exhaustion_reclaims_unconfigured_keys_only() -> None:
    p = AddressPool("10.220.0.0/29", reserved=["10.220.0.1"])  # 6 hosts, 5 free
    for i in range(5):
        p.assign(f"k{i}")
    with pytest.raises(PoolExhausted):
        p.assign("new", active=[f"k{i}" for i in range(5)])
    got = p.assign("new", active=["k1", "k2", "k3", "k4"])  # k0 left the config
    assert got == ipaddress.ip_address("10.220.0.2")
    assert p.lookup("k0") is None
    assert p.size == 6


def test_ipv6_pool() -> None:
    p = AddressPool("fd00:220::/120", reserved=["fd00:220::1"])
    assert p.assign("k") == ipaddress.ip_address("fd00:220::2")
