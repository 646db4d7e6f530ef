"""ICMP echo through real namespaces: ping socket and raw socket, IPv4 and IPv6."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tunconnector.io.icmp import Pinger

pytestmark = [pytest.mark.privileged, pytest.mark.netns]


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


@pytest.fixture
def pair() -> Iterator[tuple[str, str]]:
    """Two namespaces joined by veth: a=10.77.0.1 fd77::1, b=10.77.0.2 fd77::2."""
    if os.geteuid() != 0:
        pytest.skip("needs root (netns)")
    sfx = secrets.token_hex(3)
    a, b = f"icA{sfx}", f"icB{sfx}"
    va, vb = f"ica{sfx}", f"icb{sfx}"
    _sh("ip", "netns", "add", a)
    _sh("ip", "netns", "add", b)
    try:
        _sh("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
        for ns, dev, n in ((a, va, 1), (b, vb, 2)):
            _sh("ip", "-n", ns, "addr", "add", f"10.77.0.{n}/24", "dev", dev)
            _sh("ip", "-n", ns, "addr", "add", f"fd77::{n}/64", "dev", dev, "nodad")
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        subprocess.run(["ip", "netns", "del", a], capture_output=True, timeout=20)
        subprocess.run(["ip", "netns", "del", b], capture_output=True, timeout=20)


def _allow_ping_sockets(ns: str) -> None:
    _sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")


@pytest.mark.parametrize(
    "family,target", [(socket.AF_INET, "10.77.0.2"), (socket.AF_INET6, "fd77::2")]
)
@pytest.mark.parametrize("kind", ["dgram", "raw"])
async def test_echo_answered(pair: tuple[str, str], kind: str, family: int, target: str) -> None:
    a, _b = pair
    if kind == "dgram":
        _allow_ping_sockets(a)
    with Pinger(family, kind=kind, netns=a) as p:  # type: ignore[arg-type]
        assert p.kind == kind
        rtts = [await p.ping(target, timeout=2.0) for _ in range(3)]
    assert all(r is not None and 0 < r < 2.0 for r in rtts), rtts


async def test_auto_falls_back_to_raw_when_ping_sockets_forbidden(pair: tuple[str, str]) -> None:
    a, _b = pair
    _sh("ip", "netns", "exec", a, "sysctl", "-qw", "net.ipv4.ping_group_range=1 0")
    with Pinger(socket.AF_INET, netns=a) as p:
        assert p.kind == "raw"
        assert await p.ping("10.77.0.2", timeout=2.0) is not None


async def test_auto_prefers_ping_socket(pair: tuple[str, str]) -> None:
    a, _b = pair
    _allow_ping_sockets(a)
    with Pinger(socket.AF_INET, netns=a) as p:
        assert p.kind == "dgram"


@pytest.mark.parametrize("kind", ["dgram", "raw"])
async def test_unanswered_times_out(pair: tuple[str, str], kind: str) -> None:
    a, _b = pair
    _allow_ping_sockets(a)
    loop = asyncio.get_running_loop()
    with Pinger(socket.AF_INET, kind=kind, netns=a) as p:  # type: ignore[arg-type]
        t0 = loop.time()
        # on-link but absent (ARP fails) and off-link without route: both are "lost"
        assert await p.ping("10.77.0.99", timeout=0.3) is None
        assert await p.ping("192.0.2.1", timeout=0.3) is None
        assert loop.time() - t0 < 2.0


async def test_concurrent_probes_are_matched(pair: tuple[str, str]) -> None:
    a, _b = pair
    with Pinger(socket.AF_INET, kind="raw", netns=a) as p:
        results = await asyncio.gather(*(p.ping("10.77.0.2", timeout=2.0) for _ in range(30)))
        assert all(r is not None for r in results)
        assert p.received == 30


async def test_two_raw_pingers_do_not_steal_replies(pair: tuple[str, str]) -> None:
    a, _b = pair
    with Pinger(socket.AF_INET, kind="raw", netns=a) as p1, Pinger(
        socket.AF_INET, kind="raw", netns=a
    ) as p2:
        r = await asyncio.gather(
            *(p.ping("10.77.0.2", timeout=2.0) for p in (p1, p2) for _ in range(10))
        )
        assert all(x is not None for x in r)
        assert p1.received == 10 and p2.received == 10
