"""Serve the API with uvicorn inside the daemon's own event loop.

We bind the listening socket ourselves (so a bad address raises :class:`TransportError`
instead of uvicorn's ``sys.exit``, and port 0 works), then run ``uvicorn.Server`` as a
task with its signal capture disabled: the daemon owns SIGINT/SIGTERM. Listening beyond
loopback without credentials is refused with a :class:`ConfigError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Generator, Mapping
from typing import Any

import uvicorn

from ..config import ApiConfig
from ..errors import ConfigError, TransportError
from .auth import Credentials

log = logging.getLogger(__name__)


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    host, _, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or not port.isdigit():
        raise ConfigError(f"api.listen: expected HOST:PORT, got {listen!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(api: ApiConfig, env: Mapping[str, str] | None = None) -> Credentials:
    """Credentials for ``api``; refuse a non-loopback listener without any."""
    creds = Credentials.resolve(api, env)
    host, _ = split_listen(api.listen)
    if not is_loopback(host) and not creds.configured:
        raise ConfigError(
            f"api.listen: refusing to listen on {api.listen} (not loopback) without "
            "credentials: set [api] username/password or token, or API_USERNAME/"
            "API_PASSWORD or API_TOKEN in the environment"
        )
    if not creds.configured:
        log.warning("API on %s has no credentials: it is read-only", api.listen)
    elif api.tls_cert is None and not is_loopback(host):
        log.warning("API on %s without TLS: credentials cross the network in clear",
                    api.listen)
    return creds


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers (the daemon has them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ApiServer:
    """Start/stop a uvicorn server for ``app`` on ``api.listen`` in the running loop."""

    def __init__(self, app: Any, api: ApiConfig) -> None:
        self.app = app
        self.api = api
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self.address: tuple[str, int] | None = None

    @property
    def url(self) -> str:
        if self.address is None:
            raise TransportError("API server is not running")
        host, port = self.address
        scheme = "https" if self.api.tls_cert else "http"
        return f"{scheme}://{'[' + host + ']' if ':' in host else host}:{port}"

    def _bind(self) -> socket.socket:
        host, port = split_listen(self.api.listen)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        except socket.gaierror as exc:
            raise ConfigError(f"api.listen: cannot resolve {host!r}: {exc}") from exc
        family, stype, proto, _, addr = infos[0]
        sock = socket.socket(family, stype, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind(addr)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise TransportError(f"api.listen: cannot listen on {self.api.listen}: {exc}") \
                from exc
        return sock

    async def start(self) -> None:
        check_exposure(self.api)
        sock = self._bind()
        self._sock = sock
        bound = sock.getsockname()
        self.address = (bound[0], bound[1])
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            ssl_certfile=self.api.tls_cert,
            ssl_keyfile=self.api.tls_key,
            timeout_graceful_shutdown=2,
        )
        try:
            config.load()
        except (OSError, ValueError) as exc:  # unreadable or bad cert/key
            sock.close()
            raise ConfigError(f"api.tls_cert: cannot load TLS certificate/key: {exc}") from exc
        server = _EmbeddedServer(config)
        # uvicorn's serve() minus signal capture, split so start() returns once accepting
        server.lifespan = config.lifespan_class(config)
        try:
            await server.startup(sockets=[sock])
        except BaseException:
            sock.close()
            raise
        self._server = server
        self._task = asyncio.create_task(self._run(server, sock), name="api")
        log.info("API listening on %s", self.url)

    @staticmethod
    async def _run(server: uvicorn.Server, sock: socket.socket) -> None:
        try:
            await server.main_loop()
        finally:
            await server.shutdown(sockets=[sock])

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except TimeoutError:
                self._server.force_exit = True
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        if self._sock is not None:
            self._sock.close()
        self._server = None
        self._task = None
        self._sock = None
