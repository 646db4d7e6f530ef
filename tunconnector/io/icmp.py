"""ICMP echo (ping) without the ``ping`` binary, for the built-in health check.

First choice is the unprivileged "ping socket" (``SOCK_DGRAM`` + ``IPPROTO_ICMP`` /
``IPPROTO_ICMPV6``): the kernel picks the echo identifier, fills the checksum and hands
back only our own replies. It is allowed only to groups within the
``net.ipv4.ping_group_range`` sysctl (per network namespace; the default ``1 0`` allows
nobody, so e.g. ``sysctl -w net.ipv4.ping_group_range="0 2147483647"``). The fallback is a
raw socket (needs CAP_NET_RAW), where we choose the identifier and filter replies
ourselves. Both IPv4 and IPv6; one socket serves many concurrent probes, matched by
sequence number and a random per-socket cookie in the payload.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import secrets
import socket
import struct
import time
from collections.abc import Callable
from typing import Literal

from ..errors import DeviceError, TransportError
from .netns import run_in

Kind = Literal["auto", "dgram", "raw"]

ICMP_ECHO_REPLY = 0
ICMP_ECHO_REQUEST = 8
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
_HDR = struct.Struct("!BBHHH")


def checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum."""
    if len(data) % 2:
        data += b"\x00"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_echo(family: int, ident: int, seq: int, payload: bytes) -> bytes:
    """An echo request; the IPv4 checksum is ours, IPv6's is filled by the kernel."""
    if family == socket.AF_INET6:
        return _HDR.pack(ICMP6_ECHO_REQUEST, 0, 0, ident, seq) + payload
    hdr = _HDR.pack(ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    csum = checksum(hdr + payload)
    return _HDR.pack(ICMP_ECHO_REQUEST, 0, csum, ident, seq) + payload


def parse_echo_reply(
    family: int, data: bytes, *, strip_ip: bool
) -> tuple[int, int, bytes] | None:
    """``(ident, seq, payload)`` of an echo reply, ``None`` for anything else."""
    if strip_ip and family == socket.AF_INET:
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        data = data[(data[0] & 0x0F) * 4 :]
    if len(data) < _HDR.size:
        return None
    typ, code, _csum, ident, seq = _HDR.unpack_from(data)
    want = ICMP6_ECHO_REPLY if family == socket.AF_INET6 else ICMP_ECHO_REPLY
    if typ != want or code != 0:
        return None
    return ident, seq, data[_HDR.size :]


def in_netns(netns: str | None, fn: Callable[[], socket.socket]) -> socket.socket:
    """Run ``fn`` in network namespace ``netns`` (a throwaway thread's setns)."""
    return run_in(netns, fn)


def open_icmp_socket(
    family: int,
    kind: Kind = "auto",
    *,
    netns: str | None = None,
    bind_interface: str | None = None,
) -> tuple[socket.socket, Literal["dgram", "raw"]]:
    """A non-blocking ICMP socket of ``kind`` (``auto``: ping socket, else raw)."""
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    order: list[Literal["dgram", "raw"]] = ["dgram", "raw"] if kind == "auto" else [kind]
    errors: list[str] = []
    for k in order:
        stype = socket.SOCK_DGRAM if k == "dgram" else socket.SOCK_RAW
        try:
            sock = in_netns(netns, functools.partial(socket.socket, family, stype, proto))
        except (OSError, DeviceError) as exc:
            errors.append(f"{k}: {getattr(exc, 'strerror', None) or exc}")
            continue
        try:
            sock.setblocking(False)
            if bind_interface:
                sock.setsockopt(
                    socket.SOL_SOCKET, socket.SO_BINDTODEVICE, bind_interface.encode()
                )
        except OSError as exc:
            sock.close()
            raise TransportError(f"ICMP socket setup failed: {exc}") from exc
        return sock, k
    hint = ""
    if "dgram" in order:
        hint = " (ping sockets need net.ipv4.ping_group_range to include our gid)"
    raise TransportError("cannot open an ICMP socket: " + "; ".join(errors) + hint)


class Pinger:
    """Concurrent ICMP echo over one socket, awaited with a timeout.

    ``await pinger.ping(addr, timeout)`` returns the RTT in seconds, or ``None`` when no
    reply came in time or the kernel refused to send (unreachable, no route): for a health
    check those are all "not answered".
    """

    def __init__(
        self,
        family: int = socket.AF_INET,
        *,
        kind: Kind = "auto",
        netns: str | None = None,
        bind_interface: str | None = None,
        payload_size: int = 24,
    ) -> None:
        self.family = family
        self.sock, self.kind = open_icmp_socket(
            family, kind, netns=netns, bind_interface=bind_interface
        )
        # raw sockets see every ICMP packet of the host: tell ours by id and cookie
        self._ident = secrets.randbits(16) if self.kind == "raw" else 0
        self._cookie = secrets.token_bytes(8)
        self._pad = b"\x00" * max(0, payload_size - 10)
        self._seq = secrets.randbits(16)
        self._waiting: dict[int, tuple[asyncio.Future[float], float]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.sent = 0
        self.received = 0
        self.send_errors = 0

    @classmethod
    def for_address(cls, addr: str, **kwargs: object) -> Pinger:
        ip = ipaddress.ip_address(addr)
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return cls(family, **kwargs)  # type: ignore[arg-type]

    def _ensure_reader(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            loop.add_reader(self.sock.fileno(), self._on_readable)
            self._loop = loop
        return loop

    async def ping(self, addr: str, timeout: float = 1.0) -> float | None:
        loop = self._ensure_reader()
        for _ in range(0x10000):
            self._seq = (self._seq + 1) & 0xFFFF
            if self._seq not in self._waiting:
                break
        seq = self._seq
        payload = self._cookie + struct.pack("!H", seq) + self._pad
        packet = build_echo(self.family, self._ident, seq, payload)
        fut: asyncio.Future[float] = loop.create_future()
        self._waiting[seq] = (fut, time.monotonic())
        try:
            try:
                self.sock.sendto(packet, (addr, 0))
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.ENOBUFS):
                    self.send_errors += 1
                    return None
                if exc.errno in (
                    errno.EHOSTUNREACH,
                    errno.ENETUNREACH,
                    errno.EHOSTDOWN,
                    errno.ENETDOWN,
                    errno.EINVAL,
                    errno.EADDRNOTAVAIL,
                    errno.EPERM,
                    errno.EACCES,
                ):
                    self.send_errors += 1
                    return None
                raise TransportError(f"ICMP send to {addr} failed: {exc}") from exc
            self.sent += 1
            try:
                return await asyncio.wait_for(asyncio.shield(fut), timeout)
            except TimeoutError:
                return None
        finally:
            self._waiting.pop(seq, None)
            if not fut.done():
                fut.cancel()

    def _on_readable(self) -> None:
        strip = self.kind == "raw"
        for _ in range(256):
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # ping sockets report ICMP errors (unreachable...) here; the probe times out
                continue
            now = time.monotonic()
            parsed = parse_echo_reply(self.family, data, strip_ip=strip)
            if parsed is None:
                continue
            ident, seq, payload = parsed
            if strip and ident != self._ident:
                continue
            if payload[:8] != self._cookie or payload[8:10] != struct.pack("!H", seq):
                continue
            entry = self._waiting.get(seq)
            if entry is None:
                continue
            fut, sent_at = entry
            if not fut.done():
                self.received += 1
                fut.set_result(now - sent_at)

    def close(self) -> None:
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        for fut, _ in self._waiting.values():
            if not fut.done():
                fut.cancel()
        self._waiting.clear()
        self.sock.close()

    def __enter__(self) -> Pinger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
