"""A hub lab: one hub namespace and N client namespaces, each joined to the hub by veth.

Client i reaches the hub at 172.30.i.1 over its own veth (172.30.i.2 on its side). The
hub daemon and client daemons are real ``tunconnector run`` processes; keys are fresh
per lab. Names carry a random suffix; everything is removed on exit.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import Daemon  # noqa: E402
from netns import Host, sh  # noqa: E402

from tunconnector.keys import generate_keypair, write_key_file  # noqa: E402


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tunconnector", *args]


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def hub_toml(tunnel: dict[str, Any], peers: list[dict[str, Any]], extra: str = "") -> str:
    out = ["[[tunnel]]"] + [f"{k} = {toml_value(v)}" for k, v in tunnel.items()]
    for p in peers:
        out.append("[[tunnel.peer]]")
        out += [f"{k} = {toml_value(v)}" for k, v in p.items()]
    return extra + "\n" + "\n".join(out) + "\n"


class HubLab:
    def __init__(self, tag: str, n: int, workdir: Path) -> None:
        self.tag = tag
        self.hub = Host(f"tch{tag}")
        self.clients = [Host(f"tc{i}{tag}") for i in range(n)]
        self.workdir = workdir
        self.daemons: list[Daemon] = []
        self.hub_priv = workdir / "hub.key"
        priv, self.hub_pub = generate_keypair()
        write_key_file(self.hub_priv, priv)
        self.keys: list[tuple[Path, str]] = []
        for i in range(n + 2):  # spares for peers added later
            path = workdir / f"c{i}.key"
            priv, pub = generate_keypair()
            write_key_file(path, priv)
            self.keys.append((path, pub))

    def underlay(self, i: int) -> str:
        return f"172.30.{i + 1}.1"

    def daemon(self, host: Host, config: str, name: str) -> Daemon:
        path = self.workdir / f"{name}.toml"
        path.write_text(config)
        d = Daemon(host, cli("run", "-c", str(path)), self.workdir, name)
        d.start()
        self.daemons.append(d)
        return d

    def client(self, i: int, *, port: int, dev_type: str = "tun", address: str | None = None,
               name: str | None = None, keepalive: float = 1.0,
               offload: str = "off") -> Daemon:
        key, _ = self.keys[i]
        t: dict[str, Any] = {
            "name": "c", "mode": "client", "device": f"hc{i}", "dev_type": dev_type,
            "remote": self.underlay(i), "remote_port": port, "private_key_file": str(key),
            "peer_public_key": self.hub_pub, "keepalive": keepalive,
            "dead_after": keepalive * 6, "offload": offload,
        }
        if address:
            t["address"] = address
        cfg = "[[tunnel]]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in t.items()) + "\n"
        return self.daemon(self.clients[i], cfg, name or f"client{i}")


def query(d: Daemon) -> dict[str, Any] | None:
    """The daemon's (first) tunnel status; a generous timeout: the CLI starts slowly on
    a loaded machine."""
    res = subprocess.run(cli("status", "--json", "--timeout", "20", "--control-dir",
                             str(d.ctl)),
                         capture_output=True, text=True, timeout=60)
    try:
        replies = json.loads(res.stdout or "[]")
    except ValueError:
        return None
    for r in replies:
        for t in r.get("tunnels", []):
            return dict(t)
    return None


def status(d: Daemon) -> dict[str, Any]:
    t = query(d)
    assert t is not None, d.log()
    return t


def peer(d: Daemon, name: str) -> dict[str, Any]:
    for p in status(d).get("peers", []):
        if p["name"] == name:
            return p
    raise AssertionError(f"no peer {name} in {status(d)}")


def wait_peers_up(d: Daemon, names: list[str], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if d.proc is not None and d.proc.poll() is not None:
            raise AssertionError(f"hub exited:\n{d.log()}")
        st = query(d) or {}
        up = {p["name"] for p in st.get("peers", []) if p["state"] == "up"}
        if set(names) <= up:
            return st
        time.sleep(0.1)
    raise AssertionError(f"peers {names} not all up: {st}\n{d.log()}")


def wait_peer_handshake(d: Daemon, name: str, after: int, timeout: float = 60.0) -> None:
    """Until peer ``name`` completed a handshake beyond the ``after`` it had and is up."""
    deadline = time.monotonic() + timeout
    p: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if d.proc is not None and d.proc.poll() is not None:
            raise AssertionError(f"hub exited:\n{d.log()}")
        st = query(d) or {}
        p = next((q for q in st.get("peers", []) if q["name"] == name), {})
        if p.get("handshakes", 0) > after and p.get("state") == "up":
            return
        time.sleep(0.1)
    raise AssertionError(f"peer {name}: no new handshake: {p}\n{d.log()}")


def wait_client_address(host: Host, dev: str, prefix: str, timeout: float = 30.0) -> str:
    """The address the hub assigned, once the client configured it on ``dev``."""
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = host.run("ip", "-j", "addr", "show", "dev", dev, check=False).stdout
        try:
            for link in json.loads(out or "[]"):
                for a in link.get("addr_info", []):
                    if a.get("local", "").startswith(prefix):
                        return str(a["local"])
        except ValueError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"no {prefix}* address on {dev}: {out}")


@contextlib.contextmanager
def hub_lab(n: int = 3) -> Iterator[HubLab]:
    tag = secrets.token_hex(3)
    made: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tc-hub-") as wd:
        lab = HubLab(tag, n, Path(wd))
        try:
            for h in [lab.hub, *lab.clients]:
                sh("ip", "netns", "add", h.ns)
                made.append(h.ns)
                h.run("ip", "link", "set", "lo", "up")
            for i, c in enumerate(lab.clients):
                vh, vc = f"vh{i}{tag}", f"vc{i}{tag}"
                sh("ip", "link", "add", vh, "type", "veth", "peer", "name", vc)
                sh("ip", "link", "set", vh, "netns", lab.hub.ns)
                sh("ip", "link", "set", vc, "netns", c.ns)
                lab.hub.run("ip", "addr", "add", f"172.30.{i + 1}.1/24", "dev", vh)
                c.run("ip", "addr", "add", f"172.30.{i + 1}.2/24", "dev", vc)
                lab.hub.run("ip", "link", "set", vh, "up")
                c.run("ip", "link", "set", vc, "up")
            yield lab
        finally:
            for d in lab.daemons:
                with contextlib.suppress(Exception):
                    d.stop()
            for ns in made:
                pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                      text=True).stdout.split()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
