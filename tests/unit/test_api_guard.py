"""The API's request guard, driven as plain ASGI: credentials are checked before the
first body byte is received, bodies are capped at 1 MiB (announced or streamed), and a
422 never echoes the input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_api_auth import GOOD, FakeNode

from tunconnector.api import create_app
from tunconnector.api.guard import MAX_BODY
from tunconnector.config import ApiConfig


def app() -> Any:
    return create_app(FakeNode("vpn"), ApiConfig(username="admin", password="s3cret"))


async def call(asgi: Any, method: str, path: str, headers: dict[str, str],
               chunks: list[bytes]) -> tuple[int, bytes, int]:
    """One request; returns (status, body, number of receive() calls the app made)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
        "root_path": "", "query_string": b"", "client": ("192.0.2.9", 5000),
        "server": ("127.0.0.1", 8000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    received = 0
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal received
        received += 1
        if received <= len(chunks):
            return {"type": "http.request", "body": chunks[received - 1],
                    "more_body": received < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    await asgi(scope, receive, send)
    status = next(m["status"] for m in out if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")
    return status, body, received


BIG = [b"[" * (1 << 20)] * 50  # 50 MiB in 1 MiB chunks


@pytest.mark.parametrize("path", ["/v1/ping_test", "/v1/tunnels/vpn/start",
                                  "/v1/tunnels/vpn/peers/p", "/v1/server/start"])
async def test_unauthenticated_body_is_never_received(path: str) -> None:
    for headers in ({"content-length": str(50 << 20)}, {"transfer-encoding": "chunked"}):
        status, _, received = await call(app(), "POST", path, headers, BIG)
        assert status == 401 and received == 0


async def test_get_route_with_credentials_also_checked_first() -> None:
    status, _, received = await call(app(), "GET", "/vpn/start",
                                     {"transfer-encoding": "chunked"}, BIG)
    assert status == 401 and received == 0


async def test_announced_oversize_is_413_before_reading() -> None:
    headers = {**GOOD, "content-length": str(MAX_BODY + 1), "content-type": "application/json"}
    status, body, received = await call(app(), "POST", "/v1/ping_test", headers, BIG)
    assert status == 413 and received == 0 and b"larger than" in body


async def test_streamed_oversize_stops_at_the_limit() -> None:
    headers = {**GOOD, "transfer-encoding": "chunked", "content-type": "application/json"}
    status, _, received = await call(app(), "POST", "/v1/ping_test", headers, BIG)
    assert status == 413 and received == 2  # 1 MiB fits, the second chunk passes the limit
    # a Content-Length that lies low is caught the same way
    headers = {**GOOD, "content-length": "10", "content-type": "application/json"}
    status, _, received = await call(app(), "POST", "/v1/ping_test", headers, BIG)
    assert status == 413 and received == 2


async def test_body_within_limit_reaches_the_route_and_422_does_not_echo() -> None:
    payload = json.dumps({"ip": "z" * 900_000, "extra": ["w" * 1000] * 50}).encode()
    headers = {**GOOD, "content-length": str(len(payload)), "content-type": "application/json"}
    status, body, _ = await call(app(), "POST", "/v1/ping_test", headers, [payload])
    assert status == 422
    assert len(body) < 2000 and body.count(b"z") < 120  # at most a trimmed mention
    detail = json.loads(body)["detail"]
    assert detail[0]["loc"] == ["body", "ip"] and "input" not in detail[0]


async def test_authenticated_small_request_still_works() -> None:
    status, body, _ = await call(app(), "POST", "/v1/tunnels/vpn/stop",
                                 {**GOOD, "content-length": "0"}, [b""])
    assert status == 200 and json.loads(body)["state"] == "stopped"


async def test_bad_content_length_is_400() -> None:
    status, _, received = await call(app(), "POST", "/v1/ping_test",
                                     {**GOOD, "content-length": "²"}, [b"{}"])
    assert status == 400 and received == 0
