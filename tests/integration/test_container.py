"""The container face for real: the image built from this checkout and run with podman.

A server container and a client container, each in its own network namespace (the lab's
hosts), configured by a mounted TOML file, carry ping and 8 MiB with equal sha256; the
image's HEALTHCHECK passes while the API answers and fails while it does not; the
server drops to the image's ``tunconnector`` user after set-up; ``tunconnector status``
works through ``podman exec``; ``podman stop`` ends each with exit 0 and no device left.

The image comes from ``scripts/container.sh`` (a debootstrap base cached under
``$TUNCONNECTOR_CONTAINER_CACHE``, default /var/cache/tunconnector; wheels built here),
so no registry and no package index is needed inside the build.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Env, to_toml
from netns import ROOT, Host, free_port

# the first test's set-up builds the image: on a fresh machine that includes debootstrap
pytestmark = [pytest.mark.container, pytest.mark.slow, pytest.mark.timeout(1800)]

CACHE = Path(os.environ.get("TUNCONNECTOR_CONTAINER_CACHE", "/var/cache/tunconnector"))
CAPS = ["--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW"]


def podman_env() -> dict[str, str]:
    return dict(os.environ, CONTAINERS_CONF=str(CACHE / "containers.conf"))


def podman(*args: str, check: bool = True,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                         env=podman_env())
    if check and res.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} -> {res.returncode}\n{res.stderr}")
    return res


@pytest.fixture(scope="module")
def image() -> Iterator[str]:
    if shutil.which("podman") is None:
        pytest.skip("needs podman (scripts/setup.sh installs podman, runc, debootstrap)")
    prebuilt = os.environ.get("TUNCONNECTOR_TEST_IMAGE")
    if prebuilt:  # iterate on the tests against an image built by scripts/container.sh
        yield prebuilt
        return
    tag = f"localhost/tunconnector-test:{secrets.token_hex(3)}"
    env = dict(os.environ, TUNCONNECTOR_CONTAINER_CACHE=str(CACHE), PYTHON=sys.executable)
    t0 = time.monotonic()
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "container.sh"), tag],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=1700)
    except BaseException:  # timeout or interrupt: no debootstrap left running
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    assert proc.returncode == 0, out + err
    # the script's own timing line, and ours, for the CI log (pytest -rA / on failure)
    print(err.strip().splitlines()[-1], f"(fixture {time.monotonic() - t0:.0f}s)")
    try:
        yield tag
    finally:
        podman("rmi", "--force", tag, check=False)


class Container:
    def __init__(self, name: str, host: Host) -> None:
        self.name = name
        self.host = host

    def exec(self, *args: str, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name, *args, check=check, timeout=timeout)

    def status(self) -> list[dict[str, Any]]:
        res = self.exec("tunconnector", "status", "--json", check=False)
        try:
            return [t for r in json.loads(res.stdout or "[]") for t in r.get("tunnels", [])]
        except ValueError:
            return []

    def wait_up(self, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            st = self.inspect()
            if st["Status"] != "running":
                raise AssertionError(f"{self.name} is {st['Status']}:\n{self.logs()}")
            tunnels = self.status()
            last = tunnels
            if tunnels and all(t["state"] == "up" for t in tunnels):
                return tunnels[0]
            time.sleep(0.3)
        raise AssertionError(f"{self.name} not up after {timeout}s: {last}\n{self.logs()}")

    def inspect(self) -> dict[str, Any]:
        out = podman("inspect", "--format", "{{json .State}}", self.name).stdout
        return json.loads(out)  # type: ignore[no-any-return]

    def logs(self) -> str:
        res = podman("logs", self.name, check=False)
        return (res.stdout + res.stderr)[-4000:]

    def healthy(self) -> bool:
        return podman("healthcheck", "run", self.name, check=False, timeout=60).returncode == 0


@pytest.fixture
def run(env: Env, image: str) -> Iterator[Any]:
    """``run(host, name, toml, extra_args)`` starts a container in ``host``'s namespace."""
    made: list[str] = []
    tag = secrets.token_hex(3)

    def _run(host: Host, role: str, toml: str, extra: list[str]) -> Container:
        cfg = env.workdir / f"{role}.toml"
        cfg.write_text(toml)
        name = f"tc-{role}-{tag}"
        made.append(name)
        podman(
            "run", "--detach", "--name", name,
            "--network", f"ns:/run/netns/{host.ns}",
            *CAPS, *extra, "--device", "/dev/net/tun",
            "-v", f"{cfg}:/etc/tunconnector/tunconnector.toml:ro",
            image,
        )
        return Container(name, host)

    try:
        yield _run
    finally:
        for name in made:
            podman("rm", "--force", "--time", "5", name, check=False)


