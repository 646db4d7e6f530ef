"""The control API: FastAPI app over a running :class:`~tunconnector.node.Node`.

Per tunnel: ``GET /v1/tunnels``, ``GET /v1/tunnels/{name}``,
``POST /v1/tunnels/{name}/start|stop``; a hub's peers: ``GET /v1/tunnels/{name}/peers``,
``PUT|DELETE /v1/tunnels/{name}/peers/{peer}`` (authenticated). Seed 000's short forms
act on the default tunnel (the only one, or ``[api] default_tunnel``): ``/vpn/start``,
``/vpn/stop`` (authenticated; GET is accepted too because TunConnector's clients use it)
and ``/vpn/status``
(unauthenticated, ``{"status": "OK"|"NOT_OK"}`` like TunConnector's status file). Also
``/metrics`` (Prometheus text), ``/livez`` and ``/readyz`` for probes, the OpenAPI
document at ``/openapi.json`` and its Swagger UI page at ``/docs``, whose script, style
and icon come from this process (``/docs/assets``, the ``fastapi-offline`` package), not
from a CDN: testbeds are often offline, and a page that loads its script from the internet
is blank there. The Multi-link enabler router (``api/enabler.py``) is
included when that module exists.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import logging
from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Path, Request, Response
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..config import ApiConfig, PeerConfig, build
from ..errors import ConfigError, TunconnectorError
from ..metrics import NodeCollector, make_registry, render
from . import guard
from .auth import Authenticator, make_authenticator

log = logging.getLogger(__name__)

#: where the Swagger UI page's own assets are served (unauthenticated GETs, like /docs)
DOCS_ASSETS = "/docs/assets"
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Problem(BaseModel):
    detail: str


class HealthOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    state: Literal["OK", "NOT_OK", "UNKNOWN"]
    target: str | None = None
    window: int = 0
    window_answered: int = 0
    probes: int = 0
    interval: float = 0.0
    threshold: float = 0.0
    sent: int = 0
    answered: int = 0
    lost: int = 0
    rtt_last: float | None = None
    rtt_avg: float | None = None
    status_file: str | None = None
    error: str | None = None


class TunnelOut(BaseModel):
    """A tunnel's live status (more keys may appear; these are stable)."""

    model_config = ConfigDict(extra="allow")
    name: str
    mode: str | None = None
    proto: str | None = None
    framing: str | None = None
    device: str | None = None
    addresses: list[str] = Field(default_factory=list)
    peer: Any = None
    state: str = Field(description="stopped | starting | down | up | failed")
    last_rx_age: float | None = None
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    tx_packets: int = 0
    drops: dict[str, int] = Field(default_factory=dict)
    health: HealthOut | None = None


class ActionOut(BaseModel):
    tunnel: str
    action: Literal["start", "stop"]
    changed: bool
    state: str
    message: str


class VpnStatusOut(BaseModel):
    status: Literal["OK", "NOT_OK"]
    tunnel: str
    state: str
    health: Literal["OK", "NOT_OK", "UNKNOWN"] | None = None


class Alive(BaseModel):
    status: Literal["alive"] = "alive"
    version: str


class Ready(BaseModel):
    ready: bool
    failed: list[str] = Field(default_factory=list)


def _health_map(node: Any) -> dict[str, Any]:
    return dict(getattr(node, "health", None) or {})


def _health_snapshot(node: Any, name: str) -> dict[str, Any] | None:
    mon = _health_map(node).get(name)
    return mon.snapshot() if mon is not None else None


def _status_of(node: Any, name: str) -> dict[str, Any]:
    st = dict(node.tunnel(name).status())
    st["health"] = _health_snapshot(node, name)
    return st


def _default_tunnel(node: Any, api: ApiConfig | None) -> str:
    if api is not None and api.default_tunnel:
        return api.default_tunnel
    # configured [[tunnel]]s only: bond TAP tunnels also live in node.tunnels
    cfg = getattr(node, "config", None)
    names = [t.name for t in cfg.tunnel] if cfg is not None else list(node.tunnels)
    if len(names) == 1:
        return names[0]
    if not names:
        raise HTTPException(404, detail="no tunnel is configured")
    raise HTTPException(
        409, detail="several tunnels are configured: set [api] default_tunnel for /vpn/*"
    )


