"""SecureChannel state machine with injected time: two channels exchange bytes in memory."""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunconnector.errors import CryptoError
from tunconnector.proto.framing import FLAG_GSO, MsgType, encode_native, parse_header
from tunconnector.proto.secure import (
    AuthFailure,
    Event,
    HandshakeComplete,
    Rekeyed,
    SecureChannel,
    SessionExpired,
    TokenBucketLimiter,
)
from tunconnector.proto.session import REKEY_AFTER_MESSAGES

PSK = bytes(range(32))
Drop = Callable[[str, bytes], bool]


def make(mode: str = "psk", cipher: str = "chacha20-poly1305", **kw: object
         ) -> tuple[SecureChannel, SecureChannel]:
    if mode == "psk":
        c = SecureChannel(initiator=True, psk=PSK, cipher=cipher, **kw)  # type: ignore[arg-type]
        s = SecureChannel(initiator=False, psk=PSK, cipher=cipher, **kw)  # type: ignore[arg-type]
        return c, s
    from tunconnector.keys import decode_key, generate_keypair

    cpriv, cpub = generate_keypair()
    spriv, spub = generate_keypair()
    psk = PSK if mode == "ik+psk" else None
    c = SecureChannel(initiator=True, psk=psk, private_key=decode_key(cpriv),
                      peer_public_key=decode_key(spub), cipher=cipher, **kw)  # type: ignore[arg-type]
    s = SecureChannel(initiator=False, psk=psk, private_key=decode_key(spriv),
                      peer_public_key=decode_key(cpub), cipher=cipher, **kw)  # type: ignore[arg-type]
    return c, s


def deliver(src: SecureChannel, dst: SecureChannel, now: float, *, name: str = "",
            drop: Drop | None = None, source: object = "peer") -> list[bytes]:
    got = []
    for m in src.datagrams_to_send():
        if drop is not None and drop(name, m):
            continue
        r = dst.open(m, parse_header(m), now, source=source)
        if r is not None:
            got.append(r)
    return got


def pump(c: SecureChannel, s: SecureChannel, now: float, drop: Drop | None = None,
         rounds: int = 4) -> list[bytes]:
    got: list[bytes] = []
    for _ in range(rounds):
        got += deliver(c, s, now, name="c>s", drop=drop)
        got += deliver(s, c, now, name="s>c", drop=drop)
    return got


def send(src: SecureChannel, dst: SecureChannel, data: bytes, now: float) -> bytes | None:
    m = src.seal(data, now)
    return None if m is None else dst.open(m, parse_header(m), now, source="peer")


def events(ch: SecureChannel) -> list[Event]:
    out = []
    while (e := ch.next_event()) is not None:
        out.append(e)
    return out


def run_timers(chs: list[SecureChannel], start: float, end: float,
               drop: Drop | None = None) -> float:
    """Advance time from timer to timer (like the runtime's loop) and move messages."""
    now = start
    c, s = chs
    for _ in range(10_000):
        pump(c, s, now, drop)
        timers = [t for t in (c.get_timer(), s.get_timer()) if t is not None]
        if not timers or min(timers) > end:
            return end
        now = max(now, min(timers))
        c.handle_timer(now)
        s.handle_timer(now)
    raise AssertionError("timer loop did not settle")


def establish(c: SecureChannel, s: SecureChannel, now: float = 0.0) -> None:
    c.start(now)
    pump(c, s, now)
    assert c.established and s.established


@pytest.mark.parametrize("mode", ["psk", "ik", "ik+psk"])
@pytest.mark.parametrize("cipher", ["chacha20-poly1305", "aes-256-gcm"])
def test_handshake_and_data_both_ways(mode: str, cipher: str) -> None:
    c, s = make(mode, cipher)
    assert c.seal(b"early", 0.0) is None  # queued, handshake started
    got = pump(c, s, 0.01)
    assert got == [b"early"]
    assert events(c) == [HandshakeComplete(True)]
    assert events(s) == [HandshakeComplete(False)]
    assert send(s, c, b"pong", 0.02) == b"pong"
    assert send(c, s, b"ping", 0.03) == b"ping"
    payload = os.urandom(60_000)
    assert send(c, s, payload, 0.04) == payload
    assert not c.drops and not s.drops
    assert c.stats(1.0)["established"] and s.stats(1.0)["handshakes"] == 1


