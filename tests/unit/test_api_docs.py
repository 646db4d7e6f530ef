"""``/docs`` needs nothing from outside the daemon: no external host in the page, and
every asset it names is served here without credentials (the browser sends none).

The browser check itself is tests/integration/test_api_docs_browser.py.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tunconnector.api import create_app
from tunconnector.config import ApiConfig, Config


class FakeNode:
    config = Config()
    tunnels: dict[str, Any] = {}

    def status(self) -> list[dict[str, Any]]:
        return []


class _Refs(HTMLParser):
    """Every ``src``/``href`` in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(FakeNode(), ApiConfig(username="admin", password="pw-x1")))


def test_docs_page_names_no_external_host(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200
    page = r.text
    assert not re.search(r"(?i)(https?:)?//[a-z0-9\[]", page), page
    assert "cdn" not in page.lower(), page
    parser = _Refs()
    parser.feed(page)
    assert parser.refs and all(ref.startswith("/") for ref in parser.refs), parser.refs
    # the document it loads is ours too, and no online validator is asked
    assert "url: '/openapi.json'" in page
    assert '"validatorUrl": null' in page


def test_docs_assets_load_without_credentials(client: TestClient) -> None:
    parser = _Refs()
    parser.feed(client.get("/docs").text)
    kinds: dict[str, tuple[str, int]] = {}
    for ref in parser.refs:
        r = client.get(ref)
        assert r.status_code == 200, (ref, r.status_code, r.text[:200])
        kinds[ref.rsplit(".", 1)[-1]] = (r.headers["content-type"], len(r.content))
    assert kinds["js"][0].startswith("text/javascript") and kinds["js"][1] > 500_000
    assert kinds["css"][0].startswith("text/css")
    assert client.get("/openapi.json").status_code == 200
    # mutating endpoints still need credentials: the assets opened nothing else
    assert client.post("/v1/tunnels/x/stop").status_code == 401
    assert client.get("/docs/assets/..%2fcore.py").status_code == 404
    assert client.get("/docs/assets/nope.js").status_code == 404
