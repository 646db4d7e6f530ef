"""SESSION_RESET (a restarted hub makes its clients handshake again at once) and EXIT
(a stopping client ends its session on the hub), with two channels in memory."""

from __future__ import annotations

from tunconnector.keys import decode_key, generate_keypair
from tunconnector.proto.assign import Assignment, reset_token_of
from tunconnector.proto.framing import HEADER_LEN, MsgType, encode_native, parse_header
from tunconnector.proto.liveness import PeerDown, PeerUp
from tunconnector.proto.native import NativeEndpoint
from tunconnector.proto.reset import (
    RESET_LEN,
    encode_reset,
    reset_key,
    reset_matches,
    reset_token,
    wants_reset,
)
from tunconnector.proto.secure import HandshakeComplete, SecureChannel, SessionReset

CPRIV, CPUB = generate_keypair()
SPRIV, SPUB = generate_keypair()
KEY = reset_key(decode_key(SPRIV))


def client() -> SecureChannel:
    return SecureChannel(initiator=True, private_key=decode_key(CPRIV),
                         peer_public_key=decode_key(SPUB))


def hub_channel(with_token: bool = True) -> SecureChannel:
    s = SecureChannel(initiator=False, private_key=decode_key(SPRIV),
                      peer_public_key=decode_key(CPUB))
    if with_token:
        s.response_extra_for = lambda index: Assignment(mtu=1400).encode(
            reset_token(KEY, index))
    return s


def pump(a: SecureChannel, b: SecureChannel, now: float) -> None:
    for _ in range(4):
        for src, dst in ((a, b), (b, a)):
            for m in src.datagrams_to_send():
                dst.open(m, parse_header(m), now, source="peer")


def events(ch: SecureChannel) -> list[object]:
    out = []
    while (e := ch.next_event()) is not None:
        out.append(e)
    return out


def up(now: float = 0.0, with_token: bool = True) -> tuple[SecureChannel, SecureChannel]:
    c, s = client(), hub_channel(with_token)
    c.start(now)
    pump(c, s, now)
    assert c.established and s.established
    events(c)
    return c, s


def test_restarted_hub_resets_and_client_handshakes_at_once() -> None:
    c, s = up()
    assert c.current is not None and c.current.reset_token == reset_token(
        KEY, c.current.remote_index)
    # the hub restarts: a fresh channel knows nothing of the client's session
    s2 = hub_channel()
    msg = c.seal(b"ping", 5.0)
    assert msg is not None
    assert s2.open(msg, parse_header(msg), 5.0) is None
    assert s2.drops["unknown_session"] == 1
    assert wants_reset(msg)
    reset = encode_reset(KEY, parse_header(msg).session)
    assert len(reset) == RESET_LEN <= len(msg)  # never larger than what it answers
    c.open(reset, parse_header(reset), 5.0)
    assert any(isinstance(e, SessionReset) for e in events(c))
    assert c.current is None
    out = c.datagrams_to_send()
    assert [parse_header(m).type for m in out] == [MsgType.HANDSHAKE_INIT]  # at once
    for m in out:
        s2.open(m, parse_header(m), 5.0, source="peer")
    pump(c, s2, 5.0)
    assert c.established and any(isinstance(e, HandshakeComplete) for e in events(c))
    msg = c.seal(b"again", 5.1)
    assert msg is not None and s2.open(msg, parse_header(msg), 5.1) == b"again"


def test_forged_or_misdirected_resets_change_nothing() -> None:
    c, _ = up()
    assert c.current is not None
    index = c.current.remote_index
    other = reset_key(b"\x01" * 32)
    for bad in (encode_reset(other, index),  # not the hub's key
                encode_reset(KEY, index ^ 1),  # the hub's, for another session
                encode_reset(KEY, index)[:-1],  # truncated
                encode_native(MsgType.SESSION_RESET, session=index)):  # no token
        c.open(bad, parse_header(bad), 1.0)
    assert c.drops["bad_reset"] == 4
    assert c.established and not c.datagrams_to_send() and not events(c)


def test_no_token_from_a_server_that_gives_none() -> None:
    c, _ = up(with_token=False)
    assert c.current is not None and c.current.reset_token is None
    reset = encode_reset(KEY, c.current.remote_index)
    c.open(reset, parse_header(reset), 1.0)
    assert c.drops["bad_reset"] == 1 and c.established


def test_reset_token_in_assignment_is_ignored_by_decode() -> None:
    data = Assignment(address="10.0.0.2/24", mtu=1400).encode(b"\xaa" * 16)
    assert Assignment.decode(data) == Assignment(address="10.0.0.2/24", mtu=1400)
    assert reset_token_of(data) == b"\xaa" * 16
    for junk in (b"", b"[]", b'{"t": 5}', b'{"t": "zz"}', b'{"t": "aa"}', b"\xff"):
        assert reset_token_of(junk) is None
    assert not reset_matches(b"x" * RESET_LEN, None)


def test_wants_reset_only_for_encrypted_data() -> None:
    sealed = encode_native(MsgType.DATA, bytes(16), flags=1, session=7)
    assert wants_reset(sealed)
    assert not wants_reset(encode_native(MsgType.DATA, bytes(16), session=7))  # plain
    assert not wants_reset(sealed[:HEADER_LEN + 15])  # shorter than a reset
    assert not wants_reset(encode_native(MsgType.KEEPALIVE, bytes(16), flags=1))


def native_pair() -> tuple[NativeEndpoint, NativeEndpoint]:
    c, s = up()
    nc = NativeEndpoint(keepalive=1.0, dead_after=6.0, max_frame=1500, secure=c)
    ns = NativeEndpoint(keepalive=1.0, dead_after=6.0, max_frame=1500, secure=s)
    ns.start(0.0, initiator=False)
    msg = c.seal(b"", 0.1)
    assert msg is not None
    ns.decode(msg, 0.1)
    assert isinstance(ns.next_event(), PeerUp)
    return nc, ns


def test_exit_ends_the_peer_at_once_and_only_once() -> None:
    nc, ns = native_pair()
    bye = nc.exit_message(1.0)
    assert bye is not None and parse_header(bye).type == MsgType.EXIT
    d = ns.decode(bye, 1.0)
    assert d.authentic and not d.frames
    ev = ns.next_event()
    assert isinstance(ev, PeerDown) and ev.reason == "exit"
    assert not ns.liveness.alive
    ns.decode(bye, 1.1)  # a replayed copy: refused, no second event
    assert ns.next_event() is None
    assert ns.secure is not None and ns.secure.drops["replay"] == 1


def test_forged_exit_is_refused() -> None:
    nc, ns = native_pair()
    bye = bytearray(nc.exit_message(1.0) or b"")
    bye[-1] ^= 1
    assert not ns.decode(bytes(bye), 1.0).authentic
    assert ns.liveness.alive and ns.next_event() is None
    # a stranger's EXIT under no session at all
    stray = encode_native(MsgType.EXIT, bytes(16), flags=1, session=12345)
    assert not ns.decode(stray, 1.0).authentic and ns.liveness.alive


def test_no_exit_without_a_session() -> None:
    assert client().seal_exit(0.0) is None
    assert NativeEndpoint(keepalive=1.0, dead_after=3.0, max_frame=1500).exit_message(
        0.0) is None
