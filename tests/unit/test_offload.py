"""virtio_net_hdr, checksums and software GSO on synthetic packets."""

from __future__ import annotations

import ipaddress
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunconnector.errors import RemoteProtocolError
from tunconnector.proto import offload as o


def ref_checksum(data: bytes) -> int:
    """RFC 1071 reference: a plain loop over 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    s = 0
    for (w,) in struct.iter_unpack("!H", data):
        s += w
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


SRC4 = ipaddress.IPv4Address("10.0.0.1").packed
DST4 = ipaddress.IPv4Address("10.0.0.2").packed
SRC6 = ipaddress.IPv6Address("fd00::1").packed
DST6 = ipaddress.IPv6Address("fd00::2").packed


def ipv4(proto: int, l4: bytes, ident: int = 0x1234) -> bytes:
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0x4000, 64,
                                proto, 0, SRC4, DST4))
    struct.pack_into("!H", hdr, 10, ref_checksum(bytes(hdr)))
    return bytes(hdr) + l4


def ipv6(proto: int, l4: bytes) -> bytes:
    return struct.pack("!IHBB16s16s", 0x60000000, len(l4), proto, 64, SRC6, DST6) + l4


def tcp(payload: bytes, seq: int = 1000, flags: int = 0x18 | 0x01 | 0x80,
        options: bytes = b"") -> bytes:
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", 40000, 5201, seq, 77, doff << 4, flags, 512, 0, 0) \
        + options + payload


def udp(payload: bytes) -> bytes:
    return struct.pack("!HHHH", 40000, 5201, 8 + len(payload), 0) + payload


def partial(pkt: bytes, l3: int, v6: bool, proto: int) -> tuple[bytes, int, int]:
    """Fill the L4 checksum field with the pseudo-header sum, as a NEEDS_CSUM sender does."""
    b = bytearray(pkt)
    l4 = l3 + (40 if v6 else (b[l3] & 0xF) * 4)
    src, dst = (SRC6, DST6) if v6 else (SRC4, DST4)
    ph = o.pseudo_header_sum(src, dst, proto, len(b) - l4)
    off = 16 if proto == o.IPPROTO_TCP else 6
    struct.pack_into("!H", b, l4 + off, ph)
    return bytes(b), l4, off


@pytest.mark.parametrize("n", [0, 1, 2, 3, 20, 21, 1500, 65535])
def test_checksum_matches_reference(n: int) -> None:
    data = random.Random(n).randbytes(n)
    assert o.checksum(data) == ref_checksum(data)


def test_checksum_edge_values() -> None:
    assert o.checksum(b"\xff\xff") == 0
    assert o.checksum(b"\x00\x00") == 0xFFFF
    assert o.checksum(b"\xff\xff\xff\xff") == ref_checksum(b"\xff\xff\xff\xff")


@given(st.binary(max_size=300))
def test_checksum_property(data: bytes) -> None:
    assert o.checksum(data) == ref_checksum(data)


@pytest.mark.parametrize("size", [10, 12])
def test_vnet_hdr_roundtrip(size: int) -> None:
    h = o.VnetHdr(o.F_NEEDS_CSUM, o.GSO_TCPV4 | o.GSO_ECN, 54, 1448, 34, 16,
                  3 if size == 12 else 0)
    raw = o.build_vnet_hdr(h, size)
    assert len(raw) == size
    assert o.parse_vnet_hdr(raw, size) == h
    assert h.is_gso and h.needs_csum
    assert raw[:2] == bytes([1, 0x81]) and raw[4:6] == (1448).to_bytes(2, "little")


def test_vnet_hdr_convert_and_errors() -> None:
    h = o.VnetHdr(0, o.GSO_UDP_L4, 42, 1400, 20, 6)
    twelve = o.convert_vnet_hdr(o.build_vnet_hdr(h), 10, 12)
    assert o.parse_vnet_hdr(twelve, 12) == h
    assert o.parse_vnet_hdr(o.ZERO_VNET_HDR) == o.VnetHdr()
    assert not o.VnetHdr().is_gso
    with pytest.raises(RemoteProtocolError):
        o.parse_vnet_hdr(b"\0" * 9)
    with pytest.raises(ValueError):
        o.parse_vnet_hdr(b"\0" * 16, 11)
    with pytest.raises(ValueError):
        o.build_vnet_hdr(h, 8)


def _check_tcp_segments(segs: list[bytearray], payload: bytes, mss: int, v6: bool,
                        l3: int = 0, seq: int = 1000, flags: int = 0x99) -> None:
    assert len(segs) == -(-len(payload) // mss)
    got = b""
    for i, s in enumerate(segs):
        assert o.verify_l4_checksum(s, l3)
        ip = s[l3:]
        if v6:
            l4 = 40
            assert struct.unpack_from("!H", ip, 4)[0] == len(ip) - 40
        else:
            l4 = (ip[0] & 0xF) * 4
            assert struct.unpack_from("!H", ip, 2)[0] == len(ip)
            assert struct.unpack_from("!H", ip, 4)[0] == (0x1234 + i) & 0xFFFF
        doff = (ip[l4 + 12] >> 4) * 4
        assert struct.unpack_from("!I", ip, l4 + 4)[0] == seq + i * mss
        fl = ip[l4 + 13]
        last = i == len(segs) - 1
        assert bool(fl & 0x01) == (last and bool(flags & 0x01))  # FIN only on the last
        assert bool(fl & 0x08) == (last and bool(flags & 0x08))  # PSH only on the last
        assert bool(fl & 0x80) == (i == 0 and bool(flags & 0x80))  # CWR only on the first
        chunk = bytes(ip[l4 + doff:])
        assert len(chunk) == (mss if not last else len(payload) - i * mss)
        got += chunk
    assert got == payload


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("plen", [1, 1448, 1449, 10_000, 65_000])
def test_gso_split_tcp(v6: bool, plen: int) -> None:
    payload = random.Random(plen).randbytes(plen)
    seg = tcp(payload, flags=0x99, options=b"\x01\x01\x08\x0a" + b"\0" * 8)
    pkt = ipv6(o.IPPROTO_TCP, seg) if v6 else ipv4(o.IPPROTO_TCP, seg)
    pkt, l4, off = partial(pkt, 0, v6, o.IPPROTO_TCP)
    h = o.VnetHdr(o.F_NEEDS_CSUM, o.GSO_TCPV6 if v6 else o.GSO_TCPV4, l4 + 32, 1448, l4, off)
    segs = o.gso_split(pkt, h)
    _check_tcp_segments(segs, payload, 1448, v6)


@pytest.mark.parametrize("v6", [False, True])
def test_gso_split_udp_l4(v6: bool) -> None:
    payload = random.Random(5).randbytes(5000)
    pkt = ipv6(o.IPPROTO_UDP, udp(payload)) if v6 else ipv4(o.IPPROTO_UDP, udp(payload))
    pkt, l4, off = partial(pkt, 0, v6, o.IPPROTO_UDP)
    segs = o.gso_split(pkt, o.VnetHdr(o.F_NEEDS_CSUM, o.GSO_UDP_L4, l4 + 8, 1200, l4, 6))
    assert len(segs) == 5
    got = b""
    for s in segs:
        assert o.verify_l4_checksum(s)
        ul4 = 40 if v6 else 20
        assert struct.unpack_from("!H", s, ul4 + 4)[0] == len(s) - ul4
        assert struct.unpack_from("!H", s, ul4 + 6)[0] != 0
        got += bytes(s[ul4 + 8:])
    assert got == payload


def test_gso_split_tap_frame_with_vlan() -> None:
    payload = random.Random(9).randbytes(4000)
    eth = b"\x02" * 6 + b"\x04" * 6 + b"\x81\x00\x00\x05" + b"\x08\x00"
    pkt = eth + ipv4(o.IPPROTO_TCP, tcp(payload, flags=0x10))
    l3 = o.l3_offset_of_frame(pkt)
    assert l3 == 18
    pkt, l4, off = partial(pkt, l3, False, o.IPPROTO_TCP)
    segs = o.gso_split(pkt, o.VnetHdr(o.F_NEEDS_CSUM, o.GSO_TCPV4, 0, 1000, l4, off),
                       l3_offset=l3)
    for s in segs:
        assert s[:18] == eth
    _check_tcp_segments(segs, payload, 1000, False, l3=18, flags=0x10)


def test_complete_checksum_no_gso() -> None:
    pkt, l4, off = partial(ipv4(o.IPPROTO_TCP, tcp(b"hello world")), 0, False, o.IPPROTO_TCP)
    assert not o.verify_l4_checksum(pkt)
    [out] = o.gso_split(pkt, o.VnetHdr(o.F_NEEDS_CSUM, o.GSO_NONE, 0, 0, l4, off))
    assert o.verify_l4_checksum(out)
    # nothing asked: the packet comes back untouched
    [same] = o.gso_split(pkt, o.VnetHdr())
    assert bytes(same) == pkt
    with pytest.raises(RemoteProtocolError):
        o.complete_checksum(bytearray(pkt), len(pkt), 16)


def test_udp_zero_checksum_becomes_ffff() -> None:
    # find a payload whose UDP checksum computes to 0, then check it is sent as 0xFFFF
    for i in range(200_000):
        p = i.to_bytes(4, "big")
        pkt, l4, off = partial(ipv4(o.IPPROTO_UDP, udp(p)), 0, False, o.IPPROTO_UDP)
        b = bytearray(pkt)
        o.complete_checksum(b, l4, off)
        if struct.unpack_from("!H", b, l4 + 6)[0] == 0xFFFF:
            assert o.verify_l4_checksum(b)
            return
    pytest.fail("no zero-checksum payload found")  # pragma: no cover


@pytest.mark.parametrize("bad", [
    o.VnetHdr(0, o.GSO_UDP, 0, 1000, 0, 0),
    o.VnetHdr(0, o.GSO_TCPV4, 0, 0, 0, 0),
    o.VnetHdr(0, o.GSO_TCPV6, 0, 1000, 0, 0),
    o.VnetHdr(0, o.GSO_UDP_L4, 0, 1000, 0, 0),
])
def test_gso_split_rejects_mismatch(bad: o.VnetHdr) -> None:
    pkt = ipv4(o.IPPROTO_TCP, tcp(b"x" * 3000))
    with pytest.raises(RemoteProtocolError):
        o.gso_split(pkt, bad)


def test_gso_split_too_many_segments() -> None:
    pkt = ipv4(o.IPPROTO_TCP, tcp(b"x" * 3000))
    with pytest.raises(RemoteProtocolError):
        o.gso_split(pkt, o.VnetHdr(0, o.GSO_TCPV4, 0, 1, 0, 0), max_segments=100)


def test_l3_offset_rejects_non_ip() -> None:
    with pytest.raises(RemoteProtocolError):
        o.l3_offset_of_frame(b"\0" * 12 + b"\x08\x06" + b"\0" * 28)
    with pytest.raises(RemoteProtocolError):
        o.l3_offset_of_frame(b"\0" * 10)


@settings(max_examples=300)
@given(st.binary(max_size=200), st.sampled_from([o.GSO_TCPV4, o.GSO_TCPV6, o.GSO_UDP_L4]),
       st.integers(0, 2000), st.integers(0, 300), st.integers(0, 40))
def test_gso_split_fuzz(data: bytes, gso: int, size: int, cs: int, co: int) -> None:
    """Garbage either splits or raises RemoteProtocolError, nothing else."""
    try:
        o.gso_split(data, o.VnetHdr(o.F_NEEDS_CSUM, gso, 0, size, cs, co))
    except RemoteProtocolError:
        pass


def test_gso_batches_fit_one_sendmsg() -> None:
    from tunconnector.io.offload import UDP_GSO_MAX_BYTES, UDP_MAX_SEGMENTS, gso_batches

    ranges = gso_batches(100 * 1472 + 5, 1472)
    assert ranges[0] == (0, 44 * 1472)
    assert ranges[-1][1] == 100 * 1472 + 5
    for a, b in ranges:
        assert b - a <= UDP_GSO_MAX_BYTES and (b - a) // 1472 <= UDP_MAX_SEGMENTS
    assert gso_batches(500, 1472) == [(0, 500)]


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("tap", [False, True])
def test_gso_resplit_equals_kernel_segments(v6: bool, tap: bool) -> None:
    """Smaller super-packets segment into exactly the segments of the big one."""
    payload = random.Random(11).randbytes(60_000)
    eth = b"\x02" * 6 + b"\x04" * 6 + (b"\x86\xdd" if v6 else b"\x08\x00") if tap else b""
    seg = tcp(payload, flags=0x99, options=b"\x01\x01\x08\x0a" + b"\0" * 8)
    pkt = eth + (ipv6(o.IPPROTO_TCP, seg) if v6 else ipv4(o.IPPROTO_TCP, seg))
    l3 = len(eth)
    pkt, l4, off = partial(pkt, l3, v6, o.IPPROTO_TCP)
    h = o.VnetHdr(o.F_NEEDS_CSUM, o.GSO_TCPV6 if v6 else o.GSO_TCPV4, 0, 1448, l4, off)
    whole = o.build_vnet_hdr(h) + pkt
    pieces = o.gso_resplit(whole, 16_000)
    assert len(pieces) == -(-60_000 // (11 * 1448))
    want = o.gso_split(pkt, h, l3_offset=l3)
    got = []
    for p in pieces:
        ph = o.parse_vnet_hdr(p)
        assert ph.gso_size == 1448 and len(p) - 10 - (l4 + 32) <= 16_000
        got += o.gso_split(memoryview(p)[10:], ph, l3_offset=l3)
    assert [bytes(x) for x in got] == [bytes(x) for x in want]


def test_gso_resplit_leaves_others_alone() -> None:
    pkt = ipv4(o.IPPROTO_UDP, udp(b"x" * 5000))
    whole = o.build_vnet_hdr(o.VnetHdr(o.F_NEEDS_CSUM, o.GSO_UDP_L4, 0, 1000, 20, 6)) + pkt
    assert o.gso_resplit(whole, 2000) == [whole]
    small = o.build_vnet_hdr(o.VnetHdr(o.F_NEEDS_CSUM, o.GSO_TCPV4, 0, 1448, 20, 16)) + \
        ipv4(o.IPPROTO_TCP, tcp(b"y" * 3000))
    assert o.gso_resplit(small, 16_000) == [small]


def test_coalesce_udp_roundtrip() -> None:
    """Coalesced runs segment back into exactly the original packets."""
    def u(payload: bytes, sport: int = 40000) -> bytes:
        pkt = bytearray(ipv4(o.IPPROTO_UDP, udp(payload)))
        struct.pack_into("!H", pkt, 20, sport)
        b = bytearray(pkt)
        struct.pack_into("!H", b, 26, 0)
        c = o.checksum(bytes(b[20:]), o.pseudo_header_sum(SRC4, DST4, 17, len(b) - 20))
        struct.pack_into("!H", b, 26, c or 0xFFFF)
        return bytes(b)

    frames = [u(bytes([i]) * 64) for i in range(10)] + [u(b"s" * 30)] + \
        [u(b"o" * 64, sport=1)] + [ipv4(o.IPPROTO_TCP, tcp(b"t" * 10))] + \
        [u(b"x" * 64), u(b"y" * 64)]
    out = o.coalesce_udp(frames)
    assert [type(x).__name__ for x in out] == ["GsoFrame", "bytes", "bytes", "GsoFrame"]
    # super-packets received as such pass through untouched
    g = out[0]
    assert o.coalesce_udp([g, frames[0], g]) == [g, frames[0], g]
    segs = []
    for x in out:
        if isinstance(x, o.GsoFrame):
            segs += [bytes(s) for s in x.segments(tap=False)]
        else:
            segs.append(x)
    assert len(segs) == len(frames)
    for got, want in zip(segs, frames, strict=True):
        assert got[20:] == want[20:]  # UDP header (checksum recomputed) and payload
        assert got[9] != o.IPPROTO_UDP or o.verify_l4_checksum(got)
        assert struct.unpack_from("!H", got, 2) == struct.unpack_from("!H", want, 2)


def test_coalesce_udp_takes_partial_checksum_frames() -> None:
    """Non-GSO frames with a partial checksum (sent with their vnet hdr) coalesce too."""
    pkts = []
    for i in range(5):
        p, l4, off = partial(ipv4(o.IPPROTO_UDP, udp(bytes([i]) * 64)), 0, False,
                             o.IPPROTO_UDP)
        pkts.append(o.GsoFrame(o.build_vnet_hdr(
            o.VnetHdr(o.F_NEEDS_CSUM, o.GSO_NONE, 0, 0, l4, off)) + p))
    [g] = o.coalesce_udp(pkts)
    segs = g.segments(tap=False)
    assert [bytes(s[28:]) for s in segs] == [bytes([i]) * 64 for i in range(5)]
    assert all(o.verify_l4_checksum(s) for s in segs)


def test_completed_packet_finishes_a_device_frame() -> None:
    pkt, l4, off = partial(ipv4(o.IPPROTO_TCP, tcp(b"q" * 1400)), 0, False, o.IPPROTO_TCP)
    frame = o.build_vnet_hdr(o.VnetHdr(o.F_NEEDS_CSUM, o.GSO_NONE, 0, 0, l4, off)) + pkt
    done = o.completed_packet(frame)
    assert isinstance(done, bytearray) and len(done) == len(pkt)
    assert o.verify_l4_checksum(bytes(done)) and not o.verify_l4_checksum(pkt)
    bad = o.build_vnet_hdr(o.VnetHdr(o.F_NEEDS_CSUM, o.GSO_NONE, 0, 0, len(pkt), off)) + pkt
    with pytest.raises(RemoteProtocolError):
        o.completed_packet(bad)


def _seg(payload: bytes, seq: int, flags: int = 0x10, ident: int = 0x1234,
         sport: int = 40000, opts: bytes = b"\x01\x01\x08\x0a\x00\x00\x00\x07\x00\x00\x00\x09"
         ) -> bytes:
    """A fully checksummed IPv4 TCP segment (timestamps option by default)."""
    t = bytearray(tcp(payload, seq=seq, flags=flags, options=opts))
    struct.pack_into("!H", t, 0, sport)
    struct.pack_into("!H", t, 16, o.checksum(bytes(t), o.pseudo_header_sum(
        SRC4, DST4, o.IPPROTO_TCP, len(t))))
    return ipv4(o.IPPROTO_TCP, bytes(t), ident=ident)


def test_coalesce_tcp_runs_segment_back_into_the_originals() -> None:
    """In-sequence segments of one flow become one TCPV4 super-packet whose software
    segmentation gives back the payloads, sequence numbers and valid checksums."""
    size = 1000
    run = [_seg(bytes([i]) * size, 5000 + i * size, ident=100 + i) for i in range(9)]
    run.append(_seg(b"e" * 300, 5000 + 9 * size, flags=0x18, ident=109))  # short + PSH
    after_psh = _seg(b"n" * size, 5000 + 9 * size + 300, ident=110)
    other_flow = _seg(b"o" * size, 1, sport=1)
    gap = [_seg(b"g" * size, 90_000), _seg(b"h" * size, 92_000)]  # not contiguous
    syn = _seg(b"", 7, flags=0x02)
    frames = run + [after_psh, other_flow] + gap + [syn]
    out = o.coalesce_tcp(frames)
    assert [type(x).__name__ for x in out] == ["GsoFrame"] + ["bytes"] * 5
    assert out[1:] == [after_psh, other_flow, *gap, syn]
    g = out[0]
    h = o.parse_vnet_hdr(g.data)
    assert (h.gso_type, h.gso_size, h.needs_csum) == (o.GSO_TCPV4, size, True)
    segs = [bytes(s) for s in g.segments(tap=False)]
    assert len(segs) == len(run)
    for got, want in zip(segs, run, strict=True):
        assert got[40:] == want[40:]  # TCP options and payload
        assert got[24:28] == want[24:28]  # sequence number
        assert o.verify_l4_checksum(got)
        assert o.checksum(got[:20]) == 0  # IP header checksum
    assert segs[-1][33] & 0x08 and not segs[0][33] & 0x08  # PSH only on the last


def test_coalesce_tcp_needs_equal_options_and_ack_only_flags() -> None:
    a = _seg(b"a" * 100, 1000)
    b_ts = _seg(b"b" * 100, 1100, opts=b"\x01\x01\x08\x0a\x00\x00\x00\x08\x00\x00\x00\x09")
    assert o.coalesce_tcp([a, b_ts]) == [a, b_ts]  # another timestamp: Linux GRO flushes
    fin = _seg(b"c" * 100, 1100, flags=0x11)
    assert o.coalesce_tcp([a, fin]) == [a, fin]
    longer = _seg(b"d" * 200, 1100)
    assert o.coalesce_tcp([a, longer]) == [a, longer]
    ok = _seg(b"e" * 100, 1100)
    [g] = o.coalesce_tcp([a, ok])
    assert isinstance(g, o.GsoFrame) and len(g) == 40 + 12 + 200



@pytest.mark.parametrize("kw,accepted,tried", [
    # the widest first, down to none
    ({}, {0}, ["tso+uso", "tso", "csum", "none"]),
    ({}, {"csum"}, ["tso+uso", "tso", "csum"]),
    ({"want_uso": False}, {"tso"}, ["tso"]),
    # a hub: no offload at all (not even checksum), the header only
    ({"want_tso": False}, {0, "csum", "tso"}, ["none"]),
    ({"want_tso": False}, set(), ["none"]),
])
def test_enable_device_offload_order_of_tries(monkeypatch: pytest.MonkeyPatch, kw: dict,
                                              accepted: set, tried: list[str]) -> None:
    from tunconnector.io import offload as io

    names = {io.TSO_FLAGS | io.USO_FLAGS: "tso+uso", io.TSO_FLAGS: "tso",
             io.TUN_F_CSUM: "csum", 0: "none"}
    ok = {k for k, v in names.items() if v in accepted or k in accepted}
    calls: list[str] = []

    def ioctl(fd: int, req: int, arg: object) -> object:
        if req == io.TUNSETOFFLOAD:
            calls.append(names[arg])  # type: ignore[index]
            if arg not in ok:
                raise OSError(22, "Invalid argument")
        return arg

    monkeypatch.setattr(io.fcntl, "ioctl", ioctl)
    res = io.enable_device_offload(5, **kw)
    assert calls == tried
    assert res.vnet_hdr_len == o.VNET_HDR_LEN
    assert res.flags == (next(k for k, v in names.items() if v == tried[-1])
                         if tried[-1] in accepted or
                         next(k for k, v in names.items() if v == tried[-1]) in ok else 0)
    if kw.get("want_tso") is False:
        assert not res.tso and not res.uso and res.flags == 0
