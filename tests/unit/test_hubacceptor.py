"""The hub's acceptor with two client connections, in memory: no socket, no device, no sleep.

A small hub (:class:`Hub` below) drives :class:`NativeHubAcceptor` as hub.py does: a read
goes to ``receive_batch``, the acceptor's own datagrams (cookies, resets) go back to
their senders, each touched peer is drained and its messages go to its address. Two
:class:`NativeConnection` clients talk to it.
"""

from __future__ import annotations

import base64
import collections
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from test_hubtable import hub_config

from tunconnector.config import PeerConfig
from tunconnector.proto import fragment
from tunconnector.proto.connection import Connected, Notice
from tunconnector.proto.framing import FLAG_ENCRYPTED, HEADER, VERSION, MsgType
from tunconnector.proto.hubacceptor import INIT_BACKLOG, INIT_LEN, NativeHubAcceptor
from tunconnector.proto.hubtable import HubPeer, PeerTable
from tunconnector.proto.liveness import PeerDown, PeerUp
from tunconnector.proto.mactable import MacTable
from tunconnector.proto.native import NativeEndpoint
from tunconnector.proto.native_conn import NativeConnection
from tunconnector.proto.noise import public_bytes
from tunconnector.proto.reset import RESET_LEN
from tunconnector.proto.router import Router
from tunconnector.proto.secure import SecureChannel

HUB = ("192.0.2.1", 51820)
A = ("192.0.2.10", 40000)
A_MOVED = ("198.51.100.7", 41000)
B = ("192.0.2.20", 40000)
STRANGER = ("203.0.113.9", 5555)
FRAME = bytes.fromhex("4500001c0001000040110000c0a80a01c0a80a02") + bytes(8)


class Hub:
    """What hub.py does around the acceptor, minus the sockets."""

    def __init__(self) -> None:
        self.key = X25519PrivateKey.generate()
        self.clients = {"a": X25519PrivateKey.generate(), "b": X25519PrivateKey.generate()}
        cfg = hub_config()
        self.table = PeerTable(cfg, 1400, Router(client_to_client=True), MacTable(), None)
        peers = [PeerConfig(n, base64.b64encode(public_bytes(k)).decode())
                 for n, k in self.clients.items()]
        self.table.apply(peers, lambda pc, where: (base64.b64decode(pc.public_key), None),
                         initial=True)
        self.drops: collections.Counter[str] = collections.Counter()
        self.acc = NativeHubAcceptor(
            self.table, cipher="chacha20-poly1305", cipher_auto=False, keepalive=1.0,
            dead_after=4.0, rekey_after_time=120.0, rekey_after_bytes=1 << 36,
            max_frame=1500, reassembler=fragment.Reassembler(), drops=self.drops)
        self.acc.set_static(self.key.private_bytes_raw())
        self.frames: list[tuple[str, Any]] = []
        self.events: list[tuple[str, Any]] = []
        self.moves: list[tuple[str, Any, Any]] = []

    def peer(self, name: str) -> HubPeer:
        return self.table.peers[name]

    def client(self, name: str) -> NativeConnection:
        hub_public = public_bytes(self.key)
        private = self.clients[name].private_bytes_raw()

        def endpoint() -> NativeEndpoint:
            secure = SecureChannel(initiator=True, private_key=private,
                                   peer_public_key=hub_public)
            return NativeEndpoint(keepalive=1.0, dead_after=4.0, max_frame=1500,
                                  secure=secure)
        return NativeConnection(endpoint, server=False, peer=HUB)

    def receive(self, batch: list[tuple[Any, Any]], now: float) -> list[tuple[bytes, Any]]:
        """One read; what the hub sends back, with the addresses."""
        inbound, touched = self.acc.receive_batch(batch, now)
        self.frames += [(p.name, f) for p, f in inbound]
        out = self.acc.datagrams_to_send()
        self.moves += [(p.name, old, p.raw) for p, old in self.acc.moves()]
        for p in touched:
            msgs, events = self.acc.drain(p)
            out += [(m, p.addr) for m in msgs]
            self.events += [(p.name, ev) for ev in events]
        return out


def exchange(hub: Hub, clients: dict[Any, NativeConnection], now: float) -> None:
    """Move datagrams until all are quiet; ``clients`` by the address each sends from."""
    for _ in range(50):
        n = 0
        for addr, c in clients.items():
            sent = [(d, addr) for d, to in c.datagrams_to_send(now) if to == HUB]
            n += len(sent)
            for d, to in hub.receive(sent, now) if sent else []:
                n += 1
                target = clients.get(to)
                if target is not None:
                    target.receive_datagram(d, HUB, now)
        if not n:
            return
    raise AssertionError("never quiet")


def connected(c: NativeConnection) -> bool:
    return any(isinstance(e, Connected) for e in iter(c.next_event, None))


def handshake(hub: Hub, now: float = 0.0) -> tuple[NativeConnection, NativeConnection]:
    a, b = hub.client("a"), hub.client("b")
    a.start(now)
    b.start(now)
    exchange(hub, {A: a, B: b}, now)
    return a, b


