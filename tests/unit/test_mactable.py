"""The hub's learning switch: learning, flooding, aging, per-peer limit."""

from __future__ import annotations

from tunconnector.proto.mactable import (
    FLOOD,
    LOCAL,
    MAC_LIMIT,
    MAC_MOVE_REFUSED,
    MAC_PINNED,
    MacTable,
    parse_mac,
)

BCAST = b"\xff" * 6


def mac(i: int) -> bytes:
    return bytes([2, 0, 0, 0, i >> 8, i & 0xFF])


def frame(dst: bytes, src: bytes) -> bytes:
    return dst + src + b"\x08\x00" + bytes(46)


def test_learn_and_forward() -> None:
    t = MacTable()
    assert t.decide(frame(BCAST, mac(1)), "a", 0.0) == (FLOOD, None)
    assert t.decide(frame(mac(1), mac(2)), "b", 0.1) == ("a", None)
    assert t.decide(frame(mac(2), mac(1)), "a", 0.2) == ("b", None)
    assert t.decide(frame(mac(9), mac(1)), "a", 0.3) == (FLOOD, None)  # unknown unicast
    assert t.decide(frame(b"\x01\x00\x5e\x00\x00\x01", mac(1)), "a", 0.3)[0] == FLOOD
    t.learn(mac(100), LOCAL, 0.4)
    assert t.decide(frame(mac(100), mac(1)), "a", 0.5) == (LOCAL, None)
    assert t.decide(frame(mac(1), mac(3)), "a", 0.6) == (None, None)  # back where it came
    assert t.decide(b"short", "a", 0.7) == (None, None)


def test_station_moves() -> None:
    t = MacTable()
    t.learn(mac(1), "a", 0.0)
    t.learn(mac(1), "b", 1.0)
    assert t.lookup(mac(1), 1.0) == "b"
    assert (t.macs("a"), t.macs("b")) == (0, 1)


def test_aging() -> None:
    t = MacTable(aging=300.0)
    t.learn(mac(1), "a", 0.0)
    assert t.lookup(mac(1), 299.0) == "a"
    assert t.lookup(mac(1), 300.0) is None
    assert len(t) == 0
    t.learn(mac(2), "a", 0.0)
    t.learn(mac(3), "b", 200.0)
    assert t.expire(350.0) == 1
    assert t.lookup(mac(3), 350.0) == "b"


def test_per_peer_limit() -> None:
    t = MacTable(max_per_peer=1024)
    for i in range(1024):
        assert t.learn(mac(i), "a", 0.0) is None
    assert t.learn(mac(5000), "a", 0.0) == MAC_LIMIT
    assert t.lookup(mac(5000), 0.0) is None
    assert t.learn(mac(5000), "b", 0.0) is None  # other peers are not affected
    assert t.macs("a") == 1024
    assert t.learn(mac(1), "a", 1.0) is None  # a known address refreshes
    t.forget_port("a")
    assert t.macs("a") == 0 and t.lookup(mac(1), 1.0) is None
    assert t.learn(mac(6000), "a", 2.0) is None


def test_over_the_cap_dropped_not_flooded() -> None:
    t = MacTable(max_per_peer=4)
    for i in range(4):
        assert t.decide(frame(BCAST, mac(i)), "a", 0.0) == (FLOOD, None)
    # a random-source flood beyond the cap: each frame dropped, none flooded
    for i in range(100, 200):
        assert t.decide(frame(BCAST, mac(i)), "a", 0.1) == (None, MAC_LIMIT)
    assert t.decide(frame(BCAST, mac(1)), "a", 0.2) == (FLOOD, None)  # its own still go


def test_pinned_mac_never_learned_elsewhere() -> None:
    hub = parse_mac("02:00:00:00:77:01")
    t = MacTable(move_after=5.0)
    t.pin(hub, LOCAL)
    t.pin(mac(2), "b")  # a peer's static MAC
    for i in range(40):  # 20 frames/s for 2 s, and long after the owner fell silent
        now = i * 0.05 + (1000.0 if i >= 20 else 0.0)
        assert t.decide(frame(mac(9), hub), "a", now) == (None, MAC_PINNED)
        assert t.decide(frame(mac(9), mac(2)), "a", now) == (None, MAC_PINNED)
    assert t.lookup(hub, 2000.0) is LOCAL and t.lookup(mac(2), 2000.0) == "b"
    assert t.decide(frame(hub, mac(2)), "b", 2000.0) == (LOCAL, None)
    assert t.decide(frame(mac(2), mac(3)), "c", 2000.0) == ("b", None)
    t.forget_port("b")  # down: learned ones go, the pin stays
    assert t.lookup(mac(2), 2000.0) == "b"
    t.unpin_port("b")
    assert t.lookup(mac(2), 2000.0) is None


def test_mac_moves_only_after_its_owner_is_silent() -> None:
    t = MacTable(move_after=5.0)
    assert t.decide(frame(BCAST, mac(2)), "b", 0.0) == (FLOOD, None)
    now = 0.0
    while now < 30.0:  # c2 talks once a second; c1 claims its MAC 20 times a second
        now = round(now + 0.05, 2)
        if now % 1.0 == 0:
            assert t.decide(frame(BCAST, mac(2)), "b", now) == (FLOOD, None)
        assert t.decide(frame(mac(9), mac(2)), "a", now) == (None, MAC_MOVE_REFUSED)
        assert t.lookup(mac(2), now) == "b"
    # the station really moved: silent on b for move_after, then a takes it
    assert t.decide(frame(mac(9), mac(2)), "a", now + 4.9) == (None, MAC_MOVE_REFUSED)
    assert t.decide(frame(mac(9), mac(2)), "a", now + 5.0) == (FLOOD, None)
    assert t.lookup(mac(2), now + 5.0) == "a" and (t.macs("a"), t.macs("b")) == (1, 0)
    # the hub's own device is trusted: it takes an address at once
    assert t.decide(frame(BCAST, mac(2)), LOCAL, now + 5.1) == (FLOOD, None)
    assert t.lookup(mac(2), now + 5.1) is LOCAL


def test_parse_mac() -> None:
    assert parse_mac("02-00-5e-10-00-01") == bytes.fromhex("02005e100001")
    for bad in ("01:00:5e:00:00:01", "02:00:5e:10:00", "zz:00:5e:10:00:01"):
        try:
            parse_mac(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