def create_app(
    node: Any,
    api_config: ApiConfig | None = None,
    *,
    authenticator: Authenticator | None = None,
) -> FastAPI:
    """Build the API for ``node``; credentials from ``api_config`` or the environment."""
    auth = authenticator or make_authenticator(api_config)
    # FastAPI's own /docs loads Swagger UI from a CDN; this one serves it from the package
    app = FastAPIOffline(
        static_url=DOCS_ASSETS,
        title="tunconnector control API",
        version=__version__,
        description=(
            "Control and status of tunconnector tunnels. Mutating endpoints need HTTP basic "
            "or bearer credentials; status, metrics and probes do not."
        ),
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
        # no online validator: it would send the document's URL to an outside host
        swagger_ui_parameters={"validatorUrl": None},
    )
    app.state.node = node
    app.state.auth = auth
    locks: dict[str, asyncio.Lock] = {}
    secured = auth.dependencies()
    registry = make_registry(
        NodeCollector(
            node.status,
            lambda: {n: m.snapshot() for n, m in _health_map(node).items()},
            auth,
            __version__,
        )
    )
    app.state.registry = registry
    not_found: dict[int | str, dict[str, Any]] = {
        404: {"model": Problem, "description": "no such tunnel"}
    }
    auth_errors: dict[int | str, dict[str, Any]] = {
        401: {"model": Problem, "description": "missing or wrong credentials"},
        409: {"model": Problem, "description": "the tunnel could not change state"},
        429: {"model": Problem, "description": "too many failed authentication attempts"},
    }

    @app.exception_handler(TunconnectorError)
    async def _tc_error(request: Request, exc: TunconnectorError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    def _known(name: str) -> str:
        if name not in node.tunnels:
            raise HTTPException(404, detail=f"no tunnel named {name!r}")
        return name

    async def _act(name: str, action: Literal["start", "stop"], who: str) -> ActionOut:
        _known(name)
        lock = locks.setdefault(name, asyncio.Lock())
        async with lock:
            t = node.tunnel(name)
            before = str(getattr(t.state, "value", t.state))
            running = before in ("starting", "down", "up")
            if action == "start" and not running:
                await node.start_tunnel(name)
            elif action == "stop" and before != "stopped":
                await node.stop_tunnel(name)
            after = str(getattr(t.state, "value", t.state))
        changed = before != after
        log.info("API: %s %s tunnel %s (%s -> %s)", who, action, name, before, after)
        verb = "started" if action == "start" else "stopped"
        msg = f"tunnel {name} {verb}" if changed else f"tunnel {name} was already {after}"
        return ActionOut(tunnel=name, action=action, changed=changed, state=after, message=msg)

    # -- /v1/tunnels ---------------------------------------------------------------------
    @app.get("/v1/tunnels", response_model=list[TunnelOut], tags=["tunnels"])
    async def list_tunnels() -> list[dict[str, Any]]:
        """Every configured tunnel with state, peer, counters and health."""
        return [_status_of(node, n) for n in node.tunnels]

    @app.get(
        "/v1/tunnels/{name}", response_model=TunnelOut, responses=not_found, tags=["tunnels"]
    )
    async def get_tunnel(name: str = Path(pattern=NAME_PATTERN)) -> dict[str, Any]:
        return _status_of(node, _known(name))

    @app.post(
        "/v1/tunnels/{name}/start",
        response_model=ActionOut,
        responses={**not_found, **auth_errors},
        dependencies=secured,
        tags=["tunnels"],
    )
    async def start_tunnel(
        name: str = Path(pattern=NAME_PATTERN), who: str = Depends(auth)
    ) -> ActionOut:
        """Start the tunnel (idempotent: ``changed`` says whether anything happened)."""
        return await _act(name, "start", who)

    @app.post(
        "/v1/tunnels/{name}/stop",
        response_model=ActionOut,
        responses={**not_found, **auth_errors},
        dependencies=secured,
        tags=["tunnels"],
    )
    async def stop_tunnel(
        name: str = Path(pattern=NAME_PATTERN), who: str = Depends(auth)
    ) -> ActionOut:
        """Stop the tunnel: its device goes away, traffic through it stops."""
        return await _act(name, "stop", who)

    # -- a hub's peers -------------------------------------------------------------------
    def _hub(name: str) -> Any:
        t = node.tunnel(_known(name))
        if t.peer_table is None:
            raise HTTPException(404, detail=f"tunnel {name!r} is not a hub")
        return t

    def _peer_out(hub: Any, peer: str) -> dict[str, Any]:
        for p in hub.peers_status():
            if p["name"] == peer:
                return dict(p)
        raise HTTPException(404, detail=f"no peer named {peer!r}")

    @app.get("/v1/tunnels/{name}/peers", responses=not_found, tags=["hub"])
    async def list_peers(name: str = Path(pattern=NAME_PATTERN)) -> list[dict[str, Any]]:
        """The hub's peers: key, endpoint, address, state, counters, drops."""
        return list(_hub(name).peers_status())

    @app.put(
        "/v1/tunnels/{name}/peers/{peer}",
        responses={**not_found, **auth_errors,
                   422: {"model": Problem, "description": "invalid peer table"}},
        dependencies=secured,
        tags=["hub"],
    )
    async def put_peer(
        body: dict[str, Any],
        name: str = Path(pattern=NAME_PATTERN), peer: str = Path(pattern=NAME_PATTERN),
        who: str = Depends(auth),
    ) -> dict[str, Any]:
        """Add or change a peer (body: the ``[[tunnel.peer]]`` table as JSON; ``name``
        comes from the path). Other peers keep their sessions."""
        hub = _hub(name)
        refusal = getattr(hub.peer_table, "peer_table_refusal", None)
        if refusal:  # an OpenVPN server: its clients are certificates, not tables
            raise HTTPException(422, detail=refusal)
        table = dict(body)
        if table.setdefault("name", peer) != peer:
            raise HTTPException(422, detail="peer.name: differs from the path")
        try:
            cfg = build(PeerConfig, table, "peer")
            async with locks.setdefault(name, asyncio.Lock()):
                outcome = await hub.peer_table.put_peer(cfg)
        except ConfigError as exc:
            raise HTTPException(422, detail=str(exc)[:500]) from None
        log.info("API: %s put peer %s of hub %s (%s)", who, peer, name, outcome)
        return {"peer": peer, "result": outcome, **_peer_out(hub, peer)}

    @app.delete(
        "/v1/tunnels/{name}/peers/{peer}",
        responses={**not_found, **auth_errors},
        dependencies=secured,
        tags=["hub"],
    )
    async def delete_peer(
        name: str = Path(pattern=NAME_PATTERN), peer: str = Path(pattern=NAME_PATTERN),
        who: str = Depends(auth),
    ) -> dict[str, Any]:
        """Remove a peer: its session ends at once; the others are untouched."""
        hub = _hub(name)
        async with locks.setdefault(name, asyncio.Lock()):
            removed = await hub.peer_table.delete_peer(peer)
        if not removed:
            raise HTTPException(404, detail=f"no peer named {peer!r}")
        log.info("API: %s removed peer %s of hub %s", who, peer, name)
        return {"peer": peer, "result": "removed"}

    # -- TunConnector's /vpn/* -----------------------------------------------------------
    vpn_errors: dict[int | str, dict[str, Any]] = {
        **auth_errors,
        404: {"model": Problem, "description": "no tunnel configured"},
    }

    async def vpn_start(who: str = Depends(auth)) -> ActionOut:
        """Start the default tunnel (TunConnector's /vpn/start)."""
        return await _act(_default_tunnel(node, api_config), "start", who)

    async def vpn_stop(who: str = Depends(auth)) -> ActionOut:
        """Stop the default tunnel (TunConnector's /vpn/stop)."""
        return await _act(_default_tunnel(node, api_config), "stop", who)

    for path, endpoint in (("/vpn/start", vpn_start), ("/vpn/stop", vpn_stop)):
        for method in ("POST", "GET"):
            app.add_api_route(
                path, endpoint, methods=[method], response_model=ActionOut,
                responses=vpn_errors, dependencies=secured, tags=["vpn"],
                operation_id=f"{endpoint.__name__}_{method.lower()}",
                description=(endpoint.__doc__ or "") + (
                    " GET is accepted for TunConnector's clients; prefer POST." if method == "GET"
                    else ""
                ),
            )

    @app.get(
        "/vpn/status",
        response_model=VpnStatusOut,
        responses={404: {"model": Problem}, 409: {"model": Problem}},
        tags=["vpn"],
    )
    async def vpn_status() -> VpnStatusOut:
        """``OK`` when the default tunnel's health check passes (or, without a health
        check, when its peer is alive); ``NOT_OK`` otherwise. No authentication."""
        name = _default_tunnel(node, api_config)
        t = node.tunnel(name)
        state = str(getattr(t.state, "value", t.state))
        health = _health_snapshot(node, name)
        if health is not None:
            verdict = health["state"]
            ok = verdict == "OK" and state in ("up", "down")
        else:
            verdict = None
            ok = state == "up"
        return VpnStatusOut(
            status="OK" if ok else "NOT_OK", tunnel=name, state=state, health=verdict
        )

    # -- operations ----------------------------------------------------------------------
    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {METRICS_CONTENT_TYPE: {}}, "description": "metrics"}},
        tags=["operations"],
    )
    async def metrics() -> Response:
        """Prometheus text exposition, computed from live counters at scrape time."""
        return Response(render(registry), media_type=METRICS_CONTENT_TYPE)

    @app.get("/livez", response_model=Alive, tags=["operations"])
    async def livez() -> Alive:
        """The daemon's loop answers (liveness probe)."""
        return Alive(version=__version__)

    @app.get(
        "/readyz",
        response_model=Ready,
        responses={503: {"model": Ready, "description": "not started, or a tunnel failed"}},
        tags=["operations"],
    )
    async def readyz() -> Any:
        """The daemon finished start-up and no enabled tunnel is ``failed`` (readiness
        probe). A tunnel stopped through the API is an operator's choice, not a fault."""
        failed = []
        for n, t in node.tunnels.items():
            state = str(getattr(t.state, "value", t.state))
            if t.config.enabled and state == "failed":
                failed.append(n)
        started = bool(getattr(node, "started", True))
        body = Ready(ready=started and not failed, failed=failed)
        if not body.ready:
            return JSONResponse(body.model_dump(), status_code=503)
        return body

    # -- Multi-link enabler (kernel bond issue) ------------------------------------------
    if importlib.util.find_spec(f"{__package__}.enabler") is not None:
        enabler = importlib.import_module(f"{__package__}.enabler")
        app.include_router(enabler.build_router(node, auth))

    # credentials before bodies, a body limit, 422s without the input (see guard.py)
    guard.install(app, auth)
    return app
