"""Test hosts as network namespaces joined by veth pairs (iproute2 for the test fixture only).

Every name carries a random suffix so concurrent test runs never collide; everything is
removed on exit. The daemon under test never shells out; the fixtures do, because they
play the role of the operator building a lab.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: the environment whose ``tunconnector`` the tests drive: the interpreter running them
#: (wherever it is installed), or another build's bin directory when set
VENV_BIN = Path(os.environ.get("TUNCONNECTOR_VENV_BIN") or Path(sys.executable).parent)


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True, timeout=timeout)


def can_netns() -> str | None:
    """None when namespaces + veth work here, else the reason to skip."""
    if os.geteuid() != 0:
        return "needs root (CAP_NET_ADMIN) for network namespaces"
    if not shutil.which("ip"):
        return "needs iproute2 (ip)"
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun"
    return None


@dataclass
class Host:
    ns: str

    def run(self, *args: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.ns, *args], check=check,
                              capture_output=True, text=True, timeout=timeout, input=input)

    def popen(self, *args: str, **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(["ip", "netns", "exec", self.ns, *args], **kw)  # type: ignore[call-overload,no-any-return]

    def ping(self, target: str, count: int = 5, interval: float = 0.2,
             timeout: float = 30, size: int | None = None) -> tuple[int, int]:
        """(sent, received)."""
        cmd = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2"]
        if size is not None:
            cmd += ["-s", str(size)]
        res = self.run(*cmd, target, check=False, timeout=timeout)
        for line in res.stdout.splitlines():
            if "packets transmitted" in line:
                parts = line.split(",")
                return int(parts[0].split()[0]), int(parts[1].split()[0])
        return 0, 0  # ping sent nothing (no route, bad arguments): never "count sent"

    def wait_ping(self, target: str, timeout: float = 10.0) -> bool:
        """Poll until one echo gets through (bounded); used after faults."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            res = self.run("ping", "-n", "-c", "1", "-W", "1", target, check=False, timeout=5)
            if res.returncode == 0:
                return True
        return False


class LivePing:
    """``ping -D`` at ``interval`` until stopped, its replies read as they come (time on
    this machine's clock, icmp_seq): for "the echoes went on while X happened" checks."""

    def __init__(self, host: Host, target: str, interval: float = 0.05) -> None:
        self.proc = host.popen("stdbuf", "-oL", "ping", "-D", "-n", "-i", str(interval),
                               "-W", "2", target, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
        self.replies: list[tuple[float, int]] = []
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # type: ignore[attr-defined]
            self.output.append(line)
            if line.startswith("[") and "icmp_seq=" in line and "bytes from" in line:
                ts = float(line[1:line.index("]")])
                seq = int(line.split("icmp_seq=")[1].split()[0])
                self.replies.append((ts, seq))

    def wait_reply_after(self, t: float, timeout: float = 10.0) -> bool:
        """Until an echo sent after ``t`` (time.time()) was answered."""
        return wait_for(lambda: bool(self.replies) and self.replies[-1][0] > t, timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(10)

    def missing(self) -> list[int]:
        """Echo numbers unanswered between the first and the last answered one."""
        got = {seq for _, seq in self.replies}
        return [s for s in range(min(got), max(got) + 1) if s not in got] if got else []

    def answered_between(self, t0: float, t1: float) -> int:
        return sum(1 for ts, _ in self.replies if t0 <= ts <= t1)


@dataclass
class Lab:
    """Two hosts ``a`` and ``b`` joined by one or more veth pairs."""

    tag: str
    a: Host
    b: Host
    links: list[tuple[str, str]] = field(default_factory=list)  # (a-side, b-side) names
    a_addrs: list[str] = field(default_factory=list)
    b_addrs: list[str] = field(default_factory=list)

    def link_down(self, i: int = 0) -> None:
        self.a.run("ip", "link", "set", self.links[i][0], "down")

    def link_up(self, i: int = 0) -> None:
        self.a.run("ip", "link", "set", self.links[i][0], "up")


@contextlib.contextmanager
def lab(n_links: int = 1, ipv6: bool = False) -> Iterator[Lab]:
    tag = secrets.token_hex(3)
    a, b = Host(f"tca{tag}"), Host(f"tcb{tag}")
    made: list[str] = []
    try:
        for h in (a, b):
            sh("ip", "netns", "add", h.ns)
            made.append(h.ns)
            h.run("ip", "link", "set", "lo", "up")
        lb = Lab(tag, a, b)
        for i in range(n_links):
            va, vb = f"va{i}{tag}", f"vb{i}{tag}"
            sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
            sh("ip", "link", "set", va, "netns", a.ns)
            sh("ip", "link", "set", vb, "netns", b.ns)
            net = 100 + i
            a4, b4 = f"192.168.{net}.1", f"192.168.{net}.2"
            a.run("ip", "addr", "add", f"{a4}/24", "dev", va)
            b.run("ip", "addr", "add", f"{b4}/24", "dev", vb)
            if ipv6:
                a.run("ip", "addr", "add", f"fd00:{net}::1/64", "dev", va, "nodad")
                b.run("ip", "addr", "add", f"fd00:{net}::2/64", "dev", vb, "nodad")
            a.run("ip", "link", "set", va, "up")
            b.run("ip", "link", "set", vb, "up")
            lb.links.append((va, vb))
            lb.a_addrs.append(a4)
            lb.b_addrs.append(b4)
        yield lb
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def tunconnector_cmd(*args: str) -> list[str]:
    """The CLI of the environment under test: ``python -m tunconnector`` of the running
    interpreter (no checkout ``.venv`` assumed), or ``$TUNCONNECTOR_VENV_BIN/tunconnector``."""
    if os.environ.get("TUNCONNECTOR_VENV_BIN"):
        return [str(VENV_BIN / "tunconnector"), *args]
    return [sys.executable, "-m", "tunconnector", *args]


def wait_for(predicate: object, timeout: float = 10.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return False


def free_port() -> int:
    return 20000 + secrets.randbelow(20000)


def argv_str(argv: Sequence[str]) -> str:
    return " ".join(argv)