def test_server_never_initiates_first_and_keepalive_confirms() -> None:
    c, s = make()
    s.start(0.0)
    assert s.seal(b"x", 0.0) is None and s.datagrams_to_send() == []
    assert s.get_timer() is None
    c.start(0.0)
    # the queued server frame goes out once the initiator's keepalive confirms the keypair
    assert pump(c, s, 0.0) == [b"x"]
    assert s.established


def test_in_place_api_round_trip() -> None:
    c, s = make()
    establish(c, s)
    frame = os.urandom(1400)
    buf = bytearray(16 + len(frame) + 16)
    buf[16:16 + len(frame)] = frame
    n = c.seal_into(buf, len(frame), 1.0)
    assert n == len(buf)
    view = s.open_into(buf, parse_header(buf), 1.0)
    assert view is not None and bytes(view) == frame


def test_queue_is_bounded() -> None:
    c, s = make(queue_limit=4)
    for i in range(10):
        assert c.seal(bytes([i]), 0.0) is None
    assert c.drops["queue_full"] == 6
    assert pump(c, s, 0.0) == [bytes([i]) for i in range(6, 10)]


def test_lost_initiations_retransmit_with_backoff() -> None:
    c, s = make()
    c.start(0.0)
    sent_at = []
    now = 0.0
    for _ in range(6):
        msgs = c.datagrams_to_send()
        assert [parse_header(m).type for m in msgs] == [MsgType.HANDSHAKE_INIT]
        sent_at.append(now)
        t = c.get_timer()
        assert t is not None
        now = t
        c.handle_timer(now)
    assert [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)] == [1, 2, 4, 8, 8]
    fails = [e for e in events(c) if isinstance(e, AuthFailure)]
    assert [f.reason for f in fails] == ["no_response"]
    assert "key" in fails[0].message
    pump(c, s, now)  # the network heals
    assert c.established and s.established


def test_lost_response_and_stale_response() -> None:
    c, s = make()
    c.start(0.0)
    deliver(c, s, 0.0)
    lost_resp = s.datagrams_to_send()  # lost on the way
    assert len(lost_resp) == 1
    c.handle_timer(1.0)  # retransmit: new initiation, new index
    pump(c, s, 1.0)
    assert c.established and s.established
    old = lost_resp[0]
    assert c.open(old, parse_header(old), 1.5) is None
    assert c.drops["stale_response"] == 1
    assert send(c, s, b"a", 2.0) == b"a" and send(s, c, b"b", 2.0) == b"b"


def test_duplicate_initiation_answered_once() -> None:
    c, s = make()
    c.start(0.0)
    (init,) = c.datagrams_to_send()
    s.open(init, parse_header(init), 0.0)
    s.open(init, parse_header(init), 0.0)
    assert len(s.datagrams_to_send()) == 1
    assert s.drops["replay"] == 1


def test_replayed_initiation_after_session_is_refused() -> None:
    c, s = make()
    c.start(0.0)
    (init,) = c.datagrams_to_send()
    s.open(init, parse_header(init), 0.0)
    pump(c, s, 0.0)
    assert s.established
    s.open(init, parse_header(init), 50.0)
    assert s.datagrams_to_send() == [] and s.drops["replay"] == 1
    assert send(c, s, b"still", 50.0) == b"still"


