"""Probe and enable kernel offloads: TUN virtio_net_hdr/TSO/USO and UDP GSO/GRO.

Every function here answers "what works" instead of failing, so the caller picks the
fast path when the kernel agrees and the plain per-packet path otherwise. Facts checked
on the target kernel: TUNSETOFFLOAD takes CSUM|TSO4|TSO6|TSO_ECN and CSUM|USO4|USO6
(USO4 or USO6 alone is EINVAL); UDP_SEGMENT and UDP_GRO are accepted on UDP sockets and
a GRO receive returns one coalesced buffer with the segment size in a cmsg.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import struct
from dataclasses import dataclass

from ..proto.offload import VNET_HDR_LEN

log = logging.getLogger(__name__)

#: environment override, e.g. for integration tests of the per-packet path: "off"
#: keeps every device and socket plain
ENV_OFFLOAD = "TUNCONNECTOR_OFFLOAD"


def offload_env_off() -> bool:
    """Whether ``$TUNCONNECTOR_OFFLOAD`` says "off"."""
    return os.environ.get(ENV_OFFLOAD, "").lower() == "off"

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNGETVNETHDRSZ = 0x800454D7
TUNSETVNETHDRSZ = 0x400454D8
TUNSETVNETLE = 0x400454DC

IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_MULTI_QUEUE = 0x0100

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_UFO = 0x10
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

TSO_FLAGS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
USO_FLAGS = TUN_F_CSUM | TUN_F_USO4 | TUN_F_USO6

# <linux/udp.h>
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
#: the kernel's UDP_MAX_SEGMENTS (64 before Linux 6.9... raised later); 64 is safe everywhere
UDP_MAX_SEGMENTS = 64
#: largest UDP payload one GSO send may carry (IPv4 total length minus IP and UDP headers)
UDP_GSO_MAX_BYTES = 65_507

_INT = struct.Struct("i")
_U16 = struct.Struct("=H")


@dataclass(frozen=True, slots=True)
class DeviceOffload:
    """What a TUN/TAP fd does: virtio_net_hdr size and accepted TUNSETOFFLOAD flags."""

    vnet_hdr_len: int = 0
    flags: int = 0

    @property
    def enabled(self) -> bool:
        return self.vnet_hdr_len > 0

    @property
    def tso(self) -> bool:
        return self.flags & (TUN_F_TSO4 | TUN_F_TSO6) != 0

    @property
    def uso(self) -> bool:
        return self.flags & (TUN_F_USO4 | TUN_F_USO6) != 0

    def describe(self) -> str:
        if not self.enabled:
            return "per-packet (no virtio_net_hdr)"
        names = [n for n, b in (("csum", TUN_F_CSUM), ("tso4", TUN_F_TSO4),
                                ("tso6", TUN_F_TSO6), ("tso_ecn", TUN_F_TSO_ECN),
                                ("uso4", TUN_F_USO4), ("uso6", TUN_F_USO6)) if self.flags & b]
        return f"vnet_hdr={self.vnet_hdr_len} offload={'+'.join(names) or 'none'}"


def tun_features(fd: int) -> int:
    """TUNGETFEATURES bitmask of the driver (0 when the ioctl is refused)."""
    try:
        buf = fcntl.ioctl(fd, TUNGETFEATURES, b"\0" * 4)
    except OSError:
        return 0
    return int(_INT.unpack(buf)[0])


def supports_vnet_hdr(fd: int) -> bool:
    """Whether IFF_VNET_HDR may be asked for in TUNSETIFF (probe on a fresh /dev/net/tun fd)."""
    return bool(tun_features(fd) & IFF_VNET_HDR)


def probe_vnet_hdr_support(path: str = "/dev/net/tun") -> bool:
    """Open the clone device only to read its features; False when it cannot be opened."""
    import os

    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return supports_vnet_hdr(fd)
    finally:
        os.close(fd)


def set_vnet_hdr_len(fd: int, size: int = VNET_HDR_LEN) -> bool:
    """TUNSETVNETHDRSZ (10 or 12); False when refused."""
    try:
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, _INT.pack(size))
    except OSError:
        return False
    return True


def get_vnet_hdr_len(fd: int) -> int:
    try:
        buf = fcntl.ioctl(fd, TUNGETVNETHDRSZ, b"\0" * 4)
    except OSError:
        return 0
    return int(_INT.unpack(buf)[0])


def set_offload(fd: int, flags: int) -> bool:
    """TUNSETOFFLOAD with exactly ``flags``; False when the kernel refuses them."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
    except OSError:
        return False
    return True


def enable_device_offload(fd: int, *, want_uso: bool = True, want_tso: bool = True,
                          vnet_hdr_len: int = VNET_HDR_LEN) -> DeviceOffload:
    """Configure an fd opened with IFF_VNET_HDR for the widest offload the kernel takes.

    Tries TSO+USO, then TSO alone, then checksum only, then none. The header stays on
    (IFF_VNET_HDR cannot be dropped without reopening), so even with no offload the
    caller reads and writes a zero virtio_net_hdr. ``vnet_hdr_len`` 0 in the result
    means the header size could not be set and the fd should be reopened without it.

    ``want_tso`` False (a hub: what it reads goes to many peers packet by packet) asks
    for no offload at all, not even checksum: reads are then whole packets with complete
    checksums behind a zero header, while writes still take super-packets whole (the
    kernel accepts GSO writes whatever TUNSETOFFLOAD says).
    """
    if not set_vnet_hdr_len(fd, vnet_hdr_len):
        return DeviceOffload(0, 0)
    if struct.pack("=H", 1) != struct.pack("<H", 1):
        set_vnet_hdr_len_le(fd)
    if not want_tso:
        tries = [0]
    elif want_uso:
        tries = [TSO_FLAGS | USO_FLAGS, TSO_FLAGS, TUN_F_CSUM, 0]
    else:
        tries = [TSO_FLAGS, TUN_F_CSUM, 0]
    for flags in tries:
        if set_offload(fd, flags):
            return DeviceOffload(vnet_hdr_len, flags)
    return DeviceOffload(vnet_hdr_len, 0)


