"""The API's ``/docs`` page renders in a real browser on a network without internet.

The daemon runs in a namespace whose only ways out are loopback and a veth to a second
namespace, as on an offline testbed. Headless Chromium, in that namespace, loads
``/docs`` and dumps the DOM once the page's scripts ran. Swagger UI draws one ``opblock``
per operation only after its script, its style and ``/openapi.json`` all loaded, so the
operation paths in the DOM show the whole page came from the daemon. FastAPI's stock page
loads its script from a CDN and stays blank here (the test fails against it).
"""

from __future__ import annotations

import html
import re
import shutil
import tempfile

import pytest
from harness import Api, Env, to_toml
from netns import free_port, tunconnector_cmd

USER, PASSWORD = "admin", "pw-docs-7e1c"
CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p), None)
#: no background traffic: on a closed network Chromium's own connections are refused
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--virtual-time-budget=5000",
]


def dump_dom(env: Env, url: str) -> str:
    """The DOM of ``url`` after its scripts ran, from Chromium inside namespace A."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory(prefix="tc-chromium-") as profile:
        res = env.a.run(CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                        "--dump-dom", url, check=False, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


@pytest.mark.skipif(CHROMIUM is None,
                    reason="needs chromium (Debian's chromium; scripts/setup.sh installs it)")
def test_docs_page_renders_operations_without_internet(env: Env) -> None:
    port = free_port()
    path = env.workdir / "server.toml"
    path.write_text(to_toml([{
        "name": "vpn", "mode": "server", "device": "tcv0", "port": 55561,
        "address": ["10.77.1.1/24"],
    }], f'[api]\nlisten = "127.0.0.1:{port}"\nusername = "{USER}"\n'
        f'password = "{PASSWORD}"\n'))
    daemon = env.daemon(env.a, tunconnector_cmd("run", "-c", str(path)), "server")
    api = Api(env.a.ns, port)
    api.wait_ready()
    # the namespace really is offline: no route beyond the lab's own /24
    routes = env.a.run("ip", "-4", "route", "show").stdout
    assert "default" not in routes, routes
    paths = api.json("GET", "/openapi.json")["paths"]
    want = set(paths)
    assert {"/v1/tunnels/{name}/start", "/vpn/status", "/metrics"} <= want

    dom = dump_dom(env, f"http://127.0.0.1:{port}/docs")
    drawn = {html.unescape(p) for p in re.findall(r'data-path="([^"]*)"', dom)}
    opblocks = len(re.findall(r'class="opblock opblock-', dom))
    assert drawn == want, (
        f"Swagger UI drew {len(drawn)} of {len(want)} paths, {opblocks} opblocks; "
        f"missing {sorted(want - drawn)[:5]}\nDOM: {dom[:1500]}\n{daemon.log()}")
    # one block per operation (several paths have two methods)
    operations = sum(len(methods) for methods in paths.values())
    assert opblocks == operations, (opblocks, operations)
    # credentials are configured, yet the page loaded: its assets need none, as /docs
    status, _, _ = api.request("POST", "/v1/tunnels/vpn/stop")
    assert status == 401
    assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
