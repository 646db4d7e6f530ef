"""The hub's acceptor as hub.py drives it: a read of datagrams from the live peer's address
(fast path first), from a stranger (session index, initiations, resets) and now and then
as a GRO fragment run; one peer's session up, state kept across inputs."""

from __future__ import annotations

import base64
import collections
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tunconnector.config import Config
from tunconnector.proto import fragment
from tunconnector.proto.fragment import FRAG_OVERHEAD, FragmentRun
from tunconnector.proto.hubacceptor import NativeHubAcceptor
from tunconnector.proto.hubtable import PeerTable
from tunconnector.proto.mactable import MacTable
from tunconnector.proto.native import NativeEndpoint
from tunconnector.proto.native_conn import NativeConnection
from tunconnector.proto.noise import public_bytes
from tunconnector.proto.router import Router
from tunconnector.proto.secure import SecureChannel

from ..registry import register

HUB = ("192.0.2.1", 51820)
PEER = ("192.0.2.10", 40000)
STRANGER = ("198.51.100.7", 41000)
IPV4 = bytes.fromhex("450000540001400040010000" "0a000001" "0a000002") + bytes(64)


def _make() -> dict[str, Any]:
    """An acceptor with peer ``a`` up; the datagrams its client sent are the seeds."""
    hub_key, client_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    cfg = Config.from_mapping({"tunnel": [{
        "name": "hub", "mode": "server", "address": "10.220.0.1/24", "port": 0,
        "private_key_file": "/nonexistent/hub.key", "peer": [
            {"name": "a", "public_key": base64.b64encode(public_bytes(client_key)).decode(),
             "address": "10.220.0.50"}],
    }]}).tunnel[0]
    table = PeerTable(cfg, 1400, Router(), MacTable(), None)
    table.apply(cfg.peer, lambda pc, where: (base64.b64decode(pc.public_key), None),
                initial=True)
    acc = NativeHubAcceptor(table, cipher="chacha20-poly1305", cipher_auto=False,
                            keepalive=10.0, dead_after=60.0, rekey_after_time=120.0,
                            rekey_after_bytes=1 << 36, max_frame=1518,
                            reassembler=fragment.Reassembler(),
                            drops=collections.Counter())
    acc.set_static(hub_key.private_bytes_raw())
    hub_public = public_bytes(hub_key)

    def endpoint() -> NativeEndpoint:
        secure = SecureChannel(initiator=True, private_key=client_key.private_bytes_raw(),
                               peer_public_key=hub_public)
        return NativeEndpoint(keepalive=10.0, dead_after=60.0, max_frame=1518, secure=secure)

    c = NativeConnection(endpoint, server=False, peer=HUB)
    c.start(0.0)
    seen: list[bytes] = []
    for _ in range(6):
        sent = [(bytes(d), PEER) for d, _a in c.datagrams_to_send(0.0)]
        seen.extend(d for d, _ in sent)
        _inbound, touched = acc.receive_batch(sent, 0.0)
        for p in touched:
            for m in acc.drain(p)[0]:
                c.receive_datagram(m, HUB, 0.0)
    c.send_frames([IPV4, b"x"], 0.0)
    seen.extend(bytes(d) for d, _a in c.datagrams_to_send(0.0))
    return {"acc": acc, "seen": seen, "n": 0, "now": 1.0}


_state: dict[str, Any] = {}


def _get() -> dict[str, Any]:
    st = _state.get("st")
    if st is None or st["n"] >= 20000:
        st = _state["st"] = _make()
    return st


@register("hub_acceptor.batch", seeds=lambda: _get()["seen"])
def _batch(data: bytes) -> None:
    st = _get()
    st["n"] = n = st["n"] + 1
    st["now"] = now = st["now"] + 0.001
    acc: NativeHubAcceptor = st["acc"]
    items: list[tuple[Any, Any]] = [(data, PEER), (memoryview(data), STRANGER)]
    runs = n % 5 == 0 and len(data) > FRAG_OVERHEAD
    if runs:
        items.append((FragmentRun(memoryview(data), min(len(data), 1472)), PEER))
    _inbound, touched = acc.receive_batch(items, now, runs=runs)
    acc.datagrams_to_send()
    acc.moves()
    for p in touched:
        acc.drain(p)
        if p.native is not None:
            p.native.handle_timer(now)