@pytest.mark.parametrize("order", ["c_first", "s_first"])
def test_crossed_initiations_resolve_to_one_session(order: str) -> None:
    c, s = make(rekey_after_time=10.0)
    establish(c, s)
    events(c), events(s)
    # both decide to rekey at the same moment
    c.force_rekey(5.0)
    s.force_rekey(5.0)
    ci, si = c.datagrams_to_send(), s.datagrams_to_send()
    pairs = [(ci, s), (si, c)] if order == "c_first" else [(si, c), (ci, s)]
    for msgs, dst in pairs:
        for m in msgs:
            dst.open(m, parse_header(m), 5.0)
    pump(c, s, 5.0)
    # the client (preferred initiator) won: the server answered, the client ignored
    assert c.drops["crossed_initiation"] == 1
    assert c.current is not None and s.current is not None
    assert c.current.local_index == s.current.remote_index
    assert s.current.local_index == c.current.remote_index
    assert c.current.initiator and not s.current.initiator
    assert [type(e) for e in events(c)] == [Rekeyed]
    assert [type(e) for e in events(s)] == [Rekeyed]
    assert send(c, s, b"x", 5.1) == b"x" and send(s, c, b"y", 5.1) == b"y"
    # the server gave up its own initiation: no retransmission later
    t = s.get_timer()
    assert t is None or t >= 5.0 + 10.0


def test_crossed_same_role_breaks_tie_by_ephemeral() -> None:
    a = SecureChannel(initiator=True, psk=PSK)
    b = SecureChannel(initiator=True, psk=PSK)
    a.start(0.0)
    b.start(0.0)
    am, bm = a.datagrams_to_send(), b.datagrams_to_send()
    for m in am:
        b.open(m, parse_header(m), 0.0)
    for m in bm:
        a.open(m, parse_header(m), 0.0)
    for _ in range(3):
        deliver(a, b, 0.0)
        deliver(b, a, 0.0)
    assert a.drops["crossed_initiation"] + b.drops["crossed_initiation"] == 1
    assert a.established and b.established
    assert a.current is not None and b.current is not None
    assert a.current.local_index == b.current.remote_index


def test_rekey_on_time_loses_nothing_in_flight() -> None:
    c, s = make(rekey_after_time=10.0)
    establish(c, s)
    events(c), events(s)
    in_flight_c = [c.seal(b"c%d" % i, 9.0) for i in range(5)]
    in_flight_s = [s.seal(b"s%d" % i, 9.0) for i in range(5)]
    # time passes the rekey age: the next send starts a handshake, which completes
    assert c.seal(b"trigger", 10.5) is not None
    assert c._pending is not None  # noqa: SLF001 - white-box check of the trigger
    got = pump(c, s, 10.5)
    assert events(c) == [Rekeyed(True)] and events(s) == [Rekeyed(False)]
    assert c.rekeys == 1 and s.rekeys == 1
    # old-keypair packets still arrive after the switch, in both directions
    for m in in_flight_c:
        assert m is not None
        assert s.open(m, parse_header(m), 10.6) is not None
    for m in in_flight_s:
        assert m is not None
        assert c.open(m, parse_header(m), 10.6) is not None
    assert got == []  # the trigger frame was sent on the old keypair, not queued
    assert send(c, s, b"new", 10.7) == b"new" and send(s, c, b"new", 10.7) == b"new"
    assert not c.drops and not s.drops


def test_rekey_driven_by_timers_only() -> None:
    c, s = make(rekey_after_time=2.0)
    c.start(0.0)
    run_timers([c, s], 0.0, 20.0)
    assert c.rekeys >= 8 and s.rekeys >= 8
    assert not c.drops and not s.drops
    assert send(c, s, b"x", 20.0) == b"x"


def test_rekey_on_volume() -> None:
    c, s = make(rekey_after_bytes=10_000)
    establish(c, s)
    events(c)
    for i in range(10):
        m = c.seal(b"x" * 1500, 1.0 + i / 100)
        assert m is not None
        s.open(m, parse_header(m), 1.0)
    pump(c, s, 1.2)
    assert c.rekeys == 1
    assert not s.drops


def test_rekey_on_message_count() -> None:
    c, s = make()
    establish(c, s)
    assert c.current is not None
    c.current.send_counter = REKEY_AFTER_MESSAGES
    assert c.seal(b"x", 1.0) is not None
    assert c._pending is not None  # noqa: SLF001


