"""A connected twin socket takes its peer's datagrams off the shared one (loopback)."""

from __future__ import annotations

import socket
from collections import Counter

import pytest

from tunconnector.io.udp import open_connected_twin, open_udp, socket_drops


def test_twin_gets_its_peer_and_only_its_peer() -> None:
    main = open_udp(bind="127.0.0.1", port=0, family=socket.AF_INET)
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    twin = open_connected_twin(main, a.getsockname(), rcvbuf=4096)
    try:
        twin.settimeout(2)
        main.settimeout(2)
        a.sendto(b"from a", main.getsockname())
        b.sendto(b"from b", main.getsockname())
        assert twin.recv(100) == b"from a"
        assert main.recvfrom(100) == (b"from b", b.getsockname())
        # a flood from a overflows the twin's small queue, not the shared one
        for _ in range(2000):
            a.sendto(bytes(512), main.getsockname())
        b.sendto(b"still here", main.getsockname())
        assert main.recvfrom(100)[0] == b"still here"
        assert socket_drops(twin) > 0
        assert socket_drops(main) == 0
    finally:
        for s in (twin, main, a, b):
            s.close()


def test_twin_on_a_dual_stack_socket_takes_a_v4_peer() -> None:
    main = open_udp(bind=None, port=0, family=socket.AF_INET6)  # "::", as a hub's
    if main.family != socket.AF_INET6:  # no IPv6 here
        main.close()
        return
    port = main.getsockname()[1]
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind(("127.0.0.1", 0))
    b.bind(("127.0.0.1", 0))
    twin = open_connected_twin(main, ("::ffff:127.0.0.1", a.getsockname()[1], 0, 0))
    try:
        twin.settimeout(2)
        main.settimeout(2)
        a.sendto(b"from a", ("127.0.0.1", port))
        b.sendto(b"from b", ("127.0.0.1", port))
        data, addr = twin.recvfrom(100)
        assert data == b"from a" and addr[1] == a.getsockname()[1]
        assert main.recvfrom(100)[0] == b"from b"
    finally:
        for s in (twin, main, a, b):
            s.close()


def _closed_port() -> tuple[str, int]:
    """A loopback port nobody listens on: the kernel answers port unreachable."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    remote: tuple[str, int] = probe.getsockname()
    probe.close()
    return remote


def test_a_connected_socket_is_read_again_after_an_icmp_error() -> None:
    """uvloop (libuv) stops polling a descriptor that reported an error: a connected
    socket reports the ICMP port unreachable of its remote while that is down, and must
    still be read once the remote answers."""
    import asyncio
    import collections

    import uvloop

    from tunconnector.io.udp import UdpEndpoint

    async def scenario() -> tuple[list[bytes], int]:
        remote = _closed_port()
        ep = UdpEndpoint(open_udp(bind="127.0.0.1", port=0, family=socket.AF_INET),
                         collections.Counter())
        ep.connect(remote)
        got: list[bytes] = []
        arrived = asyncio.Event()

        def on_batch(batch: list[tuple[bytes, tuple[object, ...]]]) -> None:
            got.extend(bytes(d) for d, _ in batch)
            arrived.set()

        ep.start(on_batch)
        ep.sendto(b"hello?", remote)
        for _ in range(100):  # the error surfaces at the reader (or at the next send)
            if ep.drops:
                break
            await asyncio.sleep(0.01)
        server = open_udp(bind=remote[0], port=remote[1], family=socket.AF_INET)
        try:
            server.sendto(b"answer", ep.local_address)
            await asyncio.wait_for(arrived.wait(), 2)
        finally:
            server.close()
            ep.close()
        return got, sum(ep.drops.values())

    got, errors = uvloop.run(scenario())
    assert got == [b"answer"]
    assert errors >= 1


def test_enable_offload_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from tunconnector.io.udp import UdpEndpoint

    for env in ("off", ""):
        monkeypatch.setenv("TUNCONNECTOR_OFFLOAD", env)
        sock = open_udp(bind="127.0.0.1", port=0, family=socket.AF_INET)
        ep = UdpEndpoint(sock, Counter())
        try:
            off = ep.enable_offload(runs=True)
            assert (ep.gso, ep.gro, ep.runs) == (off.gso, off.gro, True)
            if env == "off":
                assert not off.gso and not off.gro
                assert "udp_gso=off udp_gro=off" == off.describe()
        finally:
            ep.close()


def test_port_unreachable_is_counted_apart_from_read_errors() -> None:
    """A peer whose port has no listener yet (both ends starting at once) answers with an
    ICMP port unreachable: counted as ``peer_unreachable``, not as a read error."""
    import collections
    import time

    from tunconnector.io.udp import UdpEndpoint

    remote = _closed_port()
    ep = UdpEndpoint(open_udp(bind="127.0.0.1", port=0, family=socket.AF_INET),
                     collections.Counter())
    try:
        ep.connect(remote)
        ep.sendto(b"hello?", remote)
        deadline = time.monotonic() + 2
        while not ep.drops and time.monotonic() < deadline:
            ep.drain([])  # the pending ICMP error is what this read returns
            time.sleep(0.01)  # loopback ICMP: no event to wait on without a loop
    finally:
        ep.close()
    assert ep.drops == {"peer_unreachable": 1}, ep.drops
