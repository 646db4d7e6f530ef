"""Cookie replies under load and the assignment in the handshake response (in memory)."""

from __future__ import annotations

from tunconnector.keys import decode_key, generate_keypair
from tunconnector.proto.assign import Assignment
from tunconnector.proto.cookie import (
    REPLY_LEN,
    Accept,
    CookieChecker,
    CookieJar,
    Drop,
    InitiationScreen,
    Reply,
    cookie_key,
    reply_session,
)
from tunconnector.proto.framing import MsgType, parse_header
from tunconnector.proto.secure import Assigned, HandshakeComplete, HandshakeGuard, SecureChannel


def pair(cookies: CookieChecker | None) -> tuple[SecureChannel, SecureChannel]:
    cpriv, cpub = generate_keypair()
    spriv, spub = generate_keypair()
    c = SecureChannel(initiator=True, private_key=decode_key(cpriv),
                      peer_public_key=decode_key(spub))
    s = SecureChannel(initiator=False, private_key=decode_key(spriv),
                      peer_public_key=decode_key(cpub), guard=HandshakeGuard(cookies=cookies))
    return c, s


def to(dst: SecureChannel, msgs: list[bytes], now: float, source: object = ("10.0.0.2", 5))\
        -> None:
    for m in msgs:
        dst.open(m, parse_header(m), now, source=source)


def test_under_load_a_cookie_then_mac2_gets_through() -> None:
    checker = CookieChecker(threshold=0)  # every initiation counts as load
    c, s = pair(checker)
    c.start(0.0)
    to(s, c.datagrams_to_send(), 0.0)
    assert s.datagrams_to_send() == []  # no DH, no response
    assert s.drops["cookie_sent"] == 1
    (reply, dest), = s.cookie_out
    assert dest == ("10.0.0.2", 5) and len(reply) == REPLY_LEN
    assert parse_header(reply).type == MsgType.COOKIE_REPLY
    to(c, [reply], 0.01)
    retry = c.datagrams_to_send()  # initiates again at once, now with mac2
    assert len(retry) == 1 and len(retry[0]) == s._init_len + 16
    to(s, retry, 0.02)
    to(c, s.datagrams_to_send(), 0.03)
    assert c.established
    to(s, c.datagrams_to_send(), 0.04)
    assert s.established


def test_cookie_bound_to_source_address() -> None:
    checker = CookieChecker(threshold=0)
    c, s = pair(checker)
    c.start(0.0)
    to(s, c.datagrams_to_send(), 0.0)
    (reply, _), = s.cookie_out
    to(c, [reply], 0.01)
    to(s, c.datagrams_to_send(), 0.02, source=("10.9.9.9", 5))  # another address
    assert not s.datagrams_to_send() and s.drops["cookie_sent"] == 2
    assert checker.refused == 1


def test_forged_cookie_reply_ignored() -> None:
    c, s = pair(CookieChecker(threshold=0))
    c.start(0.0)
    init = c.datagrams_to_send()[0]
    forged = bytearray(CookieChecker().make_reply(parse_header(init).session, b"x" * 16,
                                                  "a", 0.0, bytes(32)))
    to(c, [bytes(forged)], 0.01)
    assert c.drops["bad_cookie"] == 1 and c.datagrams_to_send() == []


def test_not_under_load_no_cookie() -> None:
    c, s = pair(CookieChecker(threshold=100))
    c.start(0.0)
    to(s, c.datagrams_to_send(), 0.0)
    to(c, s.datagrams_to_send(), 0.01)
    assert c.established and not s.cookie_out


def test_load_window() -> None:
    ck = CookieChecker(threshold=3)
    for i in range(3):
        ck.note_initiation(0.1 * i)
    assert not ck.under_load(0.3)
    ck.note_initiation(0.35)
    assert ck.under_load(0.4) and ck.under_load(1.3) and not ck.under_load(1.4)


def test_response_carries_assignment() -> None:
    c, s = pair(None)
    a = Assignment("10.220.0.5/24", ("10.220.0.0/24", "10.99.0.0/16"), 1420)
    s.response_extra = a.encode()
    c.start(0.0)
    to(s, c.datagrams_to_send(), 0.0)
    to(c, s.datagrams_to_send(), 0.01)
    evs = []
    while (e := c.next_event()) is not None:
        evs.append(e)
    assert isinstance(evs[0], HandshakeComplete)
    assert Assignment.decode(next(e for e in evs if isinstance(e, Assigned)).payload) == a


def test_assignment_decode_rejects_garbage() -> None:
    import pytest

    from tunconnector.errors import RemoteProtocolError

    for bad in (b"", b"[]", b'{"a": 5}', b'{"r": ["x"]}', b'{"m": 5}', b"\xff" * 9000):
        with pytest.raises(RemoteProtocolError):
            Assignment.decode(bad)
    many = Assignment("10.0.0.2/24", tuple(f"10.{i // 256}.{i % 256}.0/24"
                                            for i in range(3000)))
    assert len(many.encode()) <= 8192


