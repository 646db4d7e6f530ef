"""Fault injection: kill -9 and restart, garbage at the port, underlay link down/up."""

from __future__ import annotations

import time

import pytest
from harness import PY, Env
from netns import LivePing
from test_core import pair


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_client_kill9_restart_resumes_within_5s(env: Env, proto: str) -> None:
    server, client = pair(env, "tun", proto, "native")
    client.wait_state("up")  # type: ignore[attr-defined]
    assert env.b.ping("10.77.0.1", count=3, interval=0.1) == (3, 3)
    client.kill9()  # type: ignore[attr-defined]
    restarted = env.daemon(env.b, client.argv, "client2")  # type: ignore[attr-defined]
    t0 = time.monotonic()
    assert env.b.wait_ping("10.77.0.1", timeout=5.0), restarted.log()
    took = time.monotonic() - t0
    print(f"{proto}: traffic resumed {took:.2f}s after restart")
    assert took < 5.0


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_server_restart_recovers(env: Env, proto: str) -> None:
    server, client = pair(env, "tun", proto, "native")
    client.wait_state("up")  # type: ignore[attr-defined]
    server.kill9()  # type: ignore[attr-defined]
    env.daemon(env.a, server.argv, "server2")  # type: ignore[attr-defined]
    t0 = time.monotonic()
    assert env.b.wait_ping("10.77.0.1", timeout=8.0)
    print(f"{proto}: traffic resumed {time.monotonic() - t0:.2f}s after server restart")


def test_garbage_datagrams_do_not_interrupt_ping(env: Env) -> None:
    server, client = pair(env, "tun", "udp", "native")
    client.wait_state("up")  # type: ignore[attr-defined]
    # pings all through the garbage: answered before it starts and after it ended
    ping = LivePing(env.b, "10.77.0.1", interval=0.01)
    # 10,000 garbage datagrams of random sizes, including well-formed-looking headers,
    # from a third socket on host B at the server's port; prints when it sent the first
    # and the last
    script = (
        "import os,random,socket,time\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "r=random.Random(3)\n"
        "print(repr(time.time()))\n"
        "for i in range(10000):\n"
        "    n=r.randint(0,1600)\n"
        "    d=os.urandom(n)\n"
        "    if i%3==0 and n>=16: d=b'\\x01'+bytes([r.choice([1,2,6,7,16,17,18,32])])+d[2:]\n"
        f"    s.sendto(d,('{env.lab.a_addrs[0]}',55556))\n"
        "print(repr(time.time()))\n"
    )
    try:
        assert ping.wait_reply_after(0, timeout=30), ping.output
        first, last = map(float, env.b.run(PY, "-c", script, timeout=60).stdout.split())
        assert ping.wait_reply_after(last + 0.5, timeout=30), ping.output[-5:]
    finally:
        ping.stop()
    assert ping.replies[0][0] < first, (ping.replies[:3], first)
    print(f"garbage for {last - first:.3f}s; echoes answered meanwhile: "
          f"{ping.answered_between(first, last)}, in all {len(ping.replies)}")
    assert ping.missing() == [], (ping.missing(), ping.output[-5:])  # not one echo lost
    st = server.tunnel()  # type: ignore[attr-defined]
    assert st["state"] == "up" and st["peer"].startswith(env.lab.b_addrs[0])
    assert sum(st["drops"].values()) >= 9000, st["drops"]
    print("drops:", st["drops"])


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_underlay_down_3s_recovers(env: Env, proto: str) -> None:
    server, client = pair(env, "tun", proto, "native")
    client.wait_state("up")  # type: ignore[attr-defined]
    env.lab.link_down()
    time.sleep(3.0)  # the fault itself lasts 3 s by definition of the test
    env.lab.link_up()
    t0 = time.monotonic()
    assert env.b.wait_ping("10.77.0.1", timeout=15.0), client.log()  # type: ignore[attr-defined]
    print(f"{proto}: recovered {time.monotonic() - t0:.2f}s after link up")
    assert client.tunnel()["state"] == "up"  # type: ignore[attr-defined]


def test_tcp_bad_length_closes_and_reconnects(env: Env) -> None:
    """A stream with a bad length is dropped; the real client keeps its tunnel."""
    server, client = pair(env, "tun", "tcp", "simpletun")
    client.wait_state("up")  # type: ignore[attr-defined]
    # the server closes the bad stream: the script waits for that (EOF or reset)
    script = (
        "import socket\n"
        f"c=socket.create_connection(('{env.lab.a_addrs[0]}',55556))\n"
        "c.sendall(b'\\x00\\x00garbage')\n"
        "c.settimeout(20)\n"
        "try:\n"
        "    print('closed' if c.recv(1) == b'' else 'data')\n"
        "except ConnectionResetError:\n"
        "    print('closed')\n"
    )
    assert env.b.run(PY, "-c", script, timeout=30).stdout.strip() == "closed"
    assert env.b.wait_ping("10.77.0.1", timeout=10.0)
    st = server.tunnel()  # type: ignore[attr-defined]
    assert st["drops"].get("bad_length", 0) >= 1, st


def test_oversize_and_truncated_native_tcp(env: Env) -> None:
    server, client = pair(env, "tun", "tcp", "native")
    client.wait_state("up")  # type: ignore[attr-defined]
    script = (
        "import socket\n"
        f"c=socket.create_connection(('{env.lab.a_addrs[0]}',55556))\n"
        "c.sendall((10**7).to_bytes(4,'big')+b'x'*100)\n"
        "c.close()\n"
        f"c=socket.create_connection(('{env.lab.a_addrs[0]}',55556))\n"
        "c.sendall((500).to_bytes(4,'big')+b'\\x01\\x01'+b'x'*20)\n"
        "c.close()\n"
    )
    env.b.run(PY, "-c", script, timeout=30)
    assert env.b.ping("10.77.0.1", count=5, interval=0.1) == (5, 5)
    drops = server.tunnel()["drops"]  # type: ignore[attr-defined]
    assert drops.get("bad_length", 0) >= 1 and drops.get("truncated", 0) >= 1, drops
