"""The loss-adaptive super-packet cap, driven with synthetic TCP super-packets."""

from __future__ import annotations

import struct

from test_offload import ipv4, partial, tcp

from tunconnector.proto import offload as o
from tunconnector.proto.losscap import LossAdaptiveCap


def superpkt(seq: int, size: int = 60_000) -> bytes:
    pkt, l4, off = partial(ipv4(o.IPPROTO_TCP, tcp(b"z" * size, seq=seq, flags=0x10)), 0,
                           False, o.IPPROTO_TCP)
    return o.build_vnet_hdr(o.VnetHdr(o.F_NEEDS_CSUM, o.GSO_TCPV4, 0, 1448, l4, off)) + pkt


def test_no_loss_keeps_the_cap() -> None:
    c = LossAdaptiveCap(ceiling=63_000)
    seq = 1
    for i in range(50):
        out = c.shape([superpkt(seq)], i * 0.01)
        assert len(out) == 1
        seq += 60_000
    assert c.cap == 63_000 and c.retransmits == 0


def test_retransmissions_shrink_then_recovery_grows() -> None:
    c = LossAdaptiveCap(ceiling=63_000, floor=8_000)
    c.shape([superpkt(1)], 0.0)
    c.shape([superpkt(60_001)], 0.001)
    now = 0.01
    for _ in range(80):  # repeated retransmissions of the first range
        c.shape([superpkt(1)], now)
        now += 0.01
    assert c.retransmits >= 80 and c.cap == 8_000
    out = c.shape([superpkt(1)], now)
    assert len(out) == -(-60_000 // (5 * 1448))  # cut to whole segments under the cap
    for p in out:
        assert struct.unpack_from("<H", p, 4)[0] == 1448
    # quiet for a while: the cap doubles back up to the ceiling
    seq = 120_001
    for _ in range(10):
        now += 1.1
        c.shape([superpkt(seq)], now)
        seq += 60_000
    assert c.cap == 63_000
