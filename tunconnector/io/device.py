"""TUN/TAP device file descriptors: open (pytun-pmd3), batch read/write, carrier, persistence.

Addresses, MTU, up/down and namespaces are netlink's job (:mod:`.netlink`); this module
only owns the character device. Reads are batch-first: :meth:`Device.read_batch` drains
the fd until EAGAIN (or ``max_frames``), so one event-loop wake-up moves many frames.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pwd
import select
import struct
from typing import Literal

from pytun_pmd3.linux import IFF_NO_PI, IFF_TAP, IFF_TUN, IFF_VNET_HDR, TunTapDevice

from ..errors import DeviceError, RemoteProtocolError
from ..proto.offload import ZERO_VNET_HDR, GsoFrame, coalesce_udp

TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETCARRIER = 0x400454E2
TUN_PATH = "/dev/net/tun"

DevType = Literal["tun", "tap"]


def _flags(dev_type: DevType, vnet_hdr: bool = False) -> int:
    flags = (IFF_TUN if dev_type == "tun" else IFF_TAP) | IFF_NO_PI
    if vnet_hdr:
        flags |= IFF_VNET_HDR
    return flags


def _explain(exc: OSError, name: str) -> DeviceError:
    code = exc.errno
    if code == errno.ENOENT:
        return DeviceError(f"{TUN_PATH} is missing: load the tun module (modprobe tun)")
    if code in (errno.EPERM, errno.EACCES):
        return DeviceError(
            f"cannot open TUN/TAP device {name!r}: permission denied (needs root or CAP_NET_ADMIN)"
        )
    if code == errno.EBUSY:
        return DeviceError(f"device {name!r} is busy: another process holds it")
    if code == errno.EINVAL:
        return DeviceError(
            f"device {name!r} exists with another type or flags (tun vs tap?)"
        )
    return DeviceError(f"cannot open TUN/TAP device {name!r}: {exc.strerror or exc}")


class _TunTap(TunTapDevice):
    """pytun-pmd3 3.0.3 closes its fd when TUNSETIFF fails but keeps the number, and its
    ``__del__`` closes it again later: by then the number may belong to another tunnel's
    socket or the control socket (uvloop aborted the daemon). Forget it on failure."""

    def __init__(self, name: str, flags: int) -> None:
        try:
            super().__init__(name, flags)
        except BaseException:
            self._fd = -1
            raise


class Device:
    """One open TUN or TAP queue, non-blocking, no packet-info header."""

    def __init__(self, name: str, dev_type: DevType, *, vnet_hdr: bool = False) -> None:
        if len(name.encode()) >= 16:
            raise DeviceError(f"device name {name!r} too long (max 15 bytes)")
        try:
            self._dev = _TunTap(name, _flags(dev_type, vnet_hdr))
        except OSError as exc:
            raise _explain(exc, name) from exc
        self.name: str = self._dev.name
        self.dev_type: DevType = dev_type
        self.vnet_hdr = vnet_hdr
        #: merge runs of UDP packets into USO super-packets on write (set by the fast path)
        self.coalesce_udp = False
        #: UDP packets that went out inside such super-packets (a run of n counts n - 1)
        self.udp_merged = 0
        self.fd: int = self._dev.fileno()
        os.set_blocking(self.fd, False)
        self.closed = False

    def fileno(self) -> int:
        return self.fd

    def read_batch(self, max_frames: int = 64, bufsize: int = 65_600) -> list[bytes]:
        """Read frames until EAGAIN or ``max_frames``; never blocks."""
        out: list[bytes] = []
        read = os.read
        fd = self.fd
        try:
            for _ in range(max_frames):
                out.append(read(fd, bufsize))
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EINTR) and not out:
                raise DeviceError(f"{self.name}: read failed: {exc.strerror}") from exc
        return out

    def write(self, frame: bytes | bytearray | memoryview) -> bool:
        """Write one frame; False when the kernel refused it (counted by the caller)."""
        if self.vnet_hdr or type(frame) is GsoFrame:
            return self.write_batch([frame]) == 0  # type: ignore[list-item]
        try:
            os.write(self.fd, frame)
            return True
        except OSError:
            # EINVAL for a malformed frame, EIO when the device is down, EAGAIN when the
            # queue is full: the frame is dropped, the device stays usable.
            return False

    def write_batch(self, frames: list[bytes]) -> int:
        """Write frames; returns how many the kernel refused.

        A :class:`~tunconnector.proto.offload.GsoFrame` (a super-packet with its
        virtio_net_hdr) is written whole on a device opened with IFF_VNET_HDR and
        segmented in software otherwise; plain frames on a vnet device get a zero header.
        """
        bad = 0
        write = os.write
        fd = self.fd
        if self.vnet_hdr:
            if self.coalesce_udp and len(frames) > 1:
                n = len(frames)
                frames = coalesce_udp(frames)  # runs of one UDP flow: one write each
                self.udp_merged += n - len(frames)
            writev = os.writev
            zero = [ZERO_VNET_HDR]
            for f in frames:
                try:
                    if type(f) is GsoFrame:
                        write(fd, f.data)
                    else:
                        writev(fd, zero + [f])
                except OSError:
                    bad += 1
            return bad
        for f in frames:
            try:
                if type(f) is GsoFrame:
                    for seg in f.segments(tap=self.dev_type == "tap"):
                        write(fd, seg)
                else:
                    write(fd, f)
            except (OSError, RemoteProtocolError):
                bad += 1
        return bad

    def set_carrier(self, on: bool) -> None:
        """TUNSETCARRIER: carrier off makes the link's operstate ``down`` (bond slaves fail)."""
        try:
            fcntl.ioctl(self.fd, TUNSETCARRIER, struct.pack("i", 1 if on else 0))
        except OSError as exc:
            raise DeviceError(f"{self.name}: TUNSETCARRIER failed: {exc.strerror}") from exc

    def detached(self) -> bool:
        """True when the kernel took the interface away from this fd (``ip link del``).

        The fd then stays open but every read and write fails with EBADFD, and poll
        reports POLLERR: that is what this asks, without consuming a frame.
        """
        if self.closed:
            return True
        p = select.poll()
        p.register(self.fd, select.POLLIN)
        try:
            return any(ev & (select.POLLERR | select.POLLNVAL) for _fd, ev in p.poll(0))
        except OSError:
            return True

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._dev.close()


def make_persistent(name: str, dev_type: DevType, user: str | None = None) -> str:
    """``openvpn --mktun``: create a device that outlives this process."""
    dev = Device(name, dev_type)
    try:
        if user is not None:
            try:
                uid = pwd.getpwnam(user).pw_uid if not user.isdigit() else int(user)
            except KeyError as exc:
                raise DeviceError(f"unknown user {user!r}") from exc
            fcntl.ioctl(dev.fd, TUNSETOWNER, uid)
        fcntl.ioctl(dev.fd, TUNSETPERSIST, 1)
    except OSError as exc:
        raise DeviceError(f"{name}: cannot make persistent: {exc.strerror}") from exc
    finally:
        dev.close()
    return dev.name


def remove_persistent(name: str, dev_type: DevType) -> None:
    """``openvpn --rmtun``: clear the persist flag; the device vanishes when closed."""
    dev = Device(name, dev_type)
    try:
        fcntl.ioctl(dev.fd, TUNSETPERSIST, 0)
    except OSError as exc:
        raise DeviceError(f"{name}: cannot clear persist flag: {exc.strerror}") from exc
    finally:
        dev.close()
