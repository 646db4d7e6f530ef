"""REST control API (FastAPI + uvicorn inside the daemon's event loop).

:func:`create_app` builds the app over a node; :class:`ApiServer` serves it;
:func:`api_service` is the node service that does both when ``[api]`` is configured.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from .app import create_app
from .auth import Authenticator, Credentials, make_authenticator
from .server import ApiServer, check_exposure

__all__ = [
    "ApiServer",
    "Authenticator",
    "Credentials",
    "api_service",
    "check_exposure",
    "create_app",
    "make_authenticator",
]


async def api_service(node: Any) -> Callable[[], Awaitable[None]] | None:
    """Node service: serve the API when ``config.api`` is set; returns its stop."""
    api = node.config.api
    if api is None:
        return None
    server = ApiServer(create_app(node, api), api)
    await server.start()
    node.api_server = server
    return server.stop