def test_reply_budget() -> None:
    ck = CookieChecker(reply_rate=10, reply_burst=5)
    assert sum(ck.may_reply(0.0) for _ in range(20)) == 5
    assert ck.throttled == 15
    assert sum(ck.may_reply(1.0) for _ in range(20)) == 5  # refilled (capped at burst)


def test_late_response_to_the_previous_initiation_is_taken() -> None:
    c, s = pair(None)
    c.start(0.0)
    first = c.datagrams_to_send()
    c.handle_timer(1.5)  # retransmits: a new initiation, a new index
    second = c.datagrams_to_send()
    assert len(second) == 1 and second[0][4:8] != first[0][4:8]
    to(s, first, 1.6)  # the responder was slow: it answers the first one
    to(c, s.datagrams_to_send(), 1.7)
    assert c.established and c.drops["stale_response"] == 0


# -- InitiationScreen: what a responder decides before any DH --------------------------

MAC1_KEY = bytes(range(32))
SCREEN_INIT_LEN = 16 + 100 + 16  # header, a Noise message 1 (opaque here), mac1
SRC = ("10.0.0.2", 5)


def initiation(*, key: bytes = MAC1_KEY, cookie: bytes | None = None, sender: int = 7) -> bytes:
    """An initiation as the screen sees it: header, an opaque body, mac1 [, mac2]."""
    import hashlib

    from tunconnector.proto.cookie import mac2_of
    from tunconnector.proto.framing import HEADER, VERSION

    data = HEADER.pack(VERSION, MsgType.HANDSHAKE_INIT, 0, 0, sender, 0) + bytes(100)
    msg = data + hashlib.blake2s(data, key=key, digest_size=16).digest()
    return msg if cookie is None else msg + mac2_of(cookie, msg)


def screen(checker: CookieChecker | None, *, hub: bool = True, rate: float = 20.0,
           burst: float = 5.0) -> InitiationScreen:
    from tunconnector.proto.secure import TokenBucketLimiter

    return InitiationScreen(init_len=SCREEN_INIT_LEN, mac_keys=[MAC1_KEY], cookies=checker,
                            limiter=TokenBucketLimiter(rate=rate, burst=burst),
                            cookie_key=cookie_key(MAC1_KEY), throttle_before_mac=hub,
                            limit_always=not hub)


def cookie_from(reply: Reply, msg: bytes) -> bytes:
    """What the initiator learns from a COOKIE_REPLY to ``msg``."""
    jar = CookieJar()
    assert jar.consume(reply.packet, msg[-16:], cookie_key(MAC1_KEY), 0.0)
    assert jar.cookie is not None
    return jar.cookie


def test_screen_table() -> None:
    """Each verdict, on the hub's settings (the channel's differ only where tested below)."""
    idle = screen(CookieChecker(threshold=100))
    msg = initiation()
    assert idle.check(msg[:-1], SRC, 0.0) == Drop("truncated")
    assert idle.check(msg + bytes(17), SRC, 0.0) == Drop("truncated")
    assert idle.check(initiation(key=bytes(32)), SRC, 0.0) == Drop("bad_mac")
    assert idle.check(msg, SRC, 0.0) == Accept(msg)

    loaded = screen(CookieChecker(threshold=0))  # every initiation counts as load
    reply = loaded.check(msg, SRC, 0.0)
    assert isinstance(reply, Reply) and reply.reason == "cookie_sent"
    assert len(reply.packet) == REPLY_LEN and reply_session(reply.packet) == 7
    with_mac2 = initiation(cookie=cookie_from(reply, msg))
    assert loaded.check(with_mac2, SRC, 0.1) == Accept(msg)  # mac2 cut off
    assert isinstance(loaded.check(with_mac2, ("10.9.9.9", 5), 0.2), Reply)  # other host
    assert isinstance(loaded.check(with_mac2, ("10.0.0.2", 99), 0.3), Accept)  # host only
    assert loaded.check(initiation(key=bytes(32)), SRC, 0.4) == Drop("bad_mac")


