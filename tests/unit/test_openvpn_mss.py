"""mssfix: the clamp value (openvpn's frame_calculate_mssfix) and the SYN rewrite."""

from __future__ import annotations

import ipaddress
import struct

import pytest

from tunconnector.proto.openvpn.mss import clamp, mss_value


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _syn4(mss: int, flags: int = 0x02) -> bytes:
    src, dst = ipaddress.ip_address("10.8.0.2").packed, ipaddress.ip_address("10.8.0.1").packed
    opts = bytes((2, 4)) + mss.to_bytes(2, "big") + bytes((1, 1, 4, 2))  # MSS, NOP, NOP, SACK
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, (20 + len(opts)) // 4 << 4,
                                flags, 64240, 0, 0) + opts)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp[16:18] = _csum(pseudo + bytes(tcp)).to_bytes(2, "big")
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                               src, dst))
    ip[10:12] = _csum(bytes(ip)).to_bytes(2, "big")
    return bytes(ip + tcp)


def _tcp_ok(pkt: bytes) -> bool:
    src, dst, tcp = pkt[12:16], pkt[16:20], pkt[20:]
    return _csum(src + dst + struct.pack("!BBH", 0, 6, len(tcp)) + tcp) == 0


def _mss(pkt: bytes, off: int = 20) -> int:
    return int.from_bytes(pkt[off + 22:off + 24], "big")


def test_clamps_a_syn_and_keeps_the_checksum_valid() -> None:
    syn = _syn4(1460)
    assert _tcp_ok(syn)
    out = clamp(syn, 1368, tap=False)
    assert _mss(out) == 1368 and _tcp_ok(out) and len(out) == len(syn)
    assert clamp(_syn4(1200), 1368, tap=False) == _syn4(1200)  # only ever lowered
    assert _mss(clamp(_syn4(1460, 0x12), 1368, tap=False)) == 1368  # SYN-ACK too
    ack = _syn4(1460, 0x10)
    assert clamp(ack, 1368, tap=False) is ack  # no SYN: untouched


def test_tap_frames_and_other_traffic() -> None:
    eth = bytes(12) + b"\x08\x00"
    out = clamp(eth + _syn4(1460), 1000, tap=True)
    assert _mss(out[14:]) == 1000 and _tcp_ok(out[14:])
    arp = bytes(12) + b"\x08\x06" + bytes(28)
    assert clamp(arp, 1000, tap=True) is arp
    assert clamp(b"\x45", 1000, tap=False) == b"\x45"


@pytest.mark.parametrize(("kw", "want"), [
    # PEERING: tap, AES-128-GCM, UDP over IPv4, default mssfix 1492 mtu, peer-id
    ({"mssfix": 1492, "tap": True, "cipher": "AES-128-GCM"}, 1492 - 52 - 72),
    # provider: tun, AES-256-CBC + SHA512, comp-lzo no, mssfix 1300 (no 'mtu')
    ({"mssfix": 1300, "encap": False, "cipher": "AES-256-CBC", "auth": "SHA512",
      "compress": "lzo"}, (1300 - 84) // 16 * 16 - 1 - 45),
    ({"mssfix": 1400, "fixed": True}, 1360),
    ({"mssfix": 0}, 0),
])
def test_values(kw: dict[str, object], want: int) -> None:
    assert mss_value(**kw) == want  # type: ignore[arg-type]


def test_tun_mtu_extra() -> None:
    from tunconnector.ovpnconfig import parse

    o = parse("client\nremote a\ndev tap\ntun-mtu-extra 18\n<ca>\nx\n</ca>\n<cert>\nc\n</cert>\n"
              "<key>\nk\n</key>\n", "t").options
    assert o.tun_mtu_extra == 18
    assert mss_value(mssfix=1492, tap=True, tap_extra=18) == \
        mss_value(mssfix=1492, tap=True) + 14
