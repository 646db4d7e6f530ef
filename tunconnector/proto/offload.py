"""virtio_net_hdr, Internet checksums and software GSO over plain buffers.

A TUN/TAP device opened with ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` hands userspace
super-packets (up to 64 KiB of TCP or UDP payload behind one IP header) preceded by a
``struct virtio_net_hdr``; the kernel of the receiving side segments them again. When the
receiving device could not enable offload, :func:`gso_split` does that segmentation in
software and :func:`complete_checksum` fills in a checksum the sender left partial.

Layout (little-endian, as virtio 1.0 and as TUN on little-endian hosts; ``TUNSETVNETLE``
forces it elsewhere)::

    u8 flags | u8 gso_type | u16 hdr_len | u16 gso_size | u16 csum_start | u16 csum_offset
    [u16 num_buffers]   (12-byte "mergeable rx buffers" form)

Pure functions only: no sockets, no os. See wireguard-go ``tun/offload_linux.go`` for
the same idea in Go.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import RemoteProtocolError

VNET_HDR = struct.Struct("<BBHHHH")
VNET_HDR_MRG = struct.Struct("<BBHHHHH")
VNET_HDR_LEN = VNET_HDR.size  # 10
VNET_HDR_MRG_LEN = VNET_HDR_MRG.size  # 12

F_NEEDS_CSUM = 0x01
F_DATA_VALID = 0x02

GSO_NONE = 0
GSO_TCPV4 = 1
GSO_UDP = 3  # UFO (IP fragmentation): never produced by TUNSETOFFLOAD, not supported
GSO_TCPV6 = 4
GSO_UDP_L4 = 5  # USO
GSO_ECN = 0x80

IPPROTO_TCP = 6
IPPROTO_UDP = 17

ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

_TCP_FIN = 0x01
_TCP_PSH = 0x08
_TCP_CWR = 0x80

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class VnetHdr:
    """One ``virtio_net_hdr``; all-zero means "a plain, fully checksummed packet"."""

    flags: int = 0
    gso_type: int = GSO_NONE
    hdr_len: int = 0
    gso_size: int = 0
    csum_start: int = 0
    csum_offset: int = 0
    num_buffers: int = 0

    @property
    def is_gso(self) -> bool:
        return self.gso_type & ~GSO_ECN != GSO_NONE

    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & F_NEEDS_CSUM)


ZERO_VNET_HDR = bytes(VNET_HDR_LEN)
#: largest GSO payload carried in one native message: 64 KiB packet + L2 + virtio_net_hdr
MAX_GSO_PAYLOAD = 65_535 + 18 + VNET_HDR_LEN


class GsoFrame:
    """A received super-packet for the device: virtio_net_hdr (10 bytes) then the packet.

    A marker type, so the data path hands it to ``Device.write_batch`` next to plain
    frames: a device with IFF_VNET_HDR takes it as is, one without gets the segments of
    :func:`gso_split`. ``len()`` is the packet length (header excluded), for counters.
    """

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data) - VNET_HDR_LEN

    def segments(self, *, tap: bool) -> list[bytearray]:
        """Software segmentation (and checksum completion) for a device without offload."""
        h = parse_vnet_hdr(self.data)
        pkt = memoryview(self.data)[VNET_HDR_LEN:]
        if not h.is_gso and not h.needs_csum:
            return [bytearray(pkt)]
        return gso_split(pkt, h, l3_offset=l3_offset_of_frame(pkt) if tap else 0)


def parse_vnet_hdr(buf: bytes | bytearray | memoryview, size: int = VNET_HDR_LEN) -> VnetHdr:
    """Parse the 10- or 12-byte form at the start of ``buf``."""
    if size not in (VNET_HDR_LEN, VNET_HDR_MRG_LEN):
        raise ValueError(f"virtio_net_hdr size {size} is neither 10 nor 12")
    if len(buf) < size:
        raise RemoteProtocolError("truncated", f"virtio_net_hdr needs {size} bytes")
    if size == VNET_HDR_LEN:
        return VnetHdr(*VNET_HDR.unpack_from(buf, 0))
    return VnetHdr(*VNET_HDR_MRG.unpack_from(buf, 0))


def build_vnet_hdr(h: VnetHdr, size: int = VNET_HDR_LEN) -> bytes:
    """Serialise ``h`` in the 10- or 12-byte form."""
    if size == VNET_HDR_LEN:
        return VNET_HDR.pack(h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start,
                             h.csum_offset)
    if size == VNET_HDR_MRG_LEN:
        return VNET_HDR_MRG.pack(h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start,
                                 h.csum_offset, h.num_buffers)
    raise ValueError(f"virtio_net_hdr size {size} is neither 10 nor 12")


def convert_vnet_hdr(buf: bytes | bytearray | memoryview, from_size: int, to_size: int) -> bytes:
    """Re-encode a header between the 10- and 12-byte forms (num_buffers dropped/zeroed)."""
    return build_vnet_hdr(parse_vnet_hdr(buf, from_size), to_size)


# -- checksums --------------------------------------------------------------------------

def ones_sum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """16-bit ones'-complement sum of ``data`` (odd length padded with a zero byte).

    2**16 == 1 (mod 0xFFFF), so the sum of the 16-bit words of a big-endian integer is
    that integer modulo 0xFFFF: one C-level big-int operation instead of a Python loop.
    The result is in 0..0xFFFF (0 and 0xFFFF are the same value in ones' complement).
    """
    v = int.from_bytes(data, "big")
    if len(data) & 1:
        v <<= 8
    s = v % 0xFFFF
    if s == 0 and v:
        s = 0xFFFF  # non-zero data summing to "minus zero", as RFC 1071 adders give
    return fold(s + initial)


def fold(s: int) -> int:
    """Fold carries back into 16 bits."""
    while s > 0xFFFF:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data: bytes | bytearray | memoryview, initial: int = 0) -> int:
    """Internet checksum (RFC 1071) of ``data`` plus an already-summed ``initial``."""
    return ~ones_sum(data, initial) & 0xFFFF


def pseudo_header_sum(src: bytes | memoryview, dst: bytes | memoryview, proto: int,
                      length: int) -> int:
    """Ones'-complement sum of the IPv4 (4-byte addresses) or IPv6 pseudo-header."""
    return fold(ones_sum(src) + ones_sum(dst) + proto + (length >> 16) + (length & 0xFFFF))


def ipv4_header_checksum(hdr: bytes | bytearray | memoryview) -> int:
    """Checksum of an IPv4 header whose checksum field (bytes 10..11) is zero."""
    return checksum(hdr)


def complete_checksum(pkt: bytearray, csum_start: int, csum_offset: int) -> None:
    """Finish a ``VIRTIO_NET_HDR_F_NEEDS_CSUM`` packet in place.

    The field at ``csum_start + csum_offset`` holds the pseudo-header sum; summing from
    ``csum_start`` to the end (field included) and complementing gives the checksum, as
    the kernel's ``skb_checksum_help`` does. A UDP result of 0 is sent as 0xFFFF.
    """
    pos = csum_start + csum_offset
    if csum_start >= len(pkt) or pos + 2 > len(pkt):
        raise RemoteProtocolError("bad_csum_offset",
                                  f"csum_start {csum_start}+{csum_offset} beyond {len(pkt)}")
    c = checksum(memoryview(pkt)[csum_start:])
    if c == 0 and csum_offset == 6:
        c = 0xFFFF
    _U16.pack_into(pkt, pos, c)


_CSUM_FIELDS = struct.Struct("<HH")  # csum_start, csum_offset of a virtio_net_hdr (offset 6)


def completed_packet(frame: bytes | bytearray | memoryview) -> bytearray:
    """The packet of a NEEDS_CSUM device frame (virtio_net_hdr + packet), copied, with its
    checksum finished: for one that leaves as plain DATA, without the header that would
    let the far end finish it. RemoteProtocolError when the header points outside it."""
    pkt = bytearray(frame[VNET_HDR_LEN:])
    start, off = _CSUM_FIELDS.unpack_from(frame, 6)
    complete_checksum(pkt, start, off)
    return pkt


def l3_offset_of_frame(frame: bytes | bytearray | memoryview) -> int:
    """Offset of the IP header in an Ethernet frame (one or two VLAN tags skipped)."""
    off = ETH_HLEN
    if len(frame) < off:
        raise RemoteProtocolError("truncated", "Ethernet frame")
    (etype,) = _U16.unpack_from(frame, 12)
    while etype in (ETH_P_8021Q, ETH_P_8021AD):
        if len(frame) < off + 4:
            raise RemoteProtocolError("truncated", "VLAN tag")
        (etype,) = _U16.unpack_from(frame, off + 2)
        off += 4
    if etype not in (ETH_P_IP, ETH_P_IPV6):
        raise RemoteProtocolError("gso_not_ip", f"ethertype {etype:#06x}")
    return off


# -- software segmentation ----------------------------------------------------------------

def gso_split(pkt: bytes | bytearray | memoryview, h: VnetHdr, *, l3_offset: int = 0,
              max_segments: int = 1024) -> list[bytearray]:
    """Split one GSO super-packet into wire-ready packets with correct checksums.

    ``pkt`` starts at the IP header (TUN, ``l3_offset=0``) or at an Ethernet header
    (TAP, ``l3_offset=l3_offset_of_frame(pkt)``); ``h`` is its virtio_net_hdr. A packet
    without GSO comes back alone, its checksum completed if the header asked for that.
    Headers are parsed from the packet itself, not trusted from ``hdr_len``.
    Raises :class:`RemoteProtocolError` on anything malformed.
    """
    mv = memoryview(pkt)
    n = len(mv)
    gso = h.gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        single = bytearray(mv)
        if h.needs_csum:
            complete_checksum(single, h.csum_start, h.csum_offset)
        return [single]
    if gso not in (GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4):
        raise RemoteProtocolError("gso_unsupported", f"gso_type {h.gso_type:#x}")
    if h.gso_size == 0:
        raise RemoteProtocolError("gso_bad_size", "gso_size 0")
    if n < l3_offset + 20:
        raise RemoteProtocolError("truncated", "GSO packet shorter than an IP header")
    version = mv[l3_offset] >> 4
    if version == 4:
        ihl = (mv[l3_offset] & 0x0F) * 4
        if ihl < 20 or n < l3_offset + ihl:
            raise RemoteProtocolError("gso_bad_ip", f"IPv4 header length {ihl}")
        proto = mv[l3_offset + 9]
        l4 = l3_offset + ihl
        src = bytes(mv[l3_offset + 12:l3_offset + 16])
        dst = bytes(mv[l3_offset + 16:l3_offset + 20])
        if gso == GSO_TCPV6:
            raise RemoteProtocolError("gso_bad_ip", "TCPV6 GSO on an IPv4 packet")
    elif version == 6:
        if n < l3_offset + 40:
            raise RemoteProtocolError("truncated", "IPv6 header")
        proto = mv[l3_offset + 6]
        l4 = l3_offset + 40
        src = bytes(mv[l3_offset + 8:l3_offset + 24])
        dst = bytes(mv[l3_offset + 24:l3_offset + 40])
        if gso == GSO_TCPV4:
            raise RemoteProtocolError("gso_bad_ip", "TCPV4 GSO on an IPv6 packet")
    else:
        raise RemoteProtocolError("gso_bad_ip", f"IP version {version}")
    want = IPPROTO_UDP if gso == GSO_UDP_L4 else IPPROTO_TCP
    if proto != want:
        raise RemoteProtocolError("gso_bad_l4", f"L4 protocol {proto} for gso_type {gso}")
    if proto == IPPROTO_TCP:
        if n < l4 + 20:
            raise RemoteProtocolError("truncated", "TCP header")
        l4len = (mv[l4 + 12] >> 4) * 4
        if l4len < 20:
            raise RemoteProtocolError("gso_bad_l4", f"TCP header length {l4len}")
    else:
        l4len = 8
    hdr_end = l4 + l4len
    if n < hdr_end:
        raise RemoteProtocolError("truncated", "L4 header")
    payload_len = n - hdr_end
    seg = h.gso_size
    count = max(1, -(-payload_len // seg))
    if count > max_segments:
        raise RemoteProtocolError("gso_too_many", f"{count} segments")

    template = bytes(mv[:hdr_end])
    seq0 = _U32.unpack_from(template, l4 + 4)[0] if proto == IPPROTO_TCP else 0
    tcp_flags0 = template[l4 + 13] if proto == IPPROTO_TCP else 0
    ip_id0 = _U16.unpack_from(template, l3_offset + 4)[0] if version == 4 else 0
    out: list[bytearray] = []
    for i in range(count):
        start = hdr_end + i * seg
        chunk = mv[start:min(start + seg, n)]
        p = bytearray(template)
        p += chunk
        l4_total = l4len + len(chunk)
        if version == 4:
            _U16.pack_into(p, l3_offset + 2, ihl + l4_total)
            _U16.pack_into(p, l3_offset + 4, (ip_id0 + i) & 0xFFFF)
            _U16.pack_into(p, l3_offset + 10, 0)
            _U16.pack_into(p, l3_offset + 10,
                           ipv4_header_checksum(memoryview(p)[l3_offset:l3_offset + ihl]))
        else:
            _U16.pack_into(p, l3_offset + 4, l4_total)
        if proto == IPPROTO_TCP:
            _U32.pack_into(p, l4 + 4, (seq0 + i * seg) & 0xFFFFFFFF)
            fl = tcp_flags0
            if i != count - 1:
                fl &= ~(_TCP_FIN | _TCP_PSH)
            if i != 0:
                fl &= ~_TCP_CWR
            p[l4 + 13] = fl
            csum_pos = l4 + 16
        else:
            _U16.pack_into(p, l4 + 4, l4_total)
            csum_pos = l4 + 6
        _U16.pack_into(p, csum_pos, 0)
        ph = pseudo_header_sum(src, dst, proto, l4_total)
        c = checksum(memoryview(p)[l4:], ph)
        if c == 0 and proto == IPPROTO_UDP:
            c = 0xFFFF
        _U16.pack_into(p, csum_pos, c)
        out.append(p)
    return out


def gso_resplit(data: bytes | bytearray | memoryview, max_payload: int) -> list[bytes]:
    """Cut one TCP GSO super-packet (virtio_net_hdr + packet) into smaller ones.

    Each piece keeps the header's ``gso_size`` and carries at most ``max_payload`` bytes
    (rounded down to whole segments), with IP length/ID, TCP sequence, flags and the
    partial checksum (pseudo-header sum) rewritten, exactly as the kernel would have
    built smaller super-packets. Used to shrink super-packets on a lossy path (a lost
    datagram costs a whole super-packet). Anything else comes back unchanged.
    """
    mv = memoryview(data)
    h = parse_vnet_hdr(mv)
    gso = h.gso_type & ~GSO_ECN
    if gso not in (GSO_TCPV4, GSO_TCPV6) or not h.needs_csum or h.gso_size == 0:
        return [bytes(mv)]
    pkt = mv[VNET_HDR_LEN:]
    n = len(pkt)
    l4 = h.csum_start
    if l4 < 20 or n < l4 + 20:
        return [bytes(mv)]
    # find the IP header: TUN packets start with it, TAP frames after Ethernet/VLAN
    l3 = 0 if (pkt[0] >> 4) in (4, 6) and gso_type_matches(pkt[0] >> 4, gso) else -1
    if l3 < 0:
        try:
            l3 = l3_offset_of_frame(pkt)
        except RemoteProtocolError:
            return [bytes(mv)]
    thl = (pkt[l4 + 12] >> 4) * 4
    hdr_end = l4 + thl
    payload = n - hdr_end
    per = max(1, max_payload // h.gso_size) * h.gso_size
    if payload <= per or thl < 20:
        return [bytes(mv)]
    v6 = gso == GSO_TCPV6
    if v6:
        src, dst = bytes(pkt[l3 + 8:l3 + 24]), bytes(pkt[l3 + 24:l3 + 40])
    else:
        src, dst = bytes(pkt[l3 + 12:l3 + 16]), bytes(pkt[l3 + 16:l3 + 20])
        ihl = (pkt[l3] & 0x0F) * 4
        ip_id0 = _U16.unpack_from(pkt, l3 + 4)[0]
    template = bytearray(mv[:VNET_HDR_LEN + hdr_end])
    base = VNET_HDR_LEN
    seq0 = _U32.unpack_from(template, base + l4 + 4)[0]
    flags0 = template[base + l4 + 13]
    out: list[bytes] = []
    pieces = -(-payload // per)
    segs_per = per // h.gso_size
    for k in range(pieces):
        start = hdr_end + k * per
        chunk = pkt[start:min(start + per, n)]
        t = bytearray(template)
        l4len = thl + len(chunk)
        if v6:
            _U16.pack_into(t, base + l3 + 4, l4 - l3 - 40 + l4len)
        else:
            _U16.pack_into(t, base + l3 + 2, l4 - l3 + l4len)
            _U16.pack_into(t, base + l3 + 4, (ip_id0 + k * segs_per) & 0xFFFF)
            _U16.pack_into(t, base + l3 + 10, 0)
            _U16.pack_into(t, base + l3 + 10,
                           ipv4_header_checksum(memoryview(t)[base + l3:base + l3 + ihl]))
        _U32.pack_into(t, base + l4 + 4, (seq0 + k * per) & 0xFFFFFFFF)
        fl = flags0
        if k != pieces - 1:
            fl &= ~(_TCP_FIN | _TCP_PSH)
        if k != 0:
            fl &= ~_TCP_CWR
        t[base + l4 + 13] = fl
        _U16.pack_into(t, base + l4 + 16, pseudo_header_sum(src, dst, IPPROTO_TCP, l4len))
        out.append(bytes(t) + chunk)
    return out


def gso_type_matches(version: int, gso: int) -> bool:
    return (version == 4 and gso == GSO_TCPV4) or (version == 6 and gso == GSO_TCPV6)


_COALESCE_MAX_SEGMENTS = 64


def coalesce_udp(frames: list, max_segments: int = _COALESCE_MAX_SEGMENTS) -> list:
    """Userspace GRO for writes to a TUN device with USO: fewer, larger writes.

    Runs of IPv4 UDP packets of one flow (addresses, ports, TOS, TTL) and one payload size
    (the last of a run may be shorter), unfragmented and without IP options, become one
    UDP_L4 super-packet (a :class:`GsoFrame` with a partial checksum) that the kernel
    segments again on delivery. A packet may come plain or as a non-GSO GsoFrame (its
    checksum still partial: it is rewritten anyway). Everything else passes unchanged.
    """
    views = [_udp4_view(f) for f in frames]
    out: list = []
    n = len(frames)
    i = 0
    while i < n:
        v = views[i]
        if v is None:
            out.append(frames[i])
            i += 1
            continue
        plen = len(v) - 28
        key = bytes(v[12:24])
        tos_ttl = (v[1], v[8])
        j = i + 1
        limit = min(n, i + max_segments, i + (65_535 - 28) // max(plen, 1))
        while j < limit:
            w = views[j]
            if (w is None or bytes(w[12:24]) != key or (w[1], w[8]) != tos_ttl
                    or len(w) - 28 > plen):
                break
            j += 1
            if len(w) - 28 < plen:
                break  # a shorter one closes the run
        if j - i < 2:
            out.append(frames[i])
            i += 1
            continue
        payload = b"".join([bytes(views[k][28:]) for k in range(i, j)])  # type: ignore[index]
        hdr = bytearray(v[:28])
        total = 28 + len(payload)
        _U16.pack_into(hdr, 2, total)
        _U16.pack_into(hdr, 10, 0)
        _U16.pack_into(hdr, 10, ipv4_header_checksum(memoryview(hdr)[:20]))
        _U16.pack_into(hdr, 24, 8 + len(payload))
        _U16.pack_into(hdr, 26, pseudo_header_sum(bytes(hdr[12:16]), bytes(hdr[16:20]),
                                                  IPPROTO_UDP, 8 + len(payload)))
        vnet = VNET_HDR.pack(F_NEEDS_CSUM, GSO_UDP_L4, 28, plen, 20, 6)
        out.append(GsoFrame(vnet + bytes(hdr) + payload))
        i = j
    return out


#: TCP flags a coalesced segment may carry: ACK, and PSH (which closes its run)
_TCP_ACK, _TCP_PSH = 0x10, 0x08


def coalesce_tcp(frames: list, max_segments: int = _COALESCE_MAX_SEGMENTS) -> list:
    """Userspace GRO for writes to a TUN device with IFF_VNET_HDR: a run of IPv4 TCP
    segments of one flow in sequence becomes one TCPV4 super-packet, so the kernel's
    TCP receives one packet (and the device one write) where it had dozens.

    A run: plain ``bytes`` IPv4 packets without IP options or fragmentation, the same
    addresses, ports, TOS, TTL, ACK number, TCP header length and options (Linux's own
    GRO rule: identical options, timestamps included), flags ACK or ACK+PSH, each
    segment starting where the previous one ended, the same payload size (the last may
    be shorter; a shorter one or a PSH closes the run). Anything else passes unchanged,
    in order. The super-packet's TCP checksum is left partial (NEEDS_CSUM) for the
    kernel; its IP ID is the first segment's.
    """
    out: list = []
    n = len(frames)
    i = 0
    while i < n:
        f = frames[i]
        first = _tcp4_segment(f)
        if first is None:
            out.append(f)
            i += 1
            continue
        key, seq, hl, plen, flags = first
        size = plen
        nxt = (seq + plen) & 0xFFFFFFFF
        total = plen
        j = i + 1
        closed = bool(flags & _TCP_PSH)
        while not closed and j < n and j - i < max_segments:
            g = _tcp4_segment(frames[j])
            if g is None or g[0] != key or g[1] != nxt or g[3] > size or \
                    hl + total + g[3] > 65_535:
                break
            total += g[3]
            nxt = (nxt + g[3]) & 0xFFFFFFFF
            j += 1
            closed = g[3] < size or bool(g[4] & _TCP_PSH)
        if j - i < 2:
            out.append(f)
            i += 1
            continue
        run = frames[i:j]
        hdr = bytearray(f[:hl])
        _U16.pack_into(hdr, 2, hl + total)
        _U16.pack_into(hdr, 10, 0)
        _U16.pack_into(hdr, 10, ipv4_header_checksum(memoryview(hdr)[:20]))
        hdr[33] |= run[-1][33] & _TCP_PSH
        _U16.pack_into(hdr, 36, pseudo_header_sum(bytes(hdr[12:16]), bytes(hdr[16:20]),
                                                  IPPROTO_TCP, hl - 20 + total))
        vnet = VNET_HDR.pack(F_NEEDS_CSUM, GSO_TCPV4, hl, size, 20, 16)
        out.append(GsoFrame(b"".join([vnet, hdr, *[p[hl:] for p in run]])))
        i = j
    return out


def _tcp4_segment(f: object) -> tuple[bytes, int, int, int, int] | None:
    """(flow key, sequence number, header length, payload length, flags) of a plain
    IPv4 TCP segment that may be coalesced, else None."""
    if type(f) is not bytes or len(f) < 41 or f[0] != 0x45 or f[9] != IPPROTO_TCP \
            or (f[6] & 0x3F) or f[7]:
        return None
    thl = (f[32] >> 4) * 4
    hl = 20 + thl
    flags = f[33]
    if thl < 20 or len(f) <= hl or flags & ~_TCP_PSH != _TCP_ACK or \
            (f[2] << 8 | f[3]) != len(f):
        return None
    key = f[1:2] + f[8:9] + f[12:24] + f[28:33] + f[40:hl]
    return key, int.from_bytes(f[24:28], "big"), hl, len(f) - hl, flags


def _udp4_view(f: object) -> memoryview | None:
    """The IPv4 UDP packet in ``f`` if it can be coalesced, else None."""
    if type(f) is GsoFrame:
        d = f.data
        if len(d) <= VNET_HDR_LEN or d[1] != GSO_NONE:
            return None
        v = memoryview(d)[VNET_HDR_LEN:]
    else:
        v = memoryview(f)  # type: ignore[arg-type]
    if (len(v) > 28 and v[0] == 0x45 and v[9] == IPPROTO_UDP and (v[6] & 0x3F) == 0
            and v[7] == 0 and (v[2] << 8 | v[3]) == len(v)):
        return v
    return None


def verify_l4_checksum(pkt: bytes | bytearray | memoryview, l3_offset: int = 0) -> bool:
    """True when the TCP/UDP checksum of a plain IPv4/IPv6 packet is correct (for tests)."""
    mv = memoryview(pkt)
    version = mv[l3_offset] >> 4
    if version == 4:
        ihl = (mv[l3_offset] & 0x0F) * 4
        if ones_sum(mv[l3_offset:l3_offset + ihl]) != 0xFFFF:
            return False
        proto = mv[l3_offset + 9]
        src, dst = mv[l3_offset + 12:l3_offset + 16], mv[l3_offset + 16:l3_offset + 20]
        (total,) = _U16.unpack_from(mv, l3_offset + 2)
        l4, end = l3_offset + ihl, l3_offset + total
    else:
        proto = mv[l3_offset + 6]
        src, dst = mv[l3_offset + 8:l3_offset + 24], mv[l3_offset + 24:l3_offset + 40]
        (plen,) = _U16.unpack_from(mv, l3_offset + 4)
        l4, end = l3_offset + 40, l3_offset + 40 + plen
    ph = pseudo_header_sum(bytes(src), bytes(dst), proto, end - l4)
    return ones_sum(mv[l4:end], ph) == 0xFFFF
