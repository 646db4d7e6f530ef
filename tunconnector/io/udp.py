"""UDP underlay socket: non-blocking, drained in batches from one loop reader callback."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

from ..errors import TransportError
from ..proto.fragment import FragmentRun
from ..proto.framing import MsgType
from ..proto.roaming import normalize as normalize  # the one definition, kept importable here
from ._bind import bind_error, bind_host
from .offload import (
    GRO_CMSG_SPACE,
    UDP_GSO_MAX_BYTES,
    UDP_MAX_SEGMENTS,
    SocketOffload,
    enable_socket_offload,
    gro_segment_size,
    is_gso_refusal,
    offload_env_off,
    send_each,
    sendmsg_gso,
)

Addr = tuple  # (host, port) or (host, port, flow, scope)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)


_FRAGMENT = int(MsgType.FRAGMENT)

def family_for(host: str | None) -> int:
    if host is None:
        return socket.AF_INET6
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def open_udp(
    *, bind: str | None, port: int, family: int, bind_interface: str | None = None,
    rcvbuf: int = 4 << 20, sndbuf: int = 4 << 20,
) -> socket.socket:
    """Open and bind a UDP socket; an unset IPv6 bind address means dual-stack ``::``."""
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        if family == socket.AF_INET6 and bind is None:  # IPv6 disabled: fall back
            return open_udp(bind=None, port=port, family=socket.AF_INET,
                            bind_interface=bind_interface)
        raise TransportError(f"cannot open UDP socket: {exc.strerror}") from exc
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for opt, val in ((socket.SO_RCVBUF, rcvbuf), (socket.SO_SNDBUF, sndbuf)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, val)
            except OSError:
                pass
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if bind is None else 1)
        if bind_interface:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, bind_interface.encode())
        sock.bind((bind_host(bind, family), port))
    except OSError as exc:
        sock.close()
        common = bind_error(exc, "UDP", bind, port)
        if common is not None:
            raise common from exc
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise TransportError(f"cannot bind UDP port {port}: permission denied") from exc
        if exc.errno == errno.ENODEV:
            raise TransportError(f"no interface {bind_interface!r} to bind to") from exc
        if family == socket.AF_INET6 and bind is None and exc.errno == errno.EAFNOSUPPORT:
            return open_udp(bind=None, port=port, family=socket.AF_INET,
                            bind_interface=bind_interface)
        raise TransportError(f"cannot bind UDP {bind}:{port}: {exc.strerror}") from exc
    return sock


#: a point-to-point tunnel whose peer has its own connected socket reads the shared one,
#: which only strangers (and the peer moving or coming back) still reach, at most
#: SHARED_BATCH datagrams per loop turn, and rests SHARED_REST seconds after a full one: a
#: flood there costs a bounded share of a core and cannot starve the peer's socket
SHARED_BATCH = 32
SHARED_REST = 0.002

SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
_SK_MEMINFO_DROPS = 8


def open_connected_twin(sock: socket.socket, remote: Addr, *, rcvbuf: int = 1 << 20,
                        bind_interface: str | None = None) -> socket.socket:
    """A second socket on ``sock``'s address and port, connected to ``remote``.

    The kernel hands a connected socket the datagrams of its remote address and port in
    preference to an unconnected one on the same port (both with SO_REUSEADDR), so that
    sender gets a receive queue of its own: when it sends more than is read, the kernel
    drops its excess there, and nobody else's datagrams. Datagrams of others that land
    on it in the moment between bind and connect are still ordinary datagrams.
    """
    try:
        twin = socket.socket(sock.family, socket.SOCK_DGRAM)
    except OSError as exc:
        raise TransportError(f"cannot open UDP socket: {exc.strerror}") from exc
    try:
        twin.setblocking(False)
        twin.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        twin.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if sock.family == socket.AF_INET6:
            twin.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY,
                            sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
        if bind_interface:
            twin.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, bind_interface.encode())
        twin.bind(sock.getsockname())
        twin.connect(remote)
    except OSError as exc:
        twin.close()
        raise TransportError(f"cannot open a connected UDP socket: {exc.strerror}") from exc
    return twin


def socket_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped at this socket (its receive queue was full); 0 when
    the kernel does not say (SO_MEMINFO)."""
    try:
        info = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 9 * 4)
    except OSError:
        return 0
    if len(info) < 9 * 4:
        return 0
    return int.from_bytes(info[_SK_MEMINFO_DROPS * 4:_SK_MEMINFO_DROPS * 4 + 4],
                          sys.byteorder)


