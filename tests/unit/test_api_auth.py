"""Control API over a fake node: auth on every mutating endpoint, rate limit, /vpn/*,
/metrics, OpenAPI. In-process ASGI, no sockets."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tunconnector.api import create_app
from tunconnector.api.auth import Authenticator, Credentials, FailedAuthLimiter
from tunconnector.api.server import check_exposure, is_loopback, split_listen
from tunconnector.config import ApiConfig, Config, TunnelConfig
from tunconnector.errors import ConfigError

MUTATING = [
    ("POST", "/v1/tunnels/vpn/start"),
    ("POST", "/v1/tunnels/vpn/stop"),
    ("POST", "/vpn/start"),
    ("POST", "/vpn/stop"),
    ("GET", "/vpn/start"),
    ("GET", "/vpn/stop"),
]


class FakeTunnel:
    def __init__(self, name: str) -> None:
        self.name = name
        self.config = TunnelConfig(name=name, address=["10.0.0.1/24"])
        self.state = "up"
        self.rx = 0

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name, "mode": "server", "proto": "udp", "framing": "native",
            "device": "tun0", "addresses": ["10.0.0.1/24"], "peer": "192.0.2.2:55556",
            "state": self.state, "last_rx_age": 0.5, "rx_bytes": self.rx, "tx_bytes": 20,
            "rx_packets": 3, "tx_packets": 4, "drops": {"bad_version": 2},
            "paths": [{"name": "eth0", "state": "up", "rtt": 0.002, "rx_bytes": 7,
                       "active": True, "loss": 0.25}],
            "failovers": 1,
            "crypto": {"established": True, "session_age": 12.5, "handshakes": 3,
                       "rekeys": 2},
        }


class FakeNode:
    def __init__(self, *names: str) -> None:
        self.tunnels = {n: FakeTunnel(n) for n in names}
        self.config = Config(tunnel=[t.config for t in self.tunnels.values()])
        self.calls: list[str] = []

    def tunnel(self, name: str) -> FakeTunnel:
        if name not in self.tunnels:
            raise ConfigError(f"no tunnel named {name!r}")
        return self.tunnels[name]

    async def start_tunnel(self, name: str) -> None:
        self.calls.append(f"start {name}")
        self.tunnels[name].state = "up"

    async def stop_tunnel(self, name: str) -> None:
        self.calls.append(f"stop {name}")
        self.tunnels[name].state = "stopped"

    def status(self) -> list[dict[str, Any]]:
        return [t.status() for t in self.tunnels.values()]


def basic(user: str, pw: str) -> dict[str, str]:
    tok = base64.b64encode(f"{user}:{pw}".encode()).decode()
    return {"Authorization": f"Basic {tok}"}


GOOD = basic("admin", "s3cret")
BEARER = {"Authorization": "Bearer tok-123"}


def make(node: FakeNode, clock: list[float] | None = None, **api: Any) -> TestClient:
    cfg = ApiConfig(**api)
    creds = Credentials.resolve(cfg, env={})
    limiter = FailedAuthLimiter(cfg.auth_max_failures, cfg.auth_window,
                                clock=(lambda: clock[0]) if clock else __import__("time").monotonic)
    return TestClient(create_app(node, cfg, authenticator=Authenticator(creds, limiter)))


@pytest.fixture
def node() -> FakeNode:
    return FakeNode("vpn")


@pytest.fixture
def client(node: FakeNode) -> TestClient:
    return make(node, username="admin", password="s3cret", token="tok-123",
                auth_max_failures=1000)


# -- credentials -------------------------------------------------------------------------
def test_credentials_from_config_then_env() -> None:
    c = Credentials.resolve(ApiConfig(), env={"API_USERNAME": "u", "API_PASSWORD": "p"})
    assert (c.username, c.password, c.token) == ("u", "p", None) and c.configured
    c = Credentials.resolve(ApiConfig(username="a", password="b"),
                            env={"API_USERNAME": "u", "API_PASSWORD": "p", "API_TOKEN": "t"})
    assert (c.username, c.password, c.token) == ("a", "b", "t")
    assert not Credentials.resolve(ApiConfig(), env={}).configured
    assert "b" not in repr(Credentials.resolve(ApiConfig(username="a", password="b"), env={}))


def test_credentials_half_configured_rejected() -> None:
    with pytest.raises(ConfigError, match="together"):
        Credentials.resolve(ApiConfig(username="admin"), env={})
    with pytest.raises(ConfigError, match="together"):
        Credentials.resolve(ApiConfig(), env={"API_PASSWORD": "x"})


def test_no_default_credentials() -> None:
    # the seed's admin/secret must not work unless configured
    a = Authenticator(Credentials.resolve(ApiConfig(), env={}))
    assert a.check_header(basic("admin", "secret")["Authorization"]) is None


def test_exposure_rules() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::")
    assert split_listen("[::1]:8000") == ("::1", 8000)
    check_exposure(ApiConfig(listen="127.0.0.1:8000"), env={})
    with pytest.raises(ConfigError, match="without credentials"):
        check_exposure(ApiConfig(listen="0.0.0.0:8000"), env={})
    check_exposure(ApiConfig(listen="0.0.0.0:8000"), env={"API_TOKEN": "x"})
    check_exposure(ApiConfig(listen="[::]:8000", username="a", password="b"), env={})


def test_api_config_keys() -> None:
    cfg = Config.from_mapping({
        "api": {"listen": "127.0.0.1:8000", "username": "admin", "password": "x",
                "auth_max_failures": 3, "auth_window": 10},
        "tunnel": [{"name": "vpn"}],
    })
    assert cfg.api is not None and cfg.api.auth_max_failures == 3
    with pytest.raises(ConfigError, match="auth_window"):
        Config.from_mapping({"api": {"auth_window": 0}})


# -- 401 everywhere ----------------------------------------------------------------------
@pytest.mark.parametrize("method,path", MUTATING)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        basic("admin", "wrong"),
        basic("wrong", "s3cret"),
        basic("admin", ""),
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic !!!notbase64"},
        {"Authorization": "Digest foo"},
        {"Authorization": "Basic " + base64.b64encode(b"admins3cret").decode()},
    ],
    ids=["none", "badpw", "baduser", "emptypw", "badtoken", "garbage", "digest", "nocolon"],
)
def test_mutating_endpoints_refuse(
    client: TestClient, node: FakeNode, method: str, path: str, headers: dict[str, str]
) -> None:
    r = client.request(method, path, headers=headers)
    assert r.status_code == 401, r.text
    assert "Basic" in r.headers["www-authenticate"]
    assert node.calls == []


@pytest.mark.parametrize("method,path", MUTATING)
@pytest.mark.parametrize("headers", [GOOD, BEARER], ids=["basic", "bearer"])
def test_mutating_endpoints_accept(
    client: TestClient, node: FakeNode, method: str, path: str, headers: dict[str, str]
) -> None:
    node.tunnels["vpn"].state = "stopped" if path.endswith("start") else "up"
    r = client.request(method, path, headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["changed"] is True and body["tunnel"] == "vpn"
    assert len(node.calls) == 1


def test_without_configured_credentials_api_is_read_only(node: FakeNode) -> None:
    c = make(node)
    for method, path in MUTATING:
        assert c.request(method, path, headers=basic("admin", "secret")).status_code == 401
    assert c.get("/vpn/status").status_code == 200
    assert c.get("/v1/tunnels").status_code == 200
    assert node.calls == []


def test_failed_auth_rate_limited_and_counted(node: FakeNode) -> None:
    clock = [1000.0]
    c = make(node, clock, username="admin", password="s3cret", auth_max_failures=3,
             auth_window=60)
    for _ in range(3):
        assert c.post("/vpn/stop", headers=basic("admin", "x")).status_code == 401
    r = c.post("/vpn/stop", headers=GOOD)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert node.calls == []
    clock[0] += 61
    assert c.post("/vpn/stop", headers=GOOD).status_code == 200
    m = c.get("/metrics").text
    assert "tunconnector_api_auth_failures_total 3.0" in m
    assert "tunconnector_api_auth_throttled_total 1.0" in m


def test_limiter_is_per_client_and_bounded() -> None:
    t = [0.0]
    lim = FailedAuthLimiter(2, 10, max_clients=3, clock=lambda: t[0])
    lim.failed("a")
    lim.failed("a")
    assert lim.retry_after("a") == pytest.approx(10)
    assert lim.retry_after("b") == 0
    for x in "bcde":
        lim.failed(x)
    assert len(lim._fails) == 3
    t[0] = 10.5
    assert lim.retry_after("a") == 0


# -- behaviour ---------------------------------------------------------------------------
def test_start_stop_idempotent(client: TestClient, node: FakeNode) -> None:
    r = client.post("/v1/tunnels/vpn/start", headers=GOOD)
    assert r.json()["changed"] is False and node.calls == []
    r = client.post("/v1/tunnels/vpn/stop", headers=GOOD)
    assert r.json() == {"tunnel": "vpn", "action": "stop", "changed": True,
                        "state": "stopped", "message": "tunnel vpn stopped"}
    assert client.post("/v1/tunnels/vpn/stop", headers=GOOD).json()["changed"] is False
    assert node.calls == ["stop vpn"]


def test_unknown_tunnel_404(client: TestClient) -> None:
    assert client.get("/v1/tunnels/nope").status_code == 404
    assert client.post("/v1/tunnels/nope/start", headers=GOOD).status_code == 404
    assert client.get("/v1/tunnels/bad%20name").status_code == 422


def test_list_and_get(client: TestClient) -> None:
    lst = client.get("/v1/tunnels").json()
    assert [t["name"] for t in lst] == ["vpn"]
    one = client.get("/v1/tunnels/vpn").json()
    assert one["rx_bytes"] == 0 and one["drops"] == {"bad_version": 2}
    assert one["health"] is None


def test_vpn_status_unauthenticated(client: TestClient, node: FakeNode) -> None:
    assert client.get("/vpn/status").json()["status"] == "OK"
    node.tunnels["vpn"].state = "down"
    assert client.get("/vpn/status").json()["status"] == "NOT_OK"


def test_vpn_status_uses_health(client: TestClient, node: FakeNode) -> None:
    class Mon:
        verdict = "NOT_OK"

        def snapshot(self) -> dict[str, Any]:
            return {"state": self.verdict, "target": "10.0.0.2", "answered": 5, "lost": 1,
                    "rtt_avg": 0.003}

    mon = Mon()
    node.health = {"vpn": mon}  # type: ignore[attr-defined]
    r = client.get("/vpn/status").json()
    assert r == {"status": "NOT_OK", "tunnel": "vpn", "state": "up", "health": "NOT_OK"}
    mon.verdict = "OK"
    assert client.get("/vpn/status").json()["status"] == "OK"
    assert client.get("/v1/tunnels/vpn").json()["health"]["target"] == "10.0.0.2"
    fams = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert fams["tunconnector_health_ok"].samples[0].value == 1.0
    assert fams["tunconnector_health_rtt_seconds"].samples[0].value == 0.003


def test_default_tunnel_rules() -> None:
    n2 = FakeNode("a", "b")
    c = make(n2, username="u", password="p")
    assert c.get("/vpn/status").status_code == 409
    assert c.post("/vpn/stop", headers=basic("u", "p")).status_code == 409
    c = make(n2, username="u", password="p", default_tunnel="b")
    assert c.get("/vpn/status").json()["tunnel"] == "b"
    c.post("/vpn/stop", headers=basic("u", "p"))
    assert n2.calls == ["stop b"]


def test_metrics_parse_and_follow_counters(client: TestClient, node: FakeNode) -> None:
    def sample(text: str, name: str, **labels: str) -> float:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        raise KeyError(name)

    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert sample(r.text, "tunconnector_rx_bytes_total", tunnel="vpn") == 0
    node.tunnels["vpn"].rx = 1234
    t = client.get("/metrics").text
    assert sample(t, "tunconnector_rx_bytes_total", tunnel="vpn") == 1234
    assert sample(t, "tunconnector_drops_total", tunnel="vpn", reason="bad_version") == 2
    assert sample(t, "tunconnector_tunnel_up", tunnel="vpn") == 1
    assert sample(t, "tunconnector_tunnel_state", tunnel="vpn", state="up") == 1
    assert sample(t, "tunconnector_path_rtt_seconds", tunnel="vpn", path="eth0") == 0.002
    assert sample(t, "tunconnector_path_rx_bytes_total", tunnel="vpn", path="eth0") == 7
    assert sample(t, "tunconnector_path_active", tunnel="vpn", path="eth0") == 1
    assert sample(t, "tunconnector_path_loss_ratio", tunnel="vpn", path="eth0") == 0.25
    assert sample(t, "tunconnector_failovers_total", tunnel="vpn") == 1
    assert sample(t, "tunconnector_handshakes_total", tunnel="vpn") == 3
    assert sample(t, "tunconnector_rekeys_total", tunnel="vpn") == 2
    assert sample(t, "tunconnector_session_established", tunnel="vpn") == 1
    assert sample(t, "tunconnector_session_age_seconds", tunnel="vpn") == 12.5


def test_probes(client: TestClient, node: FakeNode) -> None:
    assert client.get("/livez").json()["status"] == "alive"
    assert client.get("/readyz").status_code == 200
    node.tunnels["vpn"].state = "stopped"  # the operator's choice: still ready
    assert client.get("/readyz").status_code == 200
    node.tunnels["vpn"].state = "failed"
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["failed"] == ["vpn"]


def test_openapi_document(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    schemes = doc["components"]["securitySchemes"]
    assert schemes["basicAuth"]["scheme"] == "basic"
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    for method, path in MUTATING:
        op = doc["paths"][path.replace("/vpn/s", "/{name}/s", 1) if path.startswith("/v1")
                          else path][method.lower()]
        assert {"basicAuth": []} in op["security"], path
    assert "security" not in doc["paths"]["/vpn/status"]["get"]