def test_server_rekeys_when_client_does_not() -> None:
    c, s = make(rekey_after_time=10.0)
    establish(c, s)
    c.rekey_after_time = 1e9  # a client that never rekeys
    run_timers([c, s], 0.0, 12.5)
    assert s.rekeys == 1 and c.rekeys == 1
    assert s.current is not None and s.current.initiator


def test_session_expires_without_rekey() -> None:
    c, s = make(rekey_after_time=10.0)
    establish(c, s)
    events(s)
    run_timers([c, s], 0.0, 16.0, drop=lambda name, m: True)  # the network dies
    assert [type(e) for e in events(s)].count(SessionExpired) == 1
    assert not s.established
    assert s.seal(b"x", 16.0) is None  # queued, not sent with a dead keypair
    assert any(isinstance(e, SessionExpired) for e in events(c))


def test_expired_keypair_refuses_receive() -> None:
    c, s = make(rekey_after_time=10.0)
    establish(c, s)
    m = c.seal(b"late", 1.0)
    assert m is not None
    assert s.open(m, parse_header(m), 15.0) is None
    assert s.drops["expired"] == 1


def test_every_single_byte_flip_of_sealed_packet_rejected() -> None:
    c, s = make()
    establish(c, s)
    m = c.seal(b"payload-" * 8, 1.0)
    assert m is not None
    for i in range(len(m)):
        bad = bytearray(m)
        bad[i] ^= 0x01
        try:
            h = parse_header(bad)
        except Exception:
            continue  # the framing layer already refuses it (version/type/flags)
        assert s.open(bytes(bad), h, 1.0) is None
    assert sum(s.drops.values()) >= len(m) - 3
    assert set(s.drops) <= {"decrypt_failed", "unknown_session", "replay", "plaintext"}
    assert s.open(m, parse_header(m), 1.0) == b"payload-" * 8


def test_every_single_byte_flip_of_initiation_dropped_cheaply() -> None:
    c, s = make()
    c.start(0.0)
    (init,) = c.datagrams_to_send()
    for i in range(len(init)):
        bad = bytearray(init)
        bad[i] ^= 0x80
        try:
            h = parse_header(bad)
        except Exception:
            continue
        s.open(bytes(bad), h, 0.0)
    assert s.datagrams_to_send() == []
    assert set(s.drops) <= {"bad_mac", "plaintext", "unknown_session"}
    assert s.drops["bad_mac"] >= len(init) - 16


def test_wrong_psk_gives_auth_failures_and_no_traffic() -> None:
    c = SecureChannel(initiator=True, psk=PSK)
    s = SecureChannel(initiator=False, psk=bytes(32))
    c.seal(b"secret", 0.0)
    run_timers([c, s], 0.0, 30.0)
    assert not c.established and not s.established
    s_fail = [e for e in events(s) if isinstance(e, AuthFailure)]
    c_fail = [e for e in events(c) if isinstance(e, AuthFailure)]
    assert s_fail and s_fail[0].reason == "bad_mac" and "different key" in s_fail[0].message
    assert len(s_fail) <= 3  # throttled: one per 10 s
    assert c_fail and c_fail[0].reason == "no_response"
    assert s.drops["bad_mac"] >= 5


def test_ik_unknown_peer_and_wrong_server_key() -> None:
    from tunconnector.keys import decode_key, generate_keypair

    c, s = make("ik")
    intruder_priv, _ = generate_keypair()
    # an intruder knows the server public key but is not the configured peer
    assert c._peer_static is not None  # noqa: SLF001
    intruder = SecureChannel(initiator=True, private_key=decode_key(intruder_priv),
                             peer_public_key=c._peer_static)  # noqa: SLF001
    intruder.start(0.0)
    pump(intruder, s, 0.0)
    assert not s.established and s.drops["unknown_peer"] == 1
    assert [e.reason for e in events(s) if isinstance(e, AuthFailure)] == ["unknown_peer"]


