"""TCP underlay: listening and connecting sockets, TCP_NODELAY, a thin asyncio Protocol."""

from __future__ import annotations

import asyncio
import logging
import socket
import typing
from collections.abc import Callable

from ..errors import TransportError
from ..proto.backoff import Backoff
from ._bind import bind_error, bind_host
from .udp import SO_BINDTODEVICE, family_for

#: pending accepts the kernel keeps: a flood of connections must not crowd out a real
#: client's (the tunnel bounds the accepted ones it keeps, see proto.admission)
LISTEN_BACKLOG = 1024


class StreamProtocol(asyncio.Protocol):
    """Forwards bytes and flow-control to callbacks; knows nothing about framing."""

    def __init__(
        self,
        on_data: Callable[[StreamProtocol, bytes], None],
        on_lost: Callable[[StreamProtocol, Exception | None], None],
        on_made: Callable[[StreamProtocol], None] | None = None,
        on_pause: Callable[[StreamProtocol, bool], None] | None = None,
    ) -> None:
        self._on_data = on_data
        self._on_lost = on_lost
        self._on_made = on_made
        self._on_pause = on_pause
        self.transport: asyncio.Transport | None = None
        self.peername: tuple | None = None
        self.closed = False
        self._lost: asyncio.Event | None = None  # made by wait_lost() only

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: duck-type them
        self.transport = typing.cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.peername = transport.get_extra_info("peername")
        self.transport.set_write_buffer_limits(high=4 << 20, low=1 << 20)
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        self._on_data(self, data)

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_lost(self, exc)
        if self._lost is not None:
            self._lost.set()

    async def wait_lost(self) -> None:
        """Return once the connection is lost (at once if it already is)."""
        if self.closed:
            return
        if self._lost is None:
            self._lost = asyncio.Event()
        await self._lost.wait()

    def pause_writing(self) -> None:
        if self._on_pause is not None:
            self._on_pause(self, True)

    def resume_writing(self) -> None:
        if self._on_pause is not None:
            self._on_pause(self, False)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        """Write ``parts`` as one gathered write, without joining them first."""
        if self.transport is not None and not self.closed:
            self.transport.writelines(parts)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


def _socket(family: int, bind_interface: str | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if bind_interface:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, bind_interface.encode())
        except OSError as exc:
            sock.close()
            raise TransportError(
                f"cannot bind to interface {bind_interface!r}: {exc.strerror}"
            ) from exc
    sock.setblocking(False)
    return sock


def listen_socket(
    *, bind: str | None, port: int, family: int, bind_interface: str | None = None
) -> socket.socket:
    try:
        sock = _socket(family, bind_interface)
    except OSError as exc:
        if family == socket.AF_INET6 and bind is None:
            return listen_socket(bind=None, port=port, family=socket.AF_INET,
                                 bind_interface=bind_interface)
        raise TransportError(f"cannot open TCP socket: {exc.strerror}") from exc
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if bind is None else 1)
        sock.bind((bind_host(bind, family), port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as exc:
        sock.close()
        raise bind_error(exc, "TCP", bind, port) or TransportError(
            f"cannot listen on TCP {bind}:{port}: {exc.strerror}") from exc
    return sock


async def connect(
    remote: tuple, *, family: int, bind: str | None, port: int,
    bind_interface: str | None, timeout: float,
) -> socket.socket:
    """A connected non-blocking TCP socket (optionally from a fixed source address/port)."""
    sock = _socket(family, bind_interface)
    try:
        if bind is not None or port:
            sock.bind((bind_host(bind, family), port))
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.sock_connect(sock, remote), timeout)
    except (TimeoutError, OSError):
        sock.close()
        raise
    return sock


async def keep_connected(
    remote: tuple, protocol: Callable[[], StreamProtocol], *, bind: str | None, port: int,
    bind_interface: str | None, stopping: Callable[[], bool],
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    """A client's TCP connection to ``remote``, made again whenever it is lost, until
    ``stopping()``: a failed attempt waits 0.2 s, doubling up to 5 s, before the next; a
    lost connection waits the next delay too (a server that accepts and drops at once is
    not hammered). Runs as a task; cancel it to stop."""
    loop = asyncio.get_running_loop()
    backoff = Backoff(base=0.2, cap=5.0)
    family = family_for(remote[0])
    while not stopping():
        try:
            sock = await connect(remote, family=family, bind=bind, port=port,
                                 bind_interface=bind_interface, timeout=5.0)
        except (TimeoutError, OSError, TransportError) as exc:
            delay = backoff.next_delay()
            log.debug("connect to %s failed (%s); retry in %.2fs", remote, exc, delay)
            await asyncio.sleep(delay)
            continue
        backoff.reset()
        _transport, proto = await loop.create_connection(protocol, sock=sock)
        await proto.wait_lost()
        if not stopping():
            await asyncio.sleep(backoff.next_delay())