def send(hub: Hub, c: NativeConnection, src: Any, now: float) -> list[tuple[bytes, Any]]:
    c.send_frames([FRAME], now)
    return hub.receive([(d, src) for d, _ in c.datagrams_to_send(now)], now)


def test_handshake_indexes_both_peers_and_data_reaches_its_peer() -> None:
    hub = Hub()
    a, b = handshake(hub)
    assert connected(a) and connected(b)
    pa, pb = hub.peer("a"), hub.peer("b")
    assert hub.acc.by_raw == {A: pa, B: pb}
    assert pa.indices and all(hub.acc.by_index[i] is pa for i in pa.indices)
    assert {n for n, ev in hub.events if isinstance(ev, PeerUp)} == {"a", "b"}
    assert hub.acc.dh == 2
    assert sorted(n for n, _old, _raw in hub.moves) == ["a", "b"]  # first addresses
    send(hub, a, A, 1.0)
    send(hub, b, B, 1.0)
    assert hub.frames == [("a", FRAME), ("b", FRAME)]
    assert hub.acc.connections() == [pa, pb]


def test_roaming_reindexes_once() -> None:
    hub = Hub()
    a, _b = handshake(hub)
    pa = hub.peer("a")
    hub.moves.clear()
    for i in range(3):
        send(hub, a, A_MOVED, 1.0 + i)
    assert hub.moves == [("a", A, A_MOVED)]
    assert hub.acc.by_raw.get(A_MOVED) is pa and A not in hub.acc.by_raw
    assert pa.addr == A_MOVED
    assert [n for n, _ in hub.frames] == ["a"] * 3
    # a forged datagram from elsewhere moves nothing
    hub.receive([(HEADER.pack(VERSION, MsgType.DATA, FLAG_ENCRYPTED, 0,
                              next(iter(pa.indices)), 99) + bytes(40), STRANGER)], 5.0)
    assert pa.raw == A_MOVED and len(hub.moves) == 1


def test_unknown_session_gets_a_rate_limited_reset() -> None:
    hub = Hub()
    a, _b = handshake(hub)
    pa = hub.peer("a")
    hub.acc.end_session(pa)  # as after a restart: the hub knows no session of a
    out = send(hub, a, A, 1.0)
    assert [(len(d), d[1], to) for d, to in out] == [(RESET_LEN, MsgType.SESSION_RESET, A)]
    # the client takes it (its token came in the handshake) and handshakes again
    a.receive_datagram(out[0][0], HUB, 1.0)
    assert any(isinstance(e, Notice) and e.kind == "session_reset"
               for e in iter(a.next_event, None))
    assert any(d[1] == MsgType.HANDSHAKE_INIT for d, _ in a.datagrams_to_send(1.0))
    # a stranger's burst: two per source, then nothing
    junk = HEADER.pack(VERSION, MsgType.DATA, FLAG_ENCRYPTED, 0, 0xDEAD, 1) + bytes(32)
    out = hub.receive([(junk, STRANGER)] * 5, 2.0)
    assert len(out) == 2 and all(to == STRANGER for _, to in out)
    assert hub.drops["unknown_session"] == 1 + 5 and hub.drops["reset_sent"] == 1 + 2


def test_flood_gets_cookies_then_mac2_is_accepted() -> None:
    hub = Hub()
    flood = [(HEADER.pack(VERSION, MsgType.HANDSHAKE_INIT, 0, 0, i + 1, 0)
              + bytes(INIT_LEN - 16), (f"203.0.113.{i}", 9999)) for i in range(INIT_BACKLOG)]
    assert hub.receive(flood, 0.0) == []  # garbage: no MAC, no reply, no DH
    assert hub.drops["bad_mac"] == INIT_BACKLOG and hub.acc.cookies.under_load(0.0)
    b = hub.client("b")
    b.start(0.1)
    (init,) = [d for d, _ in b.datagrams_to_send(0.1)]
    out = hub.receive([(init, B)], 0.1)
    assert [(d[1], to) for d, to in out] == [(MsgType.COOKIE_REPLY, B)]
    assert hub.drops["cookie_sent"] == 1 and hub.acc.dh == 0
    b.receive_datagram(out[0][0], HUB, 0.1)  # takes the cookie, initiates again with mac2
    exchange(hub, {B: b}, 0.1)
    assert connected(b)
    assert hub.acc.dh == 1 and hub.acc.by_raw.get(B) is hub.peer("b")
    assert hub.acc.cookies.stats()["cookie_replies"] == 1


def test_exit_ends_the_session() -> None:
    hub = Hub()
    a, _b = handshake(hub)
    pa = hub.peer("a")
    old = set(pa.indices)
    a.close(1.0)
    hub.receive([(d, A) for d, _ in a.datagrams_to_send(1.0)], 1.0)
    assert any(n == "a" and isinstance(ev, PeerDown) and ev.reason == "exit"
               for n, ev in hub.events)
    assert pa.secure is None and pa.native is None and not pa.started and pa.raw is None
    assert not old & set(hub.acc.by_index) and A not in hub.acc.by_raw
    assert pa.addr == A  # still shown where it was
    assert hub.acc.by_raw.get(B) is hub.peer("b")  # the other peer is untouched
