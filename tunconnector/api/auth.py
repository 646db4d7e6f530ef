"""Authentication for the control API: HTTP basic or bearer token, no defaults.

Credentials come from ``[api]`` (``username``/``password``, ``token``) or, for keys the
file leaves unset, from the environment (``API_USERNAME``/``API_PASSWORD`` as in
TunConnector's unit, ``API_TOKEN``). Secrets are compared with :func:`hmac.compare_digest`, user
and password both always (no early exit that would leak which one was wrong). Without
any credential configured, mutating endpoints are refused: the API is then read-only.

Failed attempts are counted and rate-limited per client address: after
``max_failures`` failures within ``window`` seconds the address gets 429 with
``Retry-After`` (even with good credentials) until ``window`` has passed since its last
failure, which makes guessing at network speed useless.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.openapi.models import HTTPBase, HTTPBearer
from fastapi.security.base import SecurityBase

from ..config import ApiConfig
from ..errors import ConfigError

log = logging.getLogger(__name__)

REALM = "tunconnector"
#: where the request guard (guard.py) leaves the principal it authenticated
PRINCIPAL_KEY = "tunconnector.principal"
CHALLENGE = f'Basic realm="{REALM}", Bearer realm="{REALM}"'


@dataclass(frozen=True, slots=True)
class Credentials:
    username: str | None = None
    password: str | None = None
    token: str | None = None

    @property
    def configured(self) -> bool:
        return bool(self.token) or bool(self.username and self.password)

    @classmethod
    def resolve(
        cls, api: ApiConfig | None, env: Mapping[str, str] | None = None
    ) -> Credentials:
        """Config first, then ``API_USERNAME``/``API_PASSWORD``/``API_TOKEN``."""
        env = os.environ if env is None else env
        username = (api.username if api else None) or env.get("API_USERNAME") or None
        password = (api.password if api else None) or env.get("API_PASSWORD") or None
        token = (api.token if api else None) or env.get("API_TOKEN") or None
        if (username is None) != (password is None):
            raise ConfigError(
                "api.username: username and password go together "
                "(set both in [api] or API_USERNAME and API_PASSWORD)"
            )
        if username is not None and ":" in username:
            raise ConfigError("api.username: must not contain ':' (HTTP basic)")
        return cls(username, password, token)

    def __repr__(self) -> str:  # never print secrets
        return (
            f"Credentials(username={self.username!r}, password={'***' if self.password else None}"
            f", token={'***' if self.token else None})"
        )


class FailedAuthLimiter:
    """Sliding-window failure counter per client address, bounded in memory."""

    def __init__(
        self,
        max_failures: int = 10,
        window: float = 60.0,
        *,
        max_clients: int = 4096,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_clients = max_clients
        self.clock = clock
        self._fails: OrderedDict[str, deque[float]] = OrderedDict()
        self.failures_total = 0
        self.throttled_total = 0

    def _recent(self, client: str, now: float) -> deque[float] | None:
        q = self._fails.get(client)
        if q is None:
            return None
        while q and q[0] <= now - self.window:
            q.popleft()
        if not q:
            del self._fails[client]
            return None
        return q

    def retry_after(self, client: str) -> float:
        """Seconds the client must wait, 0 when it may try."""
        now = self.clock()
        q = self._recent(client, now)
        if q is None or len(q) < self.max_failures:
            return 0.0
        return max(0.0, q[-1] + self.window - now)

    def failed(self, client: str) -> None:
        now = self.clock()
        self.failures_total += 1
        q = self._recent(client, now)
        if q is None:
            q = deque(maxlen=self.max_failures)
            self._fails[client] = q
            while len(self._fails) > self.max_clients:
                self._fails.popitem(last=False)
        self._fails.move_to_end(client)
        q.append(now)

    def throttled(self) -> None:
        self.throttled_total += 1


class _Scheme(SecurityBase):
    """Declares an HTTP scheme in OpenAPI; parsing is done by :class:`Authenticator`."""

    def __init__(self, model: HTTPBase, name: str) -> None:
        self.model = model
        self.scheme_name = name

    async def __call__(self, request: Request) -> None:
        return None


basic_scheme = _Scheme(HTTPBase(scheme="basic"), "basicAuth")
bearer_scheme = _Scheme(HTTPBearer(), "bearerAuth")


class Authenticator:
    """Checks a request's ``Authorization`` header; use :meth:`dependency` in routes."""

    def __init__(self, creds: Credentials, limiter: FailedAuthLimiter | None = None) -> None:
        self.creds = creds
        self.limiter = limiter or FailedAuthLimiter()
        self.successes_total = 0

    def check_header(self, header: str | None) -> str | None:
        """The authenticated principal, or ``None``. Constant time in the secret."""
        c = self.creds
        if not header:
            return None
        scheme, _, value = header.partition(" ")
        scheme = scheme.lower()
        value = value.strip()
        if scheme == "bearer" and c.token:
            if hmac.compare_digest(value.encode(), c.token.encode()):
                return "token"
            return None
        if scheme == "basic" and c.username and c.password:
            try:
                raw = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return None
            user, sep, pw = raw.partition(":")
            ok_user = hmac.compare_digest(user.encode(), c.username.encode())
            ok_pw = hmac.compare_digest(pw.encode(), c.password.encode())
            if sep and ok_user & ok_pw:
                return user
        return None

    def verdict(self, client: str, header: str | None,
                path: str) -> str | tuple[int, str, dict[str, str]]:
        """The principal, or the refusal ``(status, detail, headers)``; counts either.

        Used by the request guard on headers alone (before any body is read) and by the
        route dependency for anything the guard did not see."""
        wait = self.limiter.retry_after(client)
        if wait > 0:
            self.limiter.throttled()
            return (status.HTTP_429_TOO_MANY_REQUESTS,
                    "too many failed authentication attempts",
                    {"Retry-After": str(int(wait) + 1)})
        if not self.creds.configured:
            self.limiter.failed(client)
            return (status.HTTP_401_UNAUTHORIZED,
                    "API credentials are not configured: the API is read-only",
                    {"WWW-Authenticate": CHALLENGE})
        principal = self.check_header(header)
        if principal is None:
            self.limiter.failed(client)
            log.warning("API: failed authentication from %s for %s", client, path[:200])
            return (status.HTTP_401_UNAUTHORIZED, "invalid or missing credentials",
                    {"WWW-Authenticate": CHALLENGE})
        self.successes_total += 1
        return principal

    async def __call__(self, request: Request) -> str:
        checked = request.scope.get(PRINCIPAL_KEY)
        if isinstance(checked, str):  # the guard authenticated this request already
            return checked
        client = request.client.host if request.client else "unknown"
        verdict = self.verdict(client, request.headers.get("authorization"), request.url.path)
        if isinstance(verdict, tuple):
            code, detail, headers = verdict
            raise HTTPException(code, detail=detail, headers=headers)
        return verdict

    def dependencies(self) -> list[Any]:
        """Route dependencies: the two schemes (for OpenAPI) and the check itself."""
        return [Depends(basic_scheme), Depends(bearer_scheme), Depends(self)]


def make_authenticator(
    api: ApiConfig | None, env: Mapping[str, str] | None = None
) -> Authenticator:
    limiter = FailedAuthLimiter(
        max_failures=api.auth_max_failures if api else 10,
        window=api.auth_window if api else 60.0,
    )
    return Authenticator(Credentials.resolve(api, env), limiter)
