"""A restarted hub gets its clients back at once; a client that stops is down at once."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Daemon  # noqa: E402
from hublab import (  # noqa: E402
    hub_lab,
    peer,
    query,
    wait_client_address,
    wait_peer_handshake,
    wait_peers_up,
)
from netns import LivePing, free_port, wait_for  # noqa: E402
from test_hub import hub_config  # noqa: E402

pytestmark = pytest.mark.slow

#: the default keepalive: without help, clients notice a restarted hub only once their
#: data stayed unanswered for keepalive + 5 = 15 s
KEEPALIVE = 10.0


def wait_log(d: Daemon, text: str, timeout: float) -> float:
    """time.time() once ``text`` is in the daemon's log (polled every 20 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in d.log():
            return time.time()
        if d.proc is not None and d.proc.poll() is not None:
            raise AssertionError(f"{d.name} exited:\n{d.log()}")
        time.sleep(0.02)
    raise AssertionError(f"no {text!r} in {d.name}'s log:\n{d.log()}")


def first_reply_after(ping: LivePing, t: float) -> float:
    return min(ts for ts, _ in ping.replies if ts > t)


def test_hub_restart_resumes_clients_and_a_stopped_client_is_down_at_once() -> None:
    with hub_lab(2) as lab:
        port = free_port()
        peers = [{"name": "site-a", "public_key": lab.keys[0][1], "address": "10.220.0.50"},
                 {"name": "site-b", "public_key": lab.keys[1][1]}]
        # the hub would call a silent peer dead only after 30 s
        cfg = hub_config(lab, port, c2c=False, peers=peers, dead_after=30.0)
        hub = lab.daemon(lab.hub, cfg, "hub")
        clients = [lab.client(i, port=port, keepalive=KEEPALIVE) for i in range(2)]
        wait_peers_up(hub, ["site-a", "site-b"])
        for i in range(2):
            wait_client_address(lab.clients[i], f"hc{i}", "10.220.0.")
        pings = [LivePing(c, "10.220.0.1", interval=0.05) for c in lab.clients]
        try:
            for p in pings:
                assert p.wait_reply_after(0, timeout=30), p.output[-5:]
            # 1. the hub crashes and comes back with its keys and leases, no sessions
            hub.kill9()
            hub = lab.daemon(lab.hub, cfg, "hub2")
            started = wait_log(hub, "hub hub started", timeout=60)
            for p in pings:
                assert p.wait_reply_after(started, timeout=40), (p.output[-5:], hub.log())
            resumed = [first_reply_after(p, started) - started for p in pings]
        finally:
            for p in pings:
                p.stop()
        st = query(hub) or {}
        print(f"hub restart: clients answered {[round(r, 2) for r in resumed]} s after the "
              f"hub started; hub drops {st.get('drops')}")
        # 2. site-b stops cleanly: the hub marks it down at once, not after dead_after
        assert peer(hub, "site-b")["state"] == "up"
        t0 = time.monotonic()
        clients[1].stop()
        down = wait_for(lambda: peer(hub, "site-b")["state"] == "down", timeout=15.0,
                        interval=0.1)
        took = time.monotonic() - t0
        print(f"client exit: site-b down on the hub {took:.2f} s after SIGTERM" if down
              else "client exit: site-b still up on the hub 15 s after SIGTERM")
        assert max(resumed) <= 3.0, resumed
        assert st["drops"].get("reset_sent", 0) >= 2, st["drops"]
        assert down and took <= 5.0, (took, peer(hub, "site-b"), hub.log())
        assert "site-b down: it said it stops" in hub.log()
        assert peer(hub, "site-a")["state"] == "up"
        assert lab.clients[0].ping("10.220.0.1", count=3, interval=0.2) == (3, 3)
        # ... and comes back with a new session when it starts again
        handshakes = peer(hub, "site-b")["handshakes"]
        lab.client(1, port=port, keepalive=KEEPALIVE, name="client1b")
        wait_peer_handshake(hub, "site-b", after=handshakes)
        wait_client_address(lab.clients[1], "hc1", "10.220.0.")
        assert lab.clients[1].wait_ping("10.220.0.1", timeout=20)
