"""Fragmentation of native super-messages and bounded reassembly."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunconnector.errors import LocalProtocolError, RemoteProtocolError
from tunconnector.proto import fragment as f
from tunconnector.proto.framing import HEADER_LEN, MsgType, parse_header


def frags(msg: bytes, msg_id: int = 7, dgram: int = 1472, **kw: int) -> list[bytes]:
    buf, stride, count = f.split(msg, msg_id, dgram, **kw)
    out = [bytes(d) for d in f.iter_datagrams(buf, stride)]
    assert len(out) == count
    return out


def test_split_layout() -> None:
    msg = random.Random(1).randbytes(65_000)
    buf, stride, count = f.split(msg, 42, 1472, session=9, path=2)
    assert stride == 1472
    assert count == -(-65_000 // (1472 - f.FRAG_OVERHEAD))
    ds = list(f.iter_datagrams(buf, stride))
    assert all(len(d) == 1472 for d in ds[:-1]) and 0 < len(ds[-1]) <= 1472
    for i, d in enumerate(ds):
        h = parse_header(d)
        assert (h.type, h.flags, h.path, h.session, h.counter) == (MsgType.FRAGMENT, 0, 2, 9, 42)
        assert f.parse_fragment(d[HEADER_LEN:]) == (i, count, 65_000)
    assert b"".join(bytes(d[f.FRAG_OVERHEAD:]) for d in ds) == msg


def test_split_limits() -> None:
    with pytest.raises(LocalProtocolError):
        f.split(b"", 1, 1472)
    with pytest.raises(LocalProtocolError):
        f.split(b"x" * (f.MAX_INNER_MESSAGE + 1), 1, 1472)
    with pytest.raises(LocalProtocolError):
        f.chunk_size(60)


@pytest.mark.parametrize("order", ["in", "reverse", "shuffle"])
def test_reassemble_any_order(order: str) -> None:
    msg = random.Random(2).randbytes(40_000)
    ds = frags(msg)
    if order == "reverse":
        ds.reverse()
    elif order == "shuffle":
        random.Random(3).shuffle(ds)
    r = f.Reassembler()
    results = [r.receive(d, 0.0) for d in ds]
    assert all(x is None for x in results[:-1])
    assert results[-1] == msg
    assert r.pending == 0 and r.pending_bytes == 0 and r.stats.completed == 1


def test_single_fragment_and_exact_multiple() -> None:
    r = f.Reassembler()
    [d] = frags(b"abc")
    assert r.receive(d, 0.0) == b"abc"
    chunk = f.chunk_size(1000)
    msg = bytes(range(256)) * (chunk * 3 // 256) + b"\1" * (chunk * 3 % 256)
    assert len(msg) == chunk * 3
    out = None
    for d in frags(msg, dgram=1000):
        out = r.receive(d, 0.0)
    assert out == msg


def test_lost_fragment_loses_only_its_message() -> None:
    r = f.Reassembler(timeout=0.5)
    a, b, c = (random.Random(i).randbytes(10_000) for i in range(3))
    fa, fb, fc = frags(a, 1), frags(b, 2), frags(c, 3)
    del fb[3]
    done = [x for d in fa + fb + fc if (x := r.receive(d, 0.1)) is not None]
    assert done == [a, c]
    assert r.pending == 1
    assert r.get_timer() == pytest.approx(0.6)
    r.handle_timer(0.59)
    assert r.pending == 1
    r.handle_timer(0.61)
    assert r.pending == 0 and r.stats.expired == 1 and r.get_timer() is None


def test_duplicates_counted_and_ignored() -> None:
    r = f.Reassembler()
    msg = b"z" * 5000
    ds = frags(msg)
    assert r.receive(ds[0], 0) is None
    assert r.receive(ds[0], 0) is None
    assert r.stats.duplicate == 1
    out = None
    for d in ds[1:]:
        out = r.receive(d, 0)
    assert out == msg


def test_bounded_pending_evicts_oldest() -> None:
    r = f.Reassembler(max_pending=4)
    first = {i: frags(bytes([i]) * 3000, i) for i in range(10)}
    for i in range(10):
        r.receive(first[i][0], float(i) * 0.01)
    assert r.pending == 4 and r.stats.evicted == 6
    # the newest survive: finishing message 9 works, message 0 is gone
    out = None
    for d in first[9][1:]:
        out = r.receive(d, 0.2)
    assert out == bytes([9]) * 3000


def test_bounded_bytes() -> None:
    r = f.Reassembler(max_bytes=100_000)
    for i in range(10):
        r.receive(frags(b"q" * 60_000, i)[0], 0.0)
    assert r.pending_bytes <= 100_000
    assert r.pending == 1


def test_inconsistent_fragments_rejected() -> None:
    r = f.Reassembler()
    a = frags(b"a" * 5000, 5)
    b = frags(b"b" * 6000, 5)  # same id, other total
    r.receive(a[0], 0)
    with pytest.raises(RemoteProtocolError):
        r.receive(b[1], 0)
    assert r.pending == 0 and r.stats.inconsistent == 1
    # different chunk sizes under one id
    c = frags(b"c" * 5000, 6, dgram=1472)
    d = frags(b"c" * 5000, 6, dgram=1000)
    r.receive(c[0], 0)
    with pytest.raises(RemoteProtocolError):
        r.receive(d[1], 0)


@pytest.mark.parametrize("raw", [
    b"", b"\x01\x20" + b"\0" * 20, b"\x01\x01" + b"\0" * 30,
])
def test_garbage_rejected(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        f.Reassembler().receive(raw, 0)


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=64), max_size=20))
def test_fuzz_only_remote_errors(items: list[bytes]) -> None:
    r = f.Reassembler(max_pending=3, max_bytes=200_000)
    base = frags(b"m" * 3000, 1)[0][: f.FRAG_OVERHEAD]
    for it in items:
        for d in (it, base + it, base[:16] + it):
            try:
                r.receive(d, 0.0)
            except RemoteProtocolError:
                pass
    assert r.pending_bytes <= 200_000


@settings(max_examples=50)
@given(st.integers(1, 66_000), st.integers(200, 9000), st.randoms())
def test_roundtrip_property(n: int, dgram: int, rnd: random.Random) -> None:
    msg = bytes(rnd.getrandbits(8) for _ in range(min(n, 64))) * (n // 64 + 1)
    msg = msg[:n]
    ds = frags(msg, dgram=dgram) if -(-n // (dgram - 24)) <= f.MAX_FRAGMENTS else []
    if not ds:
        return
    rnd.shuffle(ds)
    r = f.Reassembler()
    outs = [x for d in ds if (x := r.receive(d, 0.0)) is not None]
    assert outs == [msg]


def test_receive_run_whole_message_in_one_join() -> None:
    a, b = random.Random(7).randbytes(30_000), random.Random(8).randbytes(20_000)
    buf_a, stride, _ = f.split(a, 1, 1472)
    buf_b, _, _ = f.split(b, 2, 1472)
    r = f.Reassembler()
    # two messages in one GRO read: the first ends with a short datagram, so a read
    # holds exactly one message's datagrams; feed them as two runs
    assert r.receive_run(buf_a, stride, 0.0) == [a]
    assert r.receive_run(buf_b, stride, 0.0) == [b]
    assert r.pending == 0 and r.stats.completed == 2


def test_receive_run_partial_and_lost_middle() -> None:
    msg = random.Random(9).randbytes(40_000)
    buf, stride, count = f.split(msg, 3, 1472)
    r = f.Reassembler()
    cut = 10 * stride
    assert r.receive_run(buf[:cut], stride, 0.0) == []  # first part of a message
    assert r.receive_run(buf[cut:], stride, 0.0) == [msg]  # the rest completes it
    # a datagram lost in the middle: the run does not splice two messages together
    other = random.Random(10).randbytes(40_000)
    buf2, _, _ = f.split(other, 4, 1472)
    spliced = buf[:5 * stride] + buf2[6 * stride:]
    out = r.receive_run(spliced, stride, 0.0)
    assert out == []
    assert r.pending == 2


def test_receive_run_garbage_counted() -> None:
    r = f.Reassembler()
    assert r.receive_run(b"\x00" * 3000, 1000, 0.0) == []
    assert sum(r.stats.drops.values()) == 3


def test_partials_expire_on_the_timer_without_new_fragments() -> None:
    """59 messages lose their last fragment: the timer alone clears them (fake clock)."""
    r = f.Reassembler(timeout=1.0)
    assert r.get_timer() is None
    for i in range(59):
        r.receive(frags(bytes([i]) * 5000, 100 + i)[0], 10.0 + i * 0.001)
    assert r.pending == 59 and r.get_timer() == 11.0  # the oldest's first fragment + 1 s
    r.handle_timer(10.5)
    assert r.pending == 59  # not yet
    r.handle_timer(11.0 + 0.03)  # the first 31 are due
    assert r.pending == 28 and r.stats.expired == 31
    assert r.get_timer() == pytest.approx(10.031 + 1.0)
    r.handle_timer(40.0)  # long after: nothing left, no timer wanted
    assert r.pending == 0 and r.pending_bytes == 0 and r.stats.expired == 59
    assert r.get_timer() is None


def test_complete_runs_expire_stale_partials() -> None:
    """A GRO run that completes whole (never reaching receive()) still expires the old."""
    r = f.Reassembler(timeout=1.0)
    r.receive(frags(b"x" * 5000, 1)[0], 0.0)
    msg = random.Random(3).randbytes(20_000)
    buf, stride, _ = f.split(msg, 2, 1472)
    assert r.receive_run(buf, stride, 5.0) == [msg]
    assert r.pending == 0 and r.stats.expired == 1


def test_fastpath_timer_is_the_reassembler_timer() -> None:
    """The tunnel arms its one timer with FastPath.get_timer and calls handle_timer."""
    import collections

    from tunconnector.config import TunnelConfig
    from tunconnector.fastpath import FastPath

    fp = FastPath(TunnelConfig(name="t", mode="server", port=1))
    drops: collections.Counter[str] = collections.Counter()
    for i in range(5):
        assert fp.reassemble(frags(b"y" * 4000, i)[0], 3.0, drops) is None
    assert fp.stats()["reassembly_pending"] == 5 and fp.get_timer() == 4.0
    fp.handle_timer(4.0)
    assert fp.stats()["reassembly_pending"] == 0 and fp.stats()["reassembly_expired"] == 5
    assert fp.get_timer() is None