def test_cipher_mismatch_is_reported() -> None:
    c = SecureChannel(initiator=True, psk=PSK, cipher="aes-256-gcm")
    s = SecureChannel(initiator=False, psk=PSK)
    c.start(0.0)
    pump(c, s, 0.0)
    assert not s.established and s.drops["cipher_mismatch"] == 1
    (fail,) = [e for e in events(s) if isinstance(e, AuthFailure)]
    assert "aes-256-gcm" in fail.message and "chacha20-poly1305" in fail.message


def test_rate_limit_per_source() -> None:
    s = SecureChannel(initiator=False, psk=PSK, limiter=TokenBucketLimiter(rate=1, burst=3))
    clients = [SecureChannel(initiator=True, psk=PSK) for _ in range(6)]
    for cl in clients:
        cl.start(0.0)
        (m,) = cl.datagrams_to_send()
        s.open(m, parse_header(m), 0.0, source=("10.0.0.1", 1))
    assert s.drops["rate_limited"] == 3
    other = SecureChannel(initiator=True, psk=PSK)
    other.start(0.0)
    (m,) = other.datagrams_to_send()
    s.open(m, parse_header(m), 0.0, source=("10.0.0.2", 1))
    assert s.drops["rate_limited"] == 3
    lim = TokenBucketLimiter(rate=10, burst=1, max_sources=4)
    for i in range(20):
        assert lim.allow(i, float(i))  # old sources are forgotten, memory stays bounded
    assert len(lim._buckets) <= 4  # noqa: SLF001


def test_garbage_is_counted_not_raised() -> None:
    c, s = make()
    establish(c, s)
    assert s.open(encode_native(MsgType.DATA, b"plain"), parse_header(
        encode_native(MsgType.DATA, b"plain")), 1.0) is None
    assert s.drops["plaintext"] == 1
    bogus = encode_native(MsgType.DATA, b"x" * 40, flags=1, session=12345)
    assert s.open(bogus, parse_header(bogus), 1.0) is None
    assert s.drops["unknown_session"] == 1
    assert s.current is not None
    short = encode_native(MsgType.DATA, b"x" * 5, flags=1, session=s.current.local_index)
    assert s.open(short, parse_header(short), 1.0) is None
    assert s.drops["truncated"] == 1
    for t in (MsgType.HANDSHAKE_INIT, MsgType.HANDSHAKE_RESP):
        junk = encode_native(t, os.urandom(30))
        assert s.open(junk, parse_header(junk), 1.0) is None
    cookie = encode_native(MsgType.COOKIE_REPLY, b"")
    s.open(cookie, parse_header(cookie), 1.0)
    assert s.drops["truncated"] == 3 and s.drops["stale_cookie"] == 1


def test_replayed_data_counted() -> None:
    c, s = make()
    establish(c, s)
    msgs = [c.seal(b"%d" % i, 1.0) for i in range(100)]
    for m in msgs:
        assert m is not None and s.open(m, parse_header(m), 1.0) is not None
    for m in msgs:
        assert m is not None and s.open(m, parse_header(m), 1.0) is None
    assert s.drops["replay"] == 100
    assert send(c, s, b"live", 1.0) == b"live"


def test_bad_construction() -> None:
    with pytest.raises(CryptoError):
        SecureChannel(initiator=True)
    with pytest.raises(CryptoError):
        SecureChannel(initiator=True, psk=b"short")
    with pytest.raises(CryptoError):
        SecureChannel(initiator=True, psk=PSK, cipher="rot13")
    with pytest.raises(CryptoError):
        SecureChannel(initiator=True, private_key=PSK)


