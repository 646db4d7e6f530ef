"""Lab helpers for integration tests: daemons in namespaces, TOML writing, transfers.

Imported by ``conftest.py`` (fixtures) and by the tests themselves under this unique
module name (two ``conftest`` modules in one run would shadow each other).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netns import ROOT, Host, Lab, tunconnector_cmd, wait_for  # noqa: E402

from tunconnector.io.icmp import in_netns  # noqa: E402

XFER = str(ROOT / "tests" / "tools" / "xfer.py")
PY = sys.executable


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def to_toml(tunnels: list[dict[str, Any]], extra: str = "") -> str:
    out = []
    for t in tunnels:
        out.append("[[tunnel]]")
        for k, v in t.items():
            if isinstance(v, dict):
                continue
            out.append(f"{k} = {toml_value(v)}")
        for k, v in t.items():
            if isinstance(v, dict):
                out.append(f"[tunnel.{k}]")
                out += [f"{kk} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(out) + "\n" + extra


class Daemon:
    """A ``tunconnector`` process inside a namespace, with its own control directory."""

    def __init__(self, host: Host, argv: list[str], workdir: Path, name: str) -> None:
        self.host = host
        self.ctl = workdir / f"ctl-{name}"
        self.log_path = workdir / f"{name}.log"
        self.argv = argv
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        env = dict(os.environ, TUNCONNECTOR_CONTROL_DIR=str(self.ctl))
        self._log = open(self.log_path, "ab")
        self.proc = self.host.popen(*self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                    env=env)
        return self

    def status(self) -> list[dict[str, Any]]:
        res = subprocess.run(
            tunconnector_cmd("status", "--json", "--control-dir", str(self.ctl)),
            # bounded, but generous: on a shared 2-core machine under load 15 the start-up
            # of the CLI alone was seen to take over 10 s
            capture_output=True, text=True, timeout=30,
        )
        try:
            replies = json.loads(res.stdout or "[]")
        except ValueError:
            return []
        return [t for r in replies for t in r.get("tunnels", [])]

    def tunnel(self, name: str | None = None) -> dict[str, Any] | None:
        for t in self.status():
            if name is None or t["name"] == name:
                return t
        return None

    def wait_state(self, state: str = "up", name: str | None = None,
                   timeout: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            last = self.tunnel(name)
            if last is not None and last["state"] == state:
                return last
            time.sleep(0.1)
        raise AssertionError(f"tunnel not {state} after {timeout}s: {last}\n{self.log()}")

    def wait_ready(self, name: str | None = None, timeout: float = 15.0) -> dict[str, Any]:
        """Wait until the tunnel's device and transport are open (state ``down`` or ``up``).

        A raw tunnel has no handshake: ``up`` on one end says nothing about the other end
        having opened its socket yet.
        """
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            last = self.tunnel(name)
            if last is not None and last["state"] in ("down", "up"):
                return last
            time.sleep(0.05)
        raise AssertionError(f"tunnel not ready after {timeout}s: {last}\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class Env:
    """A lab plus the daemons started in it (all torn down by the fixture)."""

    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.a = lab.a
        self.b = lab.b
        self.workdir = workdir
        self.daemons: list[Daemon] = []

    def daemon(self, host: Host, argv: list[str], name: str) -> Daemon:
        d = Daemon(host, argv, self.workdir, name).start()
        self.daemons.append(d)
        return d

    def config_daemon(self, host: Host, tunnels: list[dict[str, Any]], name: str,
                      extra: str = "") -> Daemon:
        path = self.workdir / f"{name}.toml"
        path.write_text(to_toml(tunnels, extra))
        return self.daemon(host, tunconnector_cmd("run", "-c", str(path)), name)

    def transfer(self, src: Host, dst: Host, dst_ip: str, nbytes: int = 32 << 20,
                 port: int = 5201, timeout: float = 120) -> tuple[str, str, float]:
        """Send ``nbytes`` from src to dst_ip through the tunnel; returns both digests + secs."""
        recv = dst.popen(PY, XFER, "recv", str(port), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
        assert recv.stdout is not None
        line = recv.stdout.readline().decode()
        assert "listening" in line, line
        sent = src.run(PY, XFER, "send", dst_ip, str(port), str(nbytes), "7",
                       timeout=timeout)
        out, err = recv.communicate(timeout=timeout)
        got = out.decode().split()
        want = sent.stdout.split()
        assert got, err.decode()
        assert int(got[0]) == nbytes, (got, err)
        return want[1], got[1], float(want[2])


class Api:
    """HTTP client for an API listening on loopback inside a namespace."""

    def __init__(self, ns: str, port: int) -> None:
        self.ns, self.port = ns, port

    def request(self, method: str, path: str, headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        sock = in_netns(self.ns, lambda: socket.create_connection(("127.0.0.1", self.port), 5))
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.sock = sock
        try:
            conn.request(method, path, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, headers: dict[str, str] | None = None) -> Any:
        status, _, body = self.request(method, path, headers)
        assert status == 200, (status, body)
        return json.loads(body)

    def wait_ready(self, timeout: float = 20.0) -> None:
        def up() -> bool:
            try:
                return self.request("GET", "/livez")[0] == 200
            except OSError:
                return False

        assert wait_for(up, timeout, 0.1), "API did not come up"
