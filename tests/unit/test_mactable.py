"""The hub's learning switch: learning, flooding, aging, per-peer limit."""

from __future__ import annotations

from tunconnector.proto.mactable import FLOOD, LOCAL, MacTable

BCAST = b"\xff" * 6


def mac(i: int) -> bytes:
    return bytes([2, 0, 0, 0, i >> 8, i & 0xFF])


def frame(dst: bytes, src: bytes) -> bytes:
    return dst + src + b"\x08\x00" + bytes(46)


def test_learn_and_forward() -> None:
    t = MacTable()
    assert t.decide(frame(BCAST, mac(1)), "a", 0.0) == (FLOOD, True)
    assert t.decide(frame(mac(1), mac(2)), "b", 0.1) == ("a", True)
    assert t.decide(frame(mac(2), mac(1)), "a", 0.2) == ("b", True)
    assert t.decide(frame(mac(9), mac(1)), "a", 0.3) == (FLOOD, True)  # unknown unicast
    assert t.decide(frame(b"\x01\x00\x5e\x00\x00\x01", mac(1)), "a", 0.3)[0] == FLOOD
    t.learn(mac(100), LOCAL, 0.4)
    assert t.decide(frame(mac(100), mac(1)), "a", 0.5) == (LOCAL, True)
    assert t.decide(frame(mac(1), mac(3)), "a", 0.6) == (None, True)  # back where it came
    assert t.decide(b"short", "a", 0.7) == (None, True)


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
        assert t.learn(mac(i), "a", 0.0)
    assert not t.learn(mac(5000), "a", 0.0)
    assert t.lookup(mac(5000), 0.0) is None
    assert t.learn(mac(5000), "b", 0.0)  # other peers are not affected
    assert t.macs("a") == 1024
    assert t.learn(mac(1), "a", 1.0)  # a known address refreshes
    t.forget_port("a")
    assert t.macs("a") == 0 and t.lookup(mac(1), 1.0) is None
    assert t.learn(mac(6000), "a", 2.0)