def test_no_key_material_in_repr_or_stats() -> None:
    c, s = make("ik+psk")
    establish(c, s)
    assert c.current is not None
    texts = [repr(c), repr(s), str(c.stats(1.0)), repr(c.current), repr(c._pending)]  # noqa: SLF001
    for secret in (PSK, c._mac_in):  # noqa: SLF001
        for t in texts:
            assert secret.hex() not in t and repr(secret) not in t


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False), st.floats(min_value=0.0, max_value=0.3))
def test_random_orderings_across_a_rekey(rnd: random.Random, dup_rate: float) -> None:
    """Shuffle, duplicate and delay data around a rekey: every frame arrives exactly once."""
    c, s = make(rekey_after_time=10.0)
    establish(c, s)
    frames = [b"f%d" % i for i in range(300)]
    wire: list[bytes] = []
    for i, f in enumerate(frames):
        now = 9.0 + i * 0.01
        m = c.seal(f, now)
        if m is not None:
            wire.append(m)
        if i == 150:  # complete the rekey mid-stream (handshake messages not reordered)
            pump(c, s, now)
    wire += c.datagrams_to_send()
    wire += [m for m in wire if rnd.random() < dup_rate]
    rnd.shuffle(wire)
    got = [r for m in wire if (r := s.open(m, parse_header(m), 12.0)) is not None]
    assert sorted(got) == sorted(frames)
    assert c.rekeys == 1
    assert set(s.drops) <= {"replay"}


def test_keepalives_not_queued_but_start_a_handshake() -> None:
    c, s = make()
    assert c.seal(b"", 0.0) is None
    assert [parse_header(m).type for m in c.datagrams_to_send()] == [MsgType.HANDSHAKE_INIT]
    assert c.stats(0.0)["queued"] == 0


def test_peer_restart_detected_by_unanswered_data() -> None:
    c, s = make(stale_after=15.0)
    establish(c, s)
    s2 = SecureChannel(initiator=False, psk=PSK)  # the server restarted: keys forgotten
    m = c.seal(b"lost", 1.0)
    assert m is not None and s2.open(m, parse_header(m), 1.0) is None
    assert s2.drops["unknown_session"] == 1
    assert c.get_timer() == 16.0
    c.handle_timer(16.0)
    pump(c, s2, 16.0)
    assert s2.established and send(c, s2, b"back", 16.1) == b"back"


def test_guard_shared_between_channels_refuses_replay() -> None:
    from tunconnector.proto.secure import HandshakeGuard

    guard = HandshakeGuard()
    c = SecureChannel(initiator=True, psk=PSK)
    s1 = SecureChannel(initiator=False, psk=PSK, guard=guard)
    s2 = SecureChannel(initiator=False, psk=PSK, guard=guard)  # e.g. a new TCP connection
    c.start(0.0)
    (init,) = c.datagrams_to_send()
    s1.open(init, parse_header(init), 0.0)
    s2.open(init, parse_header(init), 0.0)
    assert len(s1.datagrams_to_send()) == 1 and s2.datagrams_to_send() == []
    assert s2.drops["replay"] == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0.0, max_value=30.0), st.booleans(),
                          st.sampled_from(["c", "s", "timer"])), max_size=60),
       st.floats(min_value=0.0, max_value=0.9))
def test_timers_always_move_forward(steps: list[tuple[float, bool, str]], loss: float) -> None:
    """Whatever happens (loss, sends, idle), handle_timer(t) leaves get_timer() > t: the
    runtime's single timer can never spin."""
    rnd = random.Random(len(steps))
    c, s = make(rekey_after_time=5.0, stale_after=3.0)
    c.start(0.0)
    now = 0.0

    def drop(name: str, m: bytes) -> bool:
        return rnd.random() < loss

    for dt, deliver_now, who in sorted(steps):
        now = max(now, dt)
        if who == "c":
            c.seal(b"c", now)
        elif who == "s":
            s.seal(b"s", now)
        for ch in (c, s):
            t = ch.get_timer()
            if t is not None and t <= now:
                ch.handle_timer(now)
                t2 = ch.get_timer()
                assert t2 is None or t2 > now, (t2, now)
        if deliver_now:
            pump(c, s, now, drop)
    end = run_timers([c, s], now, now + 60.0, drop=lambda n, m: False)
    assert c.established and s.established, end


