"""The Multi-link enabler router without a kernel: bodies, auth, answers, OpenAPI.

Nothing here starts a bond (that needs the VM suite); these are the API's contract
checks: the enabler's own example bodies validate, everything else gets a clear 422,
mutating endpoints need credentials, path names are checked before any use.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from tunconnector.api import create_app
from tunconnector.api.enabler import StartClient, StartServer
from tunconnector.config import ApiConfig, Config
from tunconnector.node import Node
from tunconnector.proto.linkevents import (
    IFF_LOWER_UP,
    IFF_RUNNING,
    IFF_UP,
    RTM_DELLINK,
    RTM_NEWLINK,
    parse_link_events,
)

ENABLER_CLIENT_BODY: dict[str, Any] = {
    "server_api_url": "http://158.42.89.111:3333",
    "bond": {
        "bond0": {
            "ip_address": "10.8.0.253",
            "slaves": [
                {"hw_int": "eth0", "ip_server": "158.42.89.111", "netmask": "255.255.255.0"},
                {"hw_int": "wlan0", "ip_server": "192.168.150.100", "netmask": "255.255.255.0"},
            ],
            "bonding": {
                "bonding_mode": "1",
                "primary": "tap1",
                "arp_ip_target": "10.8.0.254",
                "arp_interval": "100",
                "fail_over_mac": "1",
                "arp_validate": "5",
            },
        }
    },
}
AUTH = ("admin", "pw-for-tests")


@pytest.fixture
def client() -> Iterator[TestClient]:
    cfg = Config(api=ApiConfig(username=AUTH[0], password=AUTH[1]))
    node = Node(cfg)
    try:
        yield TestClient(create_app(node, cfg.api))
    finally:
        node.netlink.close()


def test_enabler_example_bodies_validate() -> None:
    s = StartServer.model_validate(
        {"bride_interface": "br0", "bridge_ip": "10.8.0.254", "links": "2"}
    )
    assert (s.bridge_interface, s.bridge_ip, s.links) == ("br0", "10.8.0.254", 2)
    s2 = StartServer.model_validate(
        {"bridge_interface": "br0", "bridge_ip": "10.8.0.254", "links": 2}
    )
    assert s2.bridge_interface == "br0"
    c = StartClient.model_validate(ENABLER_CLIENT_BODY)
    assert c.bond["bond0"].slaves[1].hw_int == "wlan0"


@pytest.mark.parametrize(
    ("path", "body", "fragment"),
    [
        (
            "/v1/server/start",
            {"bride_interface": "br0", "bridge_ip": "10.8.0.300", "links": "2"},
            "bridge_ip",
        ),
        (
            "/v1/server/start",
            {"bride_interface": "br;0", "bridge_ip": "10.8.0.254", "links": "2"},
            "bride_interface",
        ),
        (
            "/v1/server/start",
            {"bride_interface": "br0", "bridge_ip": "10.8.0.254", "links": "0"},
            "links",
        ),
        (
            "/v1/server/start",
            {"bride_interface": "br0", "bridge_ip": "10.8.0.254", "links": "2", "extra": 1},
            "extra",
        ),
        ("/v1/ping_test", {"ip": "10.8.0.254; reboot"}, "ip"),
    ],
)
def test_bad_bodies_are_422(
    client: TestClient, path: str, body: dict[str, Any], fragment: str
) -> None:
    r = client.post(path, json=body, auth=AUTH)
    assert r.status_code == 422
    assert fragment in r.text


def _client_body(**bonding: str) -> dict[str, Any]:
    import copy

    body = copy.deepcopy(ENABLER_CLIENT_BODY)
    body["bond"]["bond0"]["bonding"].update(bonding)
    return body


@pytest.mark.parametrize(
    ("bonding", "fragment"),
    [
        ({"bonding_mode": "4"}, "802.3ad"),
        ({"primary": "tap7"}, "not one of the bond's slaves"),
        ({"arp_validate": "9"}, "outside 0..6"),
        ({"miimon": "100"}, "exclusive"),
        ({"bonding_mode": "0"}, "not supported in mode balance-rr"),
    ],
)
def test_bad_bonding_is_422_naming_the_key(
    client: TestClient, bonding: dict[str, str], fragment: str
) -> None:
    r = client.post("/v1/client/start", json=_client_body(**bonding), auth=AUTH)
    assert r.status_code == 422, r.text
    assert fragment in r.json()["detail"]
    assert "bond.bond0.bonding" in r.json()["detail"]


MUTATING = [
    (
        "POST",
        "/v1/server/start",
        {"bride_interface": "br0", "bridge_ip": "10.8.0.254", "links": "2"},
    ),
    ("POST", "/v1/server/stop/br0", None),
    ("POST", "/v1/client/start", ENABLER_CLIENT_BODY),
    ("POST", "/v1/client/stop/bond0", None),
    ("PUT", "/v1/client/bond_params/bond0", {"primary": "tap2"}),
    ("POST", "/v1/tap_down/tap1", None),
    ("POST", "/v1/tap_up/tap1", None),
    ("POST", "/v1/ping_test", {"ip": "10.8.0.254"}),
]


@pytest.mark.parametrize(("method", "path", "body"), MUTATING)
def test_mutating_endpoints_401_without_credentials(
    client: TestClient, method: str, path: str, body: Any
) -> None:
    assert client.request(method, path, json=body).status_code == 401
    wrong = "Basic " + base64.b64encode(b"admin:nope").decode()
    r = client.request(method, path, json=body, headers={"Authorization": wrong})
    assert r.status_code == 401


def test_status_and_common_answers(client: TestClient) -> None:
    assert client.get("/v1/client/status").json() == {"client_running": "false"}
    assert client.get("/v1/server/status").json() == {"server_running": "false"}
    assert client.get("/version").json()["version"]
    assert client.get("/health").json()["helath"] == "healthy"
    assert client.get("/helth").json()["helath"] == "healthy"
    key = client.get("/v1/server/key").json()
    assert key["key"] is None  # no secret ever crosses the API


def test_unknown_and_malformed_names(client: TestClient) -> None:
    r = client.get("/v1/client/bond_params/bond0")
    assert r.status_code == 404 and r.json() == "Interface bond0 not found"
    r = client.post("/v1/client/stop/bo$nd0", auth=AUTH)
    assert r.status_code == 400 and "chars not supported" in r.json()
    r = client.post("/v1/tap_down/tap1", auth=AUTH)
    assert r.status_code == 404 and r.json() == "The tap interface tap1 don't exist"
    r = client.put("/v1/client/bond_params/bond0", json={"mode": "802.3ad"}, auth=AUTH)
    assert r.status_code == 422
    r = client.put("/v1/client/bond_params/bond0", json={}, auth=AUTH)
    assert r.status_code == 422


def test_openapi_document_validates(client: TestClient) -> None:
    doc = client.get("/v1/api-export").json()
    for path in (
        "/v1/server/start",
        "/v1/server/key",
        "/v1/server/stop/{bridge_interface}",
        "/v1/server/status",
        "/v1/client/start",
        "/v1/client/status",
        "/v1/client/stop/{bond_interface}",
        "/v1/client/bond_params/{bond_interface}",
        "/v1/tap_down/{tap}",
        "/v1/tap_up/{tap}",
        "/v1/ping_test",
        "/v1/api-export",
        "/version",
        "/health",
    ):
        assert path in doc["paths"], path
    assert set(doc["paths"]["/v1/client/bond_params/{bond_interface}"]) >= {"get", "put"}
    validate(doc)  # openapi-spec-validator: raises on a malformed document


def _nlmsg(mtype: int, index: int, flags: int) -> bytes:
    body = struct.pack("=BxHiII", 0, 1, index, flags, 0xFFFFFFFF)
    return struct.pack("=IHHII", 16 + len(body), mtype, 0, 0, 0) + body


def test_link_events_decode() -> None:
    up = IFF_UP | IFF_RUNNING | IFF_LOWER_UP
    data = (
        _nlmsg(RTM_NEWLINK, 3, up)
        + _nlmsg(RTM_NEWLINK, 4, IFF_UP)
        + _nlmsg(RTM_DELLINK, 5, up)
        + _nlmsg(20, 9, 0)
    )
    evs = parse_link_events(data)
    assert [(e.index, e.usable) for e in evs] == [(3, True), (4, False), (5, False)]


def test_link_events_garbage_is_remote_error() -> None:
    from tunconnector.errors import RemoteProtocolError

    with pytest.raises(RemoteProtocolError):
        parse_link_events(struct.pack("=IHHII", 200, RTM_NEWLINK, 0, 0, 0))
    with pytest.raises(RemoteProtocolError):
        parse_link_events(struct.pack("=IHHII", 20, RTM_NEWLINK, 0, 0, 0) + b"\0" * 4)
