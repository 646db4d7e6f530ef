"""``mssfix``: clamp the MSS option of TCP SYNs crossing the tunnel, both ways, as
openvpn 2.6 does (``mss.c``, ``mtu.c``), so TCP through the tunnel never sends segments
whose encapsulation would exceed ``mssfix`` bytes.

:func:`mss_value` is openvpn's ``frame_calculate_mssfix``: ``mssfix N`` is the largest
encapsulated packet (with ``mtu``: including the outer IP/UDP headers; with ``fixed``:
the clamp is N - 40); no ``mssfix`` means ``mssfix 1492 mtu`` (openvpn 2.6's default);
``mssfix 0`` turns clamping off. :func:`clamp` rewrites one frame (IPv4 or IPv6; a TAP
frame's Ethernet header is skipped), adjusting the TCP checksum incrementally; IPv6 gets
the value minus 20, as openvpn.
"""

from __future__ import annotations

from typing import overload

#: openvpn 2.6's default: mssfix 1492 mtu
DEFAULT = 1492
#: openvpn's extra room for the Ethernet header of a TAP frame (TAP_MTU_EXTRA_DEFAULT)
TAP_EXTRA = 32
_HMAC = {"SHA1": 20, "SHA256": 32, "SHA512": 64}
_CBC = ("AES-128-CBC", "AES-256-CBC")


def mss_value(*, mssfix: int, encap: bool = True, fixed: bool = False, tap: bool = False,
              tcp: bool = False, ipv6_underlay: bool = False, cipher: str = "AES-256-GCM",
              auth: str = "SHA1", peer_id: bool = True, compress: str | None = None,
              tap_extra: int = TAP_EXTRA) -> int:
    """The MSS clamp for IPv4 payloads (0: no clamping)."""
    if mssfix <= 0:
        return 0
    if fixed:
        return mssfix - 40
    cbc = cipher.upper() in _CBC
    overhead = (2 if tcp else 0) + (4 if peer_id else 1)
    overhead += 16 + _HMAC.get(auth.upper(), 20) if cbc else 4 + 16  # IV+HMAC | id+tag
    if encap:
        overhead += (40 if ipv6_underlay else 20) + (20 if tcp else 8)
    payload = (tap_extra if tap else 0) + (1 if compress in ("lzo", "stub") else 0)
    payload += (4 if cbc else 0) + 20 + 20
    target = mssfix - overhead
    if cbc:  # at least one padding byte, whole blocks
        target = target // 16 * 16 - 1
    return max(target - payload, 0)


@overload
def clamp(frame: bytes, maxmss: int, *, tap: bool) -> bytes: ...


@overload
def clamp(frame: bytes | memoryview, maxmss: int, *, tap: bool) -> bytes | memoryview: ...


def clamp(frame: bytes | memoryview, maxmss: int, *, tap: bool) -> bytes | memoryview:
    """``frame`` with the MSS of a TCP SYN lowered to ``maxmss`` (IPv6: - 20)."""
    off = 0
    if tap:
        if len(frame) < 14:
            return frame
        etype = int.from_bytes(frame[12:14], "big")
        if etype == 0x0800:
            off = 14
        elif etype == 0x86DD:
            off = 14
        else:
            return frame
    n = len(frame) - off
    if n < 20:
        return frame
    version = frame[off] >> 4
    if version == 4:
        hlen = (frame[off] & 0x0F) * 4
        # most packets are not TCP SYNs: the two cheap tests first
        if frame[off + 9] != 6 or n < hlen + 14 or not frame[off + hlen + 13] & 0x02:
            return frame
        if (frame[off + 9] != 6 or int.from_bytes(frame[off + 2:off + 4], "big") != n
                or int.from_bytes(frame[off + 6:off + 8], "big") & 0x1FFF
                or n - hlen < 20 or hlen < 20):
            return frame
        tcp = off + hlen
        mss = maxmss
    elif version == 6:
        if n < 60 or frame[off + 6] != 6 \
                or int.from_bytes(frame[off + 4:off + 6], "big") + 40 != n:
            return frame
        tcp = off + 40
        mss = maxmss - 20
    else:
        return frame
    if not frame[tcp + 13] & 0x02:  # SYN (and SYN-ACK)
        return frame
    return _fix_tcp(frame, tcp, mss)


def _fix_tcp(frame: bytes | memoryview, tcp: int, maxmss: int) -> bytes | memoryview:
    hlen = (frame[tcp + 12] >> 4) * 4
    if hlen <= 20 or tcp + hlen > len(frame):
        return frame
    i, end = tcp + 20, tcp + hlen
    while end - i > 1:
        kind = frame[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        optlen = frame[i + 1]
        if optlen <= 0 or optlen > end - i:
            break
        if kind == 2 and optlen == 4:
            old = int.from_bytes(frame[i + 2:i + 4], "big")
            if old > maxmss:
                buf = bytearray(frame)
                buf[i + 2:i + 4] = maxmss.to_bytes(2, "big")
                check = int.from_bytes(buf[tcp + 16:tcp + 18], "big")
                buf[tcp + 16:tcp + 18] = _adjust(check, old, maxmss).to_bytes(2, "big")
                return bytes(buf)
        i += optlen
    return frame


def _adjust(check: int, old: int, new: int) -> int:
    """RFC 1624: HC' = ~(~HC + ~m + m')."""
    s = (~check & 0xFFFF) + (~old & 0xFFFF) + new
    s = (s & 0xFFFF) + (s >> 16)
    s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