def test_server_stops_initiating_once_the_client_is_gone() -> None:
    c, s = make(rekey_after_time=10.0)
    establish(c, s)
    sent = 0
    now = 0.0
    while now < 100.0:
        t = s.get_timer()
        if t is None:
            break
        now = t
        s.handle_timer(now)
        s.seal(b"", now)  # the tunnel's keepalive
        sent += len(s.datagrams_to_send())
    assert not s.established
    assert sent <= 10
    assert s.get_timer() is None


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([int(t) for t in MsgType]), st.integers(0, 3),
       st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1), st.binary(max_size=200),
       st.booleans())
def test_garbage_never_raises(mtype: int, flags: int, session: int, counter: int,
                              body: bytes, use_live_session: bool) -> None:
    c, s = make()
    establish(c, s)
    if use_live_session and s.current is not None:
        session = s.current.local_index
    msg = encode_native(mtype, body, flags=flags, session=session, counter=counter)
    for ch in (s, c):
        assert ch.open(msg, parse_header(msg), 1.0, source="x") is None
    assert sum(s.drops.values()) >= 1


def test_open_data_is_open_for_live_sessions_and_declines_the_rest() -> None:
    """The express lane's lean receive: same plaintext, same drop counters as open();
    ``False`` (untouched) for what only the general path may judge."""
    c, s = make(cipher="aes-256-gcm")
    establish(c, s)
    m = c.seal(b"hello", 1.0)
    assert m is not None
    assert bytes(s.open_data(m, 1.0, "peer")) == b"hello"
    assert s.authenticated_source == "peer"
    assert s.open_data(m, 1.0) is None  # a replay: dropped and counted
    assert s.drops["replay"] == 1
    forged = bytearray(c.seal(b"hello", 1.0) or b"")
    forged[-1] ^= 1
    assert s.open_data(bytes(forged), 1.0) is None
    assert s.drops["decrypt_failed"] == 1
    keepalive = c.seal(b"", 1.0)
    assert keepalive is not None and bytes(s.open_data(keepalive, 1.0)) == b""
    unknown = bytearray(m)
    unknown[4:8] = b"\xff\xff\xff\xfe"
    before = dict(s.drops)
    assert s.open_data(bytes(unknown), 1.0) is False  # not a session we know: untouched
    assert dict(s.drops) == before
    assert s.open_data(m, 1e9) is False  # expired keypair: the general path counts it


def test_quick_opens_sealed_data_and_gso_messages() -> None:
    """The batch path hands messages from the peer to NativeEndpoint.quick (see
    Tunnel.on_udp_batch): sealed DATA and sealed FLAG_GSO give their frames, only for an
    endpoint whose peer is alive; anything else is left to decode()."""
    from tunconnector.proto.native import NativeEndpoint
    from tunconnector.proto.offload import GsoFrame

    c, s = make(cipher="aes-256-gcm")
    nc = NativeEndpoint(keepalive=10, dead_after=60, max_frame=1500, secure=c)
    ns = NativeEndpoint(keepalive=10, dead_after=60, max_frame=1500, secure=s)
    plain = NativeEndpoint(keepalive=10, dead_after=60, max_frame=1500)
    nc.start(0.0, initiator=True)
    ns.start(0.0, initiator=False)
    for _ in range(4):
        for m in nc.messages_to_send():
            ns.decode(m, 0.0, "c")
        for m in ns.messages_to_send():
            nc.decode(m, 0.0, "s")
    data = nc.encode_data(b"packet", 1.0)
    gso = nc.encode_gso(b"\x01" + bytes(9) + b"packet", 1.0)
    assert data is not None and gso is not None
    assert plain.quick(bytes(data), 1.0) is False  # no peer alive, no key: decode decides
    assert bytes(ns.quick(bytes(data), 1.0)) == b"packet"
    frame = ns.quick(bytes(gso), 1.0)
    assert isinstance(frame, GsoFrame) and bytes(frame.data) == b"\x01" + bytes(9) + b"packet"
    assert ns.quick(bytes(data), 1.0) is None and s.drops["replay"] == 1  # counted
    assert ns.quick(plain.encode_data(b"p", 1.0), 1.0) is False  # plaintext: decode refuses