def test_screen_reply_budget_and_pre_mac_throttle() -> None:
    """Under load and out of reply budget, the hub drops an initiation without mac2 before
    computing its MAC (a bad one is throttled, not counted bad_mac); the channel checks
    the MAC first. One reply takes one token, never two."""
    hub_ck = CookieChecker(threshold=0, reply_rate=0.0, reply_burst=2)
    hub = screen(hub_ck)
    verdicts = [hub.check(initiation(), SRC, 0.0) for _ in range(3)]
    assert [type(v) for v in verdicts] == [Reply, Reply, Drop]
    assert verdicts[2] == Drop("cookie_throttled")
    assert hub.check(initiation(key=bytes(32)), SRC, 0.1) == Drop("cookie_throttled")
    with_mac2 = initiation(key=bytes(32), cookie=bytes(16))  # has mac2: MAC-checked
    assert hub.check(with_mac2, SRC, 0.2) == Drop("bad_mac")

    chan_ck = CookieChecker(threshold=0, reply_rate=0.0, reply_burst=1)
    chan = screen(chan_ck, hub=False)
    assert isinstance(chan.check(initiation(), SRC, 0.0), Reply)
    assert chan.check(initiation(), SRC, 0.1) == Drop("cookie_throttled")
    assert chan.check(initiation(key=bytes(32)), SRC, 0.2) == Drop("bad_mac")


def test_screen_rate_limit() -> None:
    """The hub limits per source only under load; the channel always."""
    msg = initiation()
    hub = screen(CookieChecker(threshold=100), rate=1.0, burst=2.0)
    assert all(isinstance(hub.check(msg, SRC, 0.0), Accept) for _ in range(5))
    chan = screen(None, hub=False, rate=1.0, burst=2.0)
    got = [chan.check(msg, SRC, 0.0) for _ in range(3)]
    assert got == [Accept(msg), Accept(msg), Drop("rate_limited")]
    assert chan.check(msg, ("10.0.0.3", 5), 0.0) == Accept(msg)  # per source

    loaded = screen(CookieChecker(threshold=0), rate=1.0, burst=2.0)
    reply = loaded.check(msg, SRC, 0.0)
    assert isinstance(reply, Reply)
    with_mac2 = initiation(cookie=cookie_from(reply, msg))
    got = [loaded.check(with_mac2, SRC, 0.0) for _ in range(3)]
    assert got == [Accept(msg), Accept(msg), Drop("rate_limited")]


def test_screen_mac_keys_and_no_cookies() -> None:
    """A hub takes mac1 under any of its keys (its own, per-PSK ones); without a checker
    nothing is ever answered with a cookie."""
    other = bytes(32)
    s = screen(None)
    assert s.check(initiation(key=other), SRC, 0.0) == Drop("bad_mac")
    s.set_mac_keys([MAC1_KEY, other])
    assert isinstance(s.check(initiation(key=other), SRC, 0.0), Accept)
    assert isinstance(s.check(initiation(), SRC, 0.0), Accept)
    s.set_mac_keys([other])
    assert s.check(initiation(), SRC, 0.0) == Drop("bad_mac")


def test_dh_counted_only_past_the_screen() -> None:
    """``counters["dh"]`` (status ``initiations_processed``) counts the initiations that
    cost a Diffie-Hellman: not those answered with a cookie, nor a bad mac1."""
    c, s = pair(CookieChecker(threshold=1))  # load from the second initiation on
    c.start(0.0)
    first = c.datagrams_to_send()
    to(s, first, 0.0)
    assert s.counters["dh"] == 1 and s.stats(0.0)["initiations_processed"] == 1
    for i in range(50):  # a flood of copies: a cookie each, no DH
        to(s, first, 0.01 + i * 0.001)
    assert s.counters["dh"] == 1 and s.drops["cookie_sent"] == 50
    assert len(s.cookie_out) == 50
    forged = bytearray(first[0])
    forged[-1] ^= 1
    to(s, [bytes(forged)], 0.1)
    assert s.counters["dh"] == 1 and s.drops["bad_mac"] == 1


def test_load_estimate_spans_window_boundary() -> None:
    """A burst that starts late in one counting window is under load once it reaches the
    threshold, not only after the threshold again in the next window."""
    ck = CookieChecker(threshold=10)
    ck.note_initiation(0.0)  # opens a window [0, 1)
    for i in range(9):
        ck.note_initiation(0.95 + i * 0.001)
    assert not ck.under_load(0.96)  # 10 in the last second: at the threshold
    ck.note_initiation(1.0)  # a new window, but the last second holds 11
    assert ck.under_load(1.0)
    quiet = CookieChecker(threshold=10)
    for i in range(10):
        quiet.note_initiation(0.1 * i)
    quiet.note_initiation(2.5)  # the previous full window is long past: not carried
    assert not quiet.under_load(2.5)


def test_backlog_means_under_load_at_once() -> None:
    """Many initiations in one read (a queue of them): under load for a second, before the
    handled rate says so (a responder short of CPU handles few while its queue fills)."""
    ck = CookieChecker()
    assert not ck.under_load(10.0)
    ck.note_backlog(10.0)
    assert ck.under_load(10.0) and ck.under_load(10.9)
    assert not ck.under_load(11.0)