def _icmp_error_key(exc: OSError) -> str:
    """The drop counter for an error a read returned: ``peer_unreachable`` for an ICMP
    port unreachable (nothing listened at the peer's port yet, e.g. while both ends
    start), ``rx_error`` for anything else."""
    return "peer_unreachable" if exc.errno == errno.ECONNREFUSED else "rx_error"

class UdpEndpoint:
    """A bound UDP socket plus a reader that hands batches of datagrams to a callback."""

    def __init__(self, sock: socket.socket, drops: Counter[str]) -> None:
        self.sock = sock
        self.drops = drops
        self._loop: asyncio.AbstractEventLoop | None = None
        self._v4mapped = sock.family == socket.AF_INET6
        #: UDP GSO / GRO in use (set by the fast path after probing the socket)
        self.gso = False
        self.gro = False
        #: native framing: coalesced FRAGMENT reads are handed on whole (FragmentRun)
        self.runs = False
        #: the address the socket is connected to, if it is
        self.remote: Addr | None = None
        self._max_batch = 64
        #: when set, a read that fills a whole batch rests the reader this long (seconds):
        #: a shared socket that only strangers fill then costs a bounded share of a core
        self.rest = 0.0
        self._reader: Callable[[], None] | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._rearm_pending = False
        #: kernel drops at this socket already counted (see :meth:`count_kernel_drops`)
        self._kernel_drops = 0

    @property
    def local_address(self) -> Addr:
        return tuple(self.sock.getsockname())

    def enable_offload(self, *, runs: bool) -> SocketOffload:
        """Switch UDP GSO/GRO on where the kernel has them: runs of equal-size datagrams
        leave in one sendmsg and arrive in one read (GRO reads are handed on as
        memoryview slices). ``runs``: coalesced FRAGMENT reads stay whole
        (:class:`FragmentRun`). ``$TUNCONNECTOR_OFFLOAD=off`` keeps the socket plain."""
        off = enable_socket_offload(self.sock, want=not offload_env_off())
        self.gso, self.gro = off.gso, off.gro
        self.runs = runs
        return off

    def start(self, on_batch: Callable[[list[tuple[bytes, Addr]]], None],
              max_batch: int = 64, *, reader: Callable[[], None] | None = None) -> None:
        """Read datagrams as they arrive: batches go to ``on_batch``.

        ``reader`` replaces the default readable callback (the tunnel's latency lane,
        which reads one datagram itself and uses :meth:`drain` for the rest).
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._max_batch = max_batch
        drain = self.drain

        def readable() -> None:
            batch = drain([])
            if batch:
                on_batch(batch)
                if self.rest and len(batch) >= self._max_batch:
                    self._pause()

        self._reader = reader or readable
        loop.add_reader(self.sock.fileno(), self._reader)

    def budget(self, max_batch: int, rest: float) -> None:
        """Read at most ``max_batch`` datagrams per loop turn, and after a full one rest
        ``rest`` seconds (0: read again next turn)."""
        self._max_batch, self.rest = max_batch, rest

    def _pause(self) -> None:
        loop = self._loop
        if loop is None or self._resume is not None:
            return
        loop.remove_reader(self.sock.fileno())
        self._resume = loop.call_later(self.rest, self._unpause)

    def _unpause(self) -> None:
        self._resume = None
        if self._loop is not None and self._reader is not None and self.sock.fileno() >= 0:
            self._loop.add_reader(self.sock.fileno(), self._reader)

    def connect(self, remote: Addr) -> None:
        """Connect the socket to ``remote``: the kernel then queues only its datagrams
        here, a stranger's end at the kernel (counted there as NoPorts, answered with
        ICMP port unreachable) instead of filling this queue. Sending to ``remote`` with
        an address stays valid on a connected UDP socket."""
        try:
            self.sock.connect(self.tx_addr(remote))
            self.remote = remote
        except OSError as exc:
            raise TransportError(f"cannot connect UDP socket to {remote[0]} port "
                                 f"{remote[1]}: {exc.strerror}") from exc

    def count_kernel_drops(self, key: str) -> int:
        """Add the datagrams the kernel dropped at this socket since the last call (its
        receive queue was full) to ``drops[key]``; returns the total so far."""
        n = socket_drops(self.sock)
        if n > self._kernel_drops:
            self.drops[key] += n - self._kernel_drops
            self._kernel_drops = n
        return n

    def recv_one(self) -> tuple[bytes, Any, Addr] | None:
        """One datagram as ``(data, ancillary, addr)`` (ancillary: GRO cmsgs or None);
        None when nothing is waiting (or an ICMP error surfaced, counted)."""
        try:
            if self.gro:
                data, anc, _flags, addr = self.sock.recvmsg(65_600, GRO_CMSG_SPACE)
                return data, anc, addr
            data, addr = self.sock.recvfrom(65_600)
            return data, None, addr
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self.drops[_icmp_error_key(exc)] += 1
            self._rearm_soon()
            return None

    def add_received(self, batch: list[tuple[Any, Addr]], data: bytes, anc: Any,
                     addr: Addr) -> None:
        """Append one read to ``batch``: a GRO-coalesced read is sliced into its
        datagrams, or kept whole as a :class:`FragmentRun` (native FRAGMENT runs, see
        ``PeerAcceptor.receive_run``)."""
        seg = gro_segment_size(anc) if anc else 0
        if seg and len(data) > seg:
            mv = memoryview(data)
            if self.runs and data[1] == _FRAGMENT:  # a whole super-message, usually
                batch.append((FragmentRun(mv, seg), addr))
                return
            for off in range(0, len(data), seg):
                batch.append((mv[off:off + seg], addr))
        else:
            batch.append((data, addr))

    def drain(self, batch: list[tuple[Any, Addr]], limit: int | None = None
              ) -> list[tuple[Any, Addr]]:
        """Read until EAGAIN or the batch limit (``limit`` reads, if given), appending to
        ``batch``; returns it."""
        if limit is None:
            limit = self._max_batch
        try:
            if self.gro:
                recvmsg, space, add = self.sock.recvmsg, GRO_CMSG_SPACE, self.add_received
                for _ in range(limit):
                    data, anc, _flags, addr = recvmsg(65_600, space)
                    if anc:
                        add(batch, data, anc, addr)
                    else:
                        batch.append((data, addr))
            else:
                recvfrom, append = self.sock.recvfrom, batch.append
                for _ in range(limit):
                    append(recvfrom(65_600))
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            # ICMP errors surface here (ECONNREFUSED, ENETUNREACH...): not fatal.
            self.drops[_icmp_error_key(exc)] += 1
            self._rearm_soon()
        return batch

    def _rearm_soon(self) -> None:
        """After a socket error, register the reader again: uvloop (libuv) stops polling
        a descriptor that reported an error (POLLERR), and a connected socket reports
        the ICMP port unreachable its remote answers while it is down; without this the
        socket would never be read again."""
        if self._loop is not None and self._reader is not None and not self._rearm_pending:
            self._rearm_pending = True
            self._loop.call_soon(self._rearm)

    def _rearm(self) -> None:
        self._rearm_pending = False
        loop, reader = self._loop, self._reader
        if loop is None or reader is None or self._resume is not None or self.sock.fileno() < 0:
            return
        loop.remove_reader(self.sock.fileno())
        loop.add_reader(self.sock.fileno(), reader)

    def send_batch(self, msgs: list[bytes], addr: Addr) -> None:
        """Send datagrams in order; with UDP GSO, each run of equal sizes (the last of a
        run may be shorter) leaves in one sendmsg: bulk traffic of MTU-sized packets
        costs one syscall per batch instead of one per packet. Failures are counted."""
        n = len(msgs)
        if not self.gso or n < 2:
            for m in msgs:
                self.sendto(m, addr)
            return
        i = 0
        while i < n:
            size = len(msgs[i])
            j = i + 1
            limit = min(n, i + UDP_MAX_SEGMENTS, i + UDP_GSO_MAX_BYTES // max(size, 1))
            while j < limit and len(msgs[j]) == size:
                j += 1
            if j < limit and len(msgs[j]) < size:
                j += 1  # a shorter datagram may close the run
            if j - i == 1:
                self.sendto(msgs[i], addr)
            else:
                self.send_gso(b"".join(msgs[i:j]), size, addr)
            i = j

    def send_gso(self, buf: bytes | bytearray | memoryview, stride: int, addr: Addr) -> bool:
        """Send ``buf`` as datagrams of ``stride`` bytes: one sendmsg per 64 with UDP GSO,
        one send each when the kernel refuses it (then GSO stays off for this socket)."""
        addr = self.tx_addr(addr)
        if self.gso:
            try:
                sendmsg_gso(self.sock, buf, stride, addr)
                return True
            except (BlockingIOError, InterruptedError):
                self.drops["tx_busy"] += 1
                return False
            except OSError as exc:
                if not is_gso_refusal(exc):
                    self.drops["tx_" + (errno.errorcode.get(exc.errno or 0, "error")).lower()] += 1
                    return False
                self.gso = False
                self.drops["udp_gso_refused"] += 1
        try:
            send_each(self.sock, buf, stride, addr)
            return True
        except (BlockingIOError, InterruptedError):
            self.drops["tx_busy"] += 1
        except OSError as exc:
            self.drops["tx_" + (errno.errorcode.get(exc.errno or 0, "error")).lower()] += 1
        return False

    def tx_addr(self, addr: Addr) -> Addr:
        """``addr`` as this socket's sendto() wants it (IPv4 v4-mapped on a v6 socket)."""
        if self._v4mapped and len(addr) == 2 and "." in addr[0] and ":" not in addr[0]:
            return ("::ffff:" + addr[0], addr[1])
        return addr

    def sendto(self, data: bytes, addr: Addr) -> bool:
        """Send one datagram; failures are counted, never raised (link down, full queue)."""
        try:
            self.sock.sendto(data, self.tx_addr(addr))
            return True
        except (BlockingIOError, InterruptedError):
            self.drops["tx_busy"] += 1
        except OSError as exc:
            self.drops["tx_" + (errno.errorcode.get(exc.errno or 0, "error")).lower()] += 1
            if exc.errno == errno.ECONNREFUSED:  # a pending ICMP error: see _rearm_soon
                self._rearm_soon()
        return False

    def close(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._loop is not None:
            try:
                self._loop.remove_reader(self.sock.fileno())
            except (ValueError, OSError):
                pass
        self.sock.close()


def retire_twin(twin: UdpEndpoint | None, shared: UdpEndpoint | None) -> None:
    """Close a peer's own socket (counting what the kernel dropped at its queue) and give
    the shared socket its full reads back: the live peer's datagrams arrive there again."""
    if twin is None:
        return
    twin.count_kernel_drops("peer_queue_full")
    twin.close()
    if shared is not None:
        shared.budget(64, 0.0)