@pytest.mark.parametrize("cipher", ["chacha20-poly1305", "aes-256-gcm"])
def test_seal_many_is_seal_frame_by_frame(cipher: str) -> None:
    """The batch sealer gives byte-identical messages to seal(), counters included, and
    declines (None, nothing done) when there is no session to seal under."""
    c1, s1 = make(cipher=cipher)
    assert c1.seal_many([b"x"], 0.0) is None and not c1.datagrams_to_send()
    establish(c1, s1)
    frames = [b"", b"a", os.urandom(64), os.urandom(1400)]
    kp = c1.current
    assert kp is not None
    start = kp.send_counter
    many = c1.seal_many(frames, 1.0, flags=FLAG_GSO)
    assert many is not None and len(many) == len(frames)
    kp.send_counter = start  # the same counters again, one by one
    one = [kp.seal(f, mtype=MsgType.DATA, flags=FLAG_GSO) for f in frames]
    assert [bytes(m) for m in many] == one
    kp.send_counter = start + len(frames)
    assert all(parse_header(bytes(m)).flags == FLAG_GSO | 1 for m in many)
    got = [bytes(s1.open_data(bytes(m), 1.0)) for m in many]  # the receiver opens each
    assert got == frames


# (initiator cipher, initiator auto, responder cipher, responder auto) -> agreed cipher
NEGOTIATION = [
    ("aes-256-gcm", True, "chacha20-poly1305", False, "chacha20-poly1305"),  # explicit wins
    ("chacha20-poly1305", False, "aes-256-gcm", True, "chacha20-poly1305"),
    ("aes-256-gcm", True, "chacha20-poly1305", True, "aes-256-gcm"),  # both auto: initiator's
    ("chacha20-poly1305", True, "aes-256-gcm", True, "chacha20-poly1305"),
    ("aes-256-gcm", False, "aes-256-gcm", False, "aes-256-gcm"),
    ("aes-256-gcm", False, "chacha20-poly1305", False, None),  # two explicit: mismatch
]


@pytest.mark.parametrize("ic,ia,rc,ra,agreed", NEGOTIATION)
def test_cipher_negotiation(ic: str, ia: bool, rc: str, ra: bool, agreed: str | None) -> None:
    c = SecureChannel(initiator=True, psk=PSK, cipher=ic, cipher_auto=ia)
    s = SecureChannel(initiator=False, psk=PSK, cipher=rc, cipher_auto=ra)
    c.start(0.0)
    pump(c, s, 0.0)
    if agreed is None:
        assert not c.established and not s.established
        assert s.drops["cipher_mismatch"] >= 1
        return
    assert c.established and s.established
    assert c.cipher == s.cipher == agreed
    assert c.current is not None and c.current.cipher == agreed
    assert send(c, s, b"hello", 0.1) == b"hello" and send(s, c, b"back", 0.1) == b"back"


def test_auto_cipher_prefers_aes_where_the_cpu_has_it(tmp_path: object) -> None:
    from pathlib import Path

    from tunconnector.keys import cpu_has_aes, resolve_cipher

    d = Path(str(tmp_path))
    (d / "aes").write_text("processor : 0\nflags : fpu sse2 aes avx2\n")
    (d / "noaes").write_text("processor : 0\nflags : fpu sse2 avx2\n")
    assert cpu_has_aes(str(d / "aes")) and not cpu_has_aes(str(d / "noaes"))
    assert not cpu_has_aes(str(d / "missing"))
    assert resolve_cipher("chacha20-poly1305") == ("chacha20-poly1305", False)
    cipher, auto = resolve_cipher("auto")
    assert auto and cipher == ("aes-256-gcm" if cpu_has_aes() else "chacha20-poly1305")