def set_vnet_hdr_len_le(fd: int) -> bool:
    """TUNSETVNETLE: little-endian headers on big-endian hosts (the wire format is LE)."""
    try:
        fcntl.ioctl(fd, TUNSETVNETLE, _INT.pack(1))
    except OSError:
        return False
    return True


# -- UDP GSO / GRO ---------------------------------------------------------------------

def probe_udp_gso(sock: socket.socket) -> bool:
    """Whether the kernel knows UDP_SEGMENT on this socket (getsockopt answers)."""
    try:
        sock.getsockopt(SOL_UDP, UDP_SEGMENT)
    except OSError:
        return False
    return True


def enable_udp_gro(sock: socket.socket) -> bool:
    """Ask for coalesced receives (UDP_GRO); False when refused."""
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
    except OSError:
        return False
    return True


def gso_cmsg(segment_size: int) -> list[tuple[int, int, bytes]]:
    """Ancillary data telling sendmsg to cut the buffer into ``segment_size`` datagrams."""
    return [(SOL_UDP, UDP_SEGMENT, _U16.pack(segment_size))]


#: ancillary buffer large enough for the UDP_GRO cmsg
GRO_CMSG_SPACE = socket.CMSG_SPACE(_INT.size)


def gro_segment_size(ancdata: list[tuple[int, int, bytes]]) -> int:
    """Segment size from a UDP_GRO cmsg, 0 when the receive was not coalesced."""
    for level, ctype, data in ancdata:
        if level == SOL_UDP and ctype == UDP_GRO:
            if len(data) >= 4:
                return int(_INT.unpack_from(data, 0)[0])
            if len(data) >= 2:
                return int(_U16.unpack_from(data, 0)[0])
    return 0


def gso_batches(total: int, stride: int) -> list[tuple[int, int]]:
    """(start, end) byte ranges of one GSO buffer that each fit in one sendmsg."""
    per = max(1, min(UDP_MAX_SEGMENTS, UDP_GSO_MAX_BYTES // stride))
    step = per * stride
    return [(a, min(a + step, total)) for a in range(0, total, step)]


def sendmsg_gso(sock: socket.socket, buf: bytes | bytearray | memoryview, stride: int,
                addr: tuple[str, int] | tuple[str, int, int, int] | None = None) -> int:
    """Send ``buf`` as datagrams of ``stride`` bytes with as few syscalls as possible.

    Raises OSError from the kernel (EIO when the route's device cannot checksum, EINVAL
    for a bad size); the caller then turns GSO off and sends datagram by datagram.
    """
    mv = memoryview(buf)
    sent = 0
    for a, b in gso_batches(len(mv), stride):
        chunk = mv[a:b]
        anc = gso_cmsg(stride) if b - a > stride else []
        if addr is None:
            sent += sock.sendmsg([chunk], anc)
        else:
            sent += sock.sendmsg([chunk], anc, 0, addr)
    return sent


def send_each(sock: socket.socket, buf: bytes | bytearray | memoryview, stride: int,
              addr: tuple[str, int] | tuple[str, int, int, int] | None = None) -> int:
    """The fallback of :func:`sendmsg_gso`: one send per datagram."""
    mv = memoryview(buf)
    sent = 0
    for a in range(0, len(mv), stride):
        d = mv[a:a + stride]
        sent += sock.send(d) if addr is None else sock.sendto(d, addr)
    return sent


def recvmsg_gro(sock: socket.socket, buf: bytearray | memoryview
                ) -> tuple[int, int, object]:
    """One receive into ``buf``: (bytes, segment size or 0, peer address).

    Raises BlockingIOError when nothing is queued (non-blocking socket).
    """
    n, anc, _flags, addr = sock.recvmsg_into([buf], GRO_CMSG_SPACE)
    return n, gro_segment_size(anc), addr


@dataclass(frozen=True, slots=True)
class SocketOffload:
    gso: bool = False
    gro: bool = False

    def describe(self) -> str:
        return f"udp_gso={'on' if self.gso else 'off'} udp_gro={'on' if self.gro else 'off'}"


def enable_socket_offload(sock: socket.socket, *, want: bool = True) -> SocketOffload:
    """Probe GSO and switch GRO on for a UDP socket; both off when ``want`` is False."""
    if not want or sock.type != socket.SOCK_DGRAM:
        return SocketOffload()
    return SocketOffload(gso=probe_udp_gso(sock), gro=enable_udp_gro(sock))


def is_gso_refusal(exc: OSError) -> bool:
    """Errors meaning "this path cannot do UDP GSO" rather than a transient failure."""
    return exc.errno in (errno.EIO, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOPROTOOPT,
                         errno.EMSGSIZE)
