"""The Multi-link enabler's REST API, compatible paths, bodies and answers.

Reference: ``shared/enabler-api/openapi.yml`` (ASSIST-IoT Multi-link enabler). Bodies are
accepted as the enabler's clients send them (every value a string, ``bride_interface``
spelled both ways); answers are the enabler's plain JSON strings and status objects.
Differences, on purpose:

- every mutating endpoint needs credentials (the app's HTTP basic / bearer dependency);
- ``GET /v1/server/key`` serves no secret with ``[api] enabler_wire = "native"``: tunnel
  keys are configured out of band (``key_file``) and never cross the API. With
  ``enabler_wire = "openvpn"`` (links are OpenVPN static-key tunnels, like the original's
  openvpn processes) it returns the OpenVPN key, but only to authenticated requests, and
  ``/v1/client/start`` fetches it from ``server_api_url`` with the credentials given in
  that URL (``http://user:pass@host:port``);
- nothing is run through a shell; interface names are checked before any use;
- what was started is persisted (``[api] state_file``) and restored on restart;
- bodies are validated: 422 with the offending key's path; bad names in paths are 400
  (as the enabler), unknown interfaces 404, "already started" 409.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import json
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from .. import __version__
from ..bond import get_multilink
from ..config import BondConfig, build
from ..errors import BondError, ConfigError, TunconnectorError
from ..proto.bondparams import parse_params

_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_URL_RE = re.compile(r"^https?://[A-Za-z0-9._~:\[\]@%-]+(/[A-Za-z0-9._~/%-]*)?$")
MAX_LINKS = 16


def _ipv4(value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an IPv4 address") from exc


def _ifname(value: str) -> str:
    if not _IFNAME_RE.match(value):
        raise ValueError(f"{value!r} is not an interface name (1..15 of [A-Za-z0-9_.-])")
    return value


class StartServer(BaseModel):
    """``Start_server``; ``bride_interface`` (sic, the enabler's prose) is accepted too."""

    model_config = ConfigDict(extra="forbid")
    bridge_interface: str = Field(
        validation_alias=AliasChoices("bridge_interface", "bride_interface"),
        examples=["br0"],
    )
    bridge_ip: str = Field(examples=["10.8.0.254"])
    links: int = Field(ge=1, le=MAX_LINKS, examples=["2"])

    _v_name = field_validator("bridge_interface")(_ifname)
    _v_ip = field_validator("bridge_ip")(_ipv4)


class Slave(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hw_int: str
    ip_server: str
    netmask: str = "255.255.255.0"

    _v_name = field_validator("hw_int")(_ifname)
    _v_ip = field_validator("ip_server")(_ipv4)

    @field_validator("netmask")
    @classmethod
    def _v_mask(cls, value: str) -> str:
        try:
            ipaddress.IPv4Network(f"0.0.0.0/{value}")
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a netmask") from exc
        return value


class BondBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ip_address: str
    slaves: list[Slave] = Field(min_length=1, max_length=MAX_LINKS)
    bonding: dict[str, str | int | list[str]]

    _v_ip = field_validator("ip_address")(_ipv4)


class StartClient(BaseModel):
    """``Start_client``: exactly one bond, keyed by its interface name (``bond0``)."""

    model_config = ConfigDict(extra="forbid")
    server_api_url: str = Field(examples=["http://158.42.89.111:3333"])
    bond: dict[str, BondBody] = Field(min_length=1, max_length=1)

    @field_validator("server_api_url")
    @classmethod
    def _v_url(cls, value: str) -> str:
        if not _URL_RE.match(value):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value

    @field_validator("bond")
    @classmethod
    def _v_bond(cls, value: dict[str, BondBody]) -> dict[str, BondBody]:
        for name in value:
            _ifname(name)
        return value


class PingTest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ip: str

    @field_validator("ip")
    @classmethod
    def _v_ip(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError as exc:
            raise ValueError(f"{value!r} is not an IP address") from exc


def fetch_openvpn_key(server_api_url: str, timeout: float = 10.0) -> str:
    """The server's OpenVPN static key from ``GET {server_api_url}/v1/server/key``.

    Credentials in the URL (``http://user:pass@host``) go as HTTP basic, never in the
    request line. The answer is the enabler's ``{"key": "<file>"}`` (or a bare string);
    the key is checked and returned as a well-formed key file. Runs blocking (call it in
    a thread)."""
    from ..errors import CryptoError
    from ..proto.openvpn.keyfile import format_static_key, parse_static_key

    parts = urllib.parse.urlsplit(server_api_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    url = urllib.parse.urlunsplit((parts.scheme, netloc,
                                   parts.path.rstrip("/") + "/v1/server/key", "", ""))
    headers = {"Accept": "application/json"}
    if parts.username is not None:
        user = urllib.parse.unquote(parts.username)
        pw = urllib.parse.unquote(parts.password or "")
        headers["Authorization"] = "Basic " + base64.b64encode(
            f"{user}:{pw}".encode()).decode()
    where = f"{parts.scheme}://{netloc}/v1/server/key"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=timeout) as resp:
            body = resp.read(1 << 16)
    except urllib.error.HTTPError as exc:
        hint = " (credentials go in server_api_url: http://user:pass@host:port)" \
            if exc.code == 401 else ""
        raise TunconnectorError(f"cannot fetch the key from {where}: HTTP {exc.code}{hint}"
                                ) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TunconnectorError(f"cannot fetch the key from {where}: {reason}") from None
    try:
        data = json.loads(body)
    except ValueError:
        data = body.decode("ascii", "replace")
    text = data.get("key") if isinstance(data, dict) else data
    if not isinstance(text, str):
        raise TunconnectorError(f"{where} served no key: is the server's [api] "
                                "enabler_wire = 'openvpn'?")
    try:
        return format_static_key(parse_static_key(text, where).material)
    except CryptoError as exc:
        raise TunconnectorError(str(exc)) from None


def without_credentials(url: str) -> str:
    """``url`` without ``user:pass@`` (what is kept in status and the state file)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _replace_private(path: Path, text: str) -> None:
    """Write a 0600 key file, replacing an older one."""
    from ..keys import write_private_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    write_private_file(tmp, text)
    os.replace(tmp, path)


def _text(message: str, status: int = 200) -> JSONResponse:
    return JSONResponse(message, status_code=status)


def _bad_name(value: str) -> JSONResponse | None:
    if not _IFNAME_RE.match(value):
        return _text(f"The parameter {value} contains chars not supported", 400)
    return None


def _unprocessable(exc: ConfigError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


def _strings(body: dict[str, Any]) -> dict[str, str]:
    return {
        k: (",".join(v) if isinstance(v, list) else str(v)) for k, v in body.items()
    }


Responses = dict[int | str, dict[str, Any]]
_STRING: dict[str, Any] = {"application/json": {"schema": {"type": "string"}}}
_R400: Responses = {400: {"description": "Bad request", "content": _STRING}}
_R404: Responses = {404: {"description": "Not found", "content": _STRING}}
_R409: Responses = {
    409: {"description": "Already started / refused by the kernel", "content": _STRING}
}
_R422: Responses = {422: {"description": "Invalid body (names the key)"}}


def build_router(node: Any, auth: Any) -> APIRouter:
    """The enabler's endpoints over ``node``'s :class:`~tunconnector.bond.MultiLink`."""
    router = APIRouter()
    secured = auth.dependencies()
    ml = get_multilink(node)
    api_cfg = getattr(getattr(node, "config", None), "api", None)
    wire: str = getattr(api_cfg, "enabler_wire", "native")
    keydir: list[Path] = []  # a private directory for generated/fetched keys, made once

    def key_path(name: str) -> Path:
        """Where the enabler's OpenVPN key lives: beside [api] state_file when set (so it
        survives restarts with the restored endpoints), else in a private directory."""
        state_file = getattr(api_cfg, "state_file", None)
        if state_file:
            return Path(state_file).with_name(name)
        if not keydir:
            keydir.append(Path(tempfile.mkdtemp(prefix="tunconnector-enabler-")))
        return keydir[0] / name

    def server_key() -> Path:
        """[api] openvpn_secret, or a key generated once (mode 0600) and kept."""
        from ..keys import write_openvpn_key_file

        configured = getattr(api_cfg, "openvpn_secret", None)
        path = Path(configured) if configured else key_path("enabler-ta.key")
        if not path.exists():
            write_openvpn_key_file(path)
        return path

    def with_wire(body: dict[str, Any], key: Path | None) -> dict[str, Any]:
        if wire == "openvpn":
            body.update(wire="openvpn", openvpn_secret=str(key))
        return body

    # -- server --------------------------------------------------------------------------
    @router.post(
        "/v1/server/start",
        tags=["Server"],
        dependencies=secured,
        responses={**_R409, **_R422},
        summary="Start the multi-link server: TAP endpoints bridged into bridge_interface",
    )
    async def start_server(body: StartServer) -> Any:
        try:
            key = server_key() if wire == "openvpn" else None
            cfg = build(
                BondConfig,
                with_wire({
                    "role": "server",
                    "name": body.bridge_interface,
                    "bridge_ip": body.bridge_ip,
                    "links": body.links,
                }, key),
                "body",
            )
        except ConfigError as exc:
            return _unprocessable(exc)
        except TunconnectorError as exc:
            return _text(f"Server not started: {exc}", 409)
        async with ml.lock:
            if ml.running("server"):
                return _text(
                    "The server is already started, if you want to restart it, first stop them",
                    409,
                )
            try:
                await ml.start(cfg, api=True)
            except TunconnectorError as exc:
                return _text(f"Server not started: {exc}", 409)
        return _text("Server started succesfully!")

    @router.get(
        "/v1/server/key",
        tags=["Server"],
        responses={401: {"description": "enabler_wire = 'openvpn' and no credentials"}},
        summary="The OpenVPN static key (enabler_wire = 'openvpn', authenticated only); "
        "no key otherwise",
    )
    async def get_server_key(request: Request) -> Any:
        if wire == "openvpn":
            await auth(request)  # 401 / 429 for anonymous or wrong credentials
            try:
                text = server_key().read_text()
            except (OSError, TunconnectorError) as exc:
                return _text(f"No key: {exc}", 500)
            return {"key": text, "wire": "openvpn"}
        encrypted = any(
            link.cfg.key_file for link in ml.links.values() if link.role == "server"
        )
        return {
            "key": None,
            "encrypted": encrypted,
            "detail": "tunnel keys never cross this API: install the same key_file on "
            "both ends out of band (tunconnector genkey)",
        }

    @router.post(
        "/v1/server/stop/{bridge_interface}",
        tags=["Server"],
        dependencies=secured,
        responses={**_R400, **_R404},
    )
    async def stop_server(bridge_interface: str) -> Any:
        if (bad := _bad_name(bridge_interface)) is not None:
            return bad
        async with ml.lock:
            try:
                await ml.stop(bridge_interface, "server")
            except KeyError:
                return _text(f"Interface {bridge_interface} not found", 404)
        return _text("Server stopped successfully!")

    @router.get("/v1/server/status", tags=["Server"])
    async def server_status() -> dict[str, str]:
        return {"server_running": "true" if ml.running("server") else "false"}

    # -- client --------------------------------------------------------------------------
    @router.post(
        "/v1/client/start",
        tags=["Client"],
        dependencies=secured,
        responses={**_R409, **_R422},
        summary="Start the multi-link client: tap1..tapN over the slaves, bonded",
    )
    async def start_client(body: StartClient) -> Any:
        ((name, b),) = body.bond.items()
        key: Path | None = None
        if wire == "openvpn":  # the original client fetched the server's key first
            try:
                text = await asyncio.to_thread(fetch_openvpn_key, body.server_api_url)
                key = key_path(f"enabler-{name}-ta.key")
                await asyncio.to_thread(_replace_private, key, text)
            except TunconnectorError as exc:
                return _text(f"Client not started: {exc}", 409)
        try:
            cfg = build(
                BondConfig,
                with_wire({
                    "role": "client",
                    "name": name,
                    "ip_address": b.ip_address,
                    "slaves": [s.model_dump() for s in b.slaves],
                    "bonding": _strings(b.bonding),
                    "server_api_url": without_credentials(body.server_api_url),
                }, key),
                f"bond.{name}",
            )
        except ConfigError as exc:
            return _unprocessable(exc)
        async with ml.lock:
            if ml.running("client"):
                return _text(
                    "The client is already started, if you want to restart it then stop "
                    "them first",
                    409,
                )
            try:
                await ml.start(cfg, api=True)
            except ConfigError as exc:
                return _unprocessable(exc)
            except TunconnectorError as exc:
                return _text(f"Client not started: {exc}", 409)
        return _text("Client started ok")

    @router.get("/v1/client/status", tags=["Client"])
    async def client_status() -> dict[str, str]:
        return {"client_running": "true" if ml.running("client") else "false"}

    @router.post(
        "/v1/client/stop/{bond_interface}",
        tags=["Client"],
        dependencies=secured,
        responses={**_R400, **_R404},
    )
    async def stop_client(bond_interface: str) -> Any:
        if (bad := _bad_name(bond_interface)) is not None:
            return bad
        async with ml.lock:
            try:
                await ml.stop(bond_interface, "client")
            except KeyError:
                return _text(f"Interface {bond_interface} not found", 404)
        return _text("Client stopped")

    @router.put(
        "/v1/client/bond_params/{bond_interface}",
        tags=["Client"],
        dependencies=secured,
        responses={**_R400, **_R404, **_R409, **_R422},
        summary="Change bond options live (sysfs names; mode/fail_over_mac re-enslave)",
    )
    async def put_bond_params(
        bond_interface: str,
        body: Annotated[
            dict[str, str | int | list[str]],
            Body(min_length=1, examples=[{"primary": "tap2", "arp_interval": "50"}]),
        ],
    ) -> Any:
        if (bad := _bad_name(bond_interface)) is not None:
            return bad
        try:
            change = parse_params(body, "body")
        except ConfigError as exc:
            return _unprocessable(exc)
        async with ml.lock:
            try:
                await ml.apply(bond_interface, change)
            except KeyError:
                return _text(f"Interface {bond_interface} not found", 404)
            except ConfigError as exc:
                return _unprocessable(exc)
            except BondError as exc:
                return _text(str(exc), 409)
        return _text("Bond parameters changed successfully!")

    @router.get(
        "/v1/client/bond_params/{bond_interface}",
        tags=["Client"],
        responses={**_R400, **_R404},
        summary="The bond's sysfs files as a flat object (from netlink if not visible)",
    )
    async def get_bond_params(bond_interface: str) -> Any:
        if (bad := _bad_name(bond_interface)) is not None:
            return bad
        try:
            link = ml.link(bond_interface, "client")
        except KeyError:
            return _text(f"Interface {bond_interface} not found", 404)
        return await link.view()

    # -- common --------------------------------------------------------------------------
    async def _tap(tap: str, up: bool) -> Any:
        if (bad := _bad_name(tap)) is not None:
            return bad
        async with ml.lock:
            try:
                await ml.set_tap(tap, up)
            except KeyError:
                return _text(f"The tap interface {tap} don't exist", 404)
        verb = "up" if up else "down"
        return _text(f"Succesfully bring {verb} interface {tap}")

    @router.post(
        "/v1/tap_down/{tap}",
        tags=["Common endpoints"],
        dependencies=secured,
        responses={**_R400, **_R404},
        summary="Force a tap down (carrier off, link down) until tap_up",
    )
    async def tap_down(tap: str) -> Any:
        return await _tap(tap, False)

    @router.post(
        "/v1/tap_up/{tap}",
        tags=["Common endpoints"],
        dependencies=secured,
        responses={**_R400, **_R404},
        summary="Give a tap back: link up, carrier follows the tunnel's liveness again",
    )
    async def tap_up(tap: str) -> Any:
        return await _tap(tap, True)

    @router.post(
        "/v1/ping_test",
        tags=["Common endpoints"],
        dependencies=secured,
        responses={**_R404, **_R422},
    )
    async def ping_test(body: PingTest) -> Any:
        ping = shutil.which("ping")
        if ping is None:
            return _text("ping is not installed", 500)
        argv = [ping, "-n", "-c", "5", "-i", "0.2", "-W", "1", body.ip]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return _text(f"Ping {body.ip} failed", 404)
        if proc.returncode != 0:
            return _text(f"Ping {body.ip} failed", 404)
        return {"ping_log": out.decode(errors="replace")}

    @router.get("/v1/api-export", tags=["Common endpoints"])
    async def api_export(request: Request) -> Any:
        return request.app.openapi()

    @router.get("/version", tags=["Common endpoints"])
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @router.get("/health", tags=["Common endpoints"])
    @router.get("/helth", tags=["Common endpoints"], include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"helath": "healthy", "health": "healthy"}

    return router
