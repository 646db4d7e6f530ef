"""A connected twin socket takes its peer's datagrams off the shared one (loopback)."""

from __future__ import annotations

import socket

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
