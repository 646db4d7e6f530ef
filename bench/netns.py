"""Two network namespaces joined by a veth pair, with unique names, always torn down."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field

UNDERLAY_A = "192.168.77.1"
UNDERLAY_B = "192.168.77.2"
UNDERLAY_PREFIX = 24


def sh(args: Sequence[str], *, check: bool = True, timeout: float = 20.0,
       capture: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command with a bound timeout; raise with its stderr when it fails."""
    p = subprocess.run(list(args), capture_output=capture, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} -> {p.returncode}: {p.stderr.strip()}")
    return p


@dataclass
class Topology:
    """``ns_a`` (client side) and ``ns_b`` (server side) over one veth pair."""

    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    mtu: int = 1500

    @property
    def ns_a(self) -> str:
        return f"tcbA{self.suffix}"

    @property
    def ns_b(self) -> str:
        return f"tcbB{self.suffix}"

    @property
    def veth_a(self) -> str:
        return f"tva{self.suffix}"

    @property
    def veth_b(self) -> str:
        return f"tvb{self.suffix}"

    def name(self, stem: str) -> str:
        """A device name unique to this run (<= 15 bytes)."""
        n = f"{stem}{self.suffix}"
        if len(n) > 15:
            raise ValueError(f"interface name {n!r} too long")
        return n

    def up(self) -> None:
        sh(["ip", "netns", "add", self.ns_a])
        sh(["ip", "netns", "add", self.ns_b])
        sh(["ip", "link", "add", self.veth_a, "mtu", str(self.mtu), "type", "veth",
            "peer", "name", self.veth_b, "mtu", str(self.mtu)])
        sh(["ip", "link", "set", self.veth_a, "netns", self.ns_a])
        sh(["ip", "link", "set", self.veth_b, "netns", self.ns_b])
        for ns, dev, addr in ((self.ns_a, self.veth_a, UNDERLAY_A),
                              (self.ns_b, self.veth_b, UNDERLAY_B)):
            sh(["ip", "-n", ns, "addr", "add", f"{addr}/{UNDERLAY_PREFIX}", "dev", dev])
            sh(["ip", "-n", ns, "link", "set", dev, "up"])
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])

    def down(self) -> None:
        for ns in (self.ns_a, self.ns_b):
            sh(["ip", "netns", "del", ns], check=False)

    def exec_args(self, ns: str, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", ns, *args]

    def run(self, ns: str, args: Sequence[str], *, check: bool = True,
            timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return sh(self.exec_args(ns, args), check=check, timeout=timeout)

    def __enter__(self) -> Topology:
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()