def test_two_containers_tunnel(env: Env, run: Any) -> None:
    port = free_port()
    server_toml = to_toml([{
        "name": "ct", "mode": "server", "device": "tcct0", "address": "10.88.0.1/24",
        "port": port, "keepalive": 1.0, "dead_after": 10.0,
    }], extra='[api]\nlisten = "127.0.0.1:8000"\n\n[privileges]\nuser = "tunconnector"\n')
    client_toml = to_toml([{
        "name": "ct", "mode": "client", "device": "tcct1", "address": "10.88.0.2/24",
        "remote": env.lab.a_addrs[0], "remote_port": port, "keepalive": 1.0,
        "dead_after": 10.0,
    }])
    server = run(env.a, "server", server_toml, ["--cap-add", "SETUID", "--cap-add", "SETGID"])
    client = run(env.b, "client", client_toml, [])

    # `tunconnector status` through `podman exec`, in both containers
    st = server.wait_up()
    assert st["device"] == "tcct0" and st["mode"] == "server"
    assert client.wait_up()["peer"] == f"{env.lab.a_addrs[0]}:{port}"

    # ping both ways through the tunnel, then 8 MiB with equal digests
    assert env.b.ping("10.88.0.1", count=5, interval=0.2) == (5, 5), client.logs()
    assert env.a.ping("10.88.0.2", count=5, interval=0.2) == (5, 5), server.logs()
    want, have, _ = env.transfer(env.b, env.a, "10.88.0.1", nbytes=8 << 20, port=free_port())
    assert want == have

    # the server left root after set-up: every thread of its pid 1 runs as the image's user
    pid = server.inspect()["Pid"]
    for task in Path(f"/proc/{pid}/task").iterdir():
        uids = (task / "status").read_text().split("Uid:")[1].split("\n")[0].split()
        assert uids == ["10001"] * 4, (task.name, uids)
    client_pid = client.inspect()["Pid"]
    assert Path(f"/proc/{client_pid}/status").read_text().split("Uid:")[1].split()[0] == "0"

    # HEALTHCHECK: passes while the API answers; fails while the daemon (and so its API)
    # is frozen; passes again once it runs; the client has no [api] so it never passes
    assert server.healthy(), server.logs()
    os.kill(pid, signal.SIGSTOP)
    try:
        assert not server.healthy()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert server.healthy(), server.logs()
    assert not client.healthy()

    # podman stop: SIGTERM, a clean exit 0, and the devices are gone
    for c, dev in ((client, "tcct1"), (server, "tcct0")):
        podman("stop", "--time", "20", c.name, timeout=60)
        state = c.inspect()
        assert state["ExitCode"] == 0, (c.name, state["ExitCode"], c.logs())
        assert c.host.run("ip", "link", "show", dev, check=False).returncode != 0
    assert "dropped privileges to tunconnector" in server.logs()


def test_image_is_small_and_clean(image: str) -> None:
    """No compilers, no pip or apt caches, no pip in the app's venv; size reported."""
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    hc = json.loads(podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}",
                           image).stdout)
    assert hc and hc["Test"][0] == "CMD" and "TUNCONNECTOR_HEALTH_URL" in hc["Test"][-1]
    probe = (
        "import json, os, shutil; print(json.dumps({"
        "'tools': [t for t in ('gcc', 'cc', 'make', 'pip', 'pip3') if shutil.which(t)], "
        "'caches': [p for p in ('/root/.cache', '/wheels', '/src') if os.path.exists(p)], "
        "'apt_lists': len(os.listdir('/var/lib/apt/lists')) "
        "if os.path.isdir('/var/lib/apt/lists') else 0, "
        "'user': __import__('pwd').getpwnam('tunconnector').pw_uid}))"
    )
    res = podman("run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", probe)
    got = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"image {image}: {size / 1e6:.0f} MB", got)
    assert got == {"tools": [], "caches": [], "apt_lists": 0, "user": 10001}
    assert size < 250e6, f"image grew to {size / 1e6:.0f} MB"


def readme_container_commands() -> str:
    """The ``sh`` block of the README's "Container" section."""
    section = (ROOT / "README.md").read_text().split("\n## Container\n", 1)[1]
    return section.split("```sh\n", 1)[1].split("\n```", 1)[0]


def test_readme_container_section_runs_as_written(image: str) -> None:
    """The README's container commands run here as written. Only the first one, the
    image build (``scripts/container.sh``), is the fixture's own run of that script, and
    only the image's tag differs (a test must not replace an operator's image)."""
    lines = readme_container_commands().splitlines()
    assert lines[0].startswith("bash scripts/container.sh"), lines[0]
    script = "\n".join(lines[1:])
    assert script.count("localhost/tunconnector\n") == 1
    script = script.replace("localhost/tunconnector\n", f"{image}\n")
    try:
        res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    finally:
        podman("rm", "--force", "tcdemo", check=False)
        subprocess.run(["ip", "netns", "del", "tcdemo"], capture_output=True)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    lines = res.stdout.splitlines()
    assert "healthy" in lines, out  # the echo after the healthcheck loop
    # `tunconnector status` inside the container names the daemon and the demo tunnel as
    # configured (a server without a client yet: down), ...
    assert re.search(r"^daemon pid \d+ \(v\S+\)$", res.stdout, re.M), out
    assert re.search(r"^  demo +down +server +\S+.* dev tcdemo0 10\.99\.0\.1/24 peer -$",
                     res.stdout, re.M), out
    # ... and `ip addr show` the device the container made, with its address
    assert re.search(r"^\d+: tcdemo0: .*\n(?:.*\n)*? +inet 10\.99\.0\.1/24 ", res.stdout,
                     re.M), out
