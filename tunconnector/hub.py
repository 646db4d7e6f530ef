"""Hub mode: one device, one UDP socket, many peers identified by their public keys.

A :class:`~.tunnel.Tunnel` configured for many peers: start/stop/close, the device
(offload, supervision), the UDP socket, the one timer and the status are the tunnel's;
what differs is here. The decisions live in sans-I/O pieces: the
:class:`~.proto.hubtable.PeerTable` (who may connect), the
:class:`~.proto.hubacceptor.NativeHubAcceptor` (which peer a datagram belongs to:
sessions, handshakes, cookies under load, resets, roaming), the forwarder between
the device and the peers (:mod:`.proto.switch`: routes for TUN, a learning switch for
TAP), and the :class:`~.proto.pool.AddressPool`. Here we only read, dispatch and write;
the socket's fair share among the peers is :class:`~.io.peerqueues.PeerQueues`'.
The peer table's I/O (key files, the state file with the leases, kernel routes, live
changes) is :class:`~.hubcontrol.HubControl`, reachable as ``hub.peer_table``.

One timer for all peers (:class:`~.proto.timers.TimerHeap`), so 1,000 idle peers cost
a heap entry each and a wake-up only when one of them has something to do.

TCP is not offered for hubs (the config refuses it): one UDP port serves every peer.

The device is supervised like a point-to-point tunnel's (:mod:`.devicewatch`): deleted,
it is opened again with what the hub put on it (addresses, MTU, its MAC and the pin on
it, the peers' kernel routes, the virtio_net_hdr offload), and the hub says ``down`` with
the reason until it is back. The peers' sessions live on meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable
from typing import Any

from .config import PeerConfig, TunnelConfig
from .fastpath import FastPath
from .hubcontrol import HubControl
from .io import netlink as nl
from .io.peerqueues import PeerQueues
from .keys import resolve_cipher
from .proto.hubacceptor import INIT_LEN as INIT_LEN
from .proto.hubacceptor import NativeHubAcceptor
from .proto.hubtable import HubPeer, PeerTable
from .proto.liveness import PeerDown, PeerUp
from .proto.mactable import LOCAL, MacTable, parse_mac
from .proto.offload import VNET_HDR_LEN
from .proto.pool import AddressPool
from .proto.router import Router
from .proto.secure import AuthFailure, HandshakeComplete, Rekeyed, SessionExpired
from .proto.switch import Forwarder, IpRoutes, MacSwitch
from .proto.timers import TimerHeap
from .tunnel import UNDERLAY_MTU, State, Tunnel, fmt_addr

log = logging.getLogger("tunconnector.hub")

class Hub(Tunnel):
    """Runs one hub :class:`TunnelConfig` (a server with ``[[tunnel.peer]]`` tables): a
    :class:`Tunnel` for many peers. Its own: what start prepares (the peer table), the
    device's extras (MAC, kernel routes), the transport (one UDP socket read through
    :class:`PeerQueues`), the data path between them (acceptor and forwarder), the
    timer's work (a heap of the peers' deadlines), the status fields and the peers'
    states; the rest (start/stop/close, device and its supervision, the one timer,
    the status's common fields) is the tunnel's."""

    peer_table: HubControl
    kind = "hub"

    def __init__(self, config: TunnelConfig, *, netlink: nl.Netlink | None = None) -> None:
        super().__init__(config, netlink=netlink)
        self.log = logging.LoggerAdapter(log, {"tunnel": self.name})
        self.tap = config.dev_type == "tap"
        # IFF_VNET_HDR without TSO: reads are plain packets behind a zero header (see
        # send_device_frames), a client's super-packet is written whole (_route_inbound)
        self._tso = False
        self.router = Router(client_to_client=config.client_to_client)
        self.macs = MacTable(aging=config.mac_aging, max_per_peer=config.max_macs_per_peer,
                             move_after=config.mac_move_after)
        self.table = PeerTable(config, self.mtu, self.router, self.macs, None)
        #: between the device and the peers: routes (TUN) or a learning switch (TAP)
        self._switch: Forwarder[HubPeer] = (
            MacSwitch(self.macs, self.peers.values, client_to_client=config.client_to_client)
            if self.tap else IpRoutes(self.router))
        #: which peer a datagram belongs to: sessions, handshakes, cookies, resets
        cipher, auto = resolve_cipher(config.cipher)
        self._acceptor = NativeHubAcceptor(
            self.table, cipher=cipher, cipher_auto=auto, keepalive=config.keepalive,
            dead_after=config.dead_after, rekey_after_time=config.rekey_after_time,
            rekey_after_bytes=config.rekey_after_bytes, max_frame=self.max_frame,
            reassembler=self._fast.reasm, drops=self.stats.drops)
        self.cookies = self._acceptor.cookies
        #: the shared socket's receive policy: fair share, queues of the peers' own
        self._queues: PeerQueues[HubPeer] = PeerQueues(
            self._on_udp_batch, owner=self._acceptor.by_raw.get, peers=self.peers.values,
            drops=self.stats.drops, bind_interface=config.bind_interface, log=self.log,
            name=self.name)
        self._timers: TimerHeap[HubPeer] = TimerHeap()
        #: TAP: the MAC the device had when first opened (pinned to the hub); a device
        #: recreated after a deletion gets it back, so the peers' ARP caches stay right
        self._own_mac: str | None = None
        self.peer_table = HubControl(self, self._acceptor, removed=self._peer_removed,
                                     changed=self._update_state)

    # ------------------------------------------------------------------ public face
    @property
    def peers(self) -> dict[str, HubPeer]:
        return self.table.peers

    @property
    def pool(self) -> AddressPool | None:
        return self.table.pool

    async def wait_peer_up(self, name: str, timeout: float | None = None) -> None:
        async def _wait() -> None:
            while not (name in self.peers and self.peers[name].up):
                ev = self._event()
                ev.clear()
                await ev.wait()

        await asyncio.wait_for(_wait(), timeout)

    def last_heard(self) -> float | None:
        times = [p.native.liveness.last_rx for p in self.peers.values()
                 if p.native is not None and p.native.liveness.last_rx is not None]
        return max(times) if times else None

    def all_drops(self) -> dict[str, int]:
        drops = collections.Counter(super().all_drops())
        for p in self.peers.values():
            self._queues.sync_drops(p)
            drops.update(p.stats.drops)
        return {k: v for k, v in sorted(drops.items()) if v}

    def peer_status(self, p: HubPeer, now: float | None = None) -> dict[str, Any]:
        self._queues.sync_drops(p)
        drops = collections.Counter(p.stats.drops)
        if p.native is not None:
            drops.update(p.native.drops)
        if p.secure is not None:
            drops.update(p.secure.drops)
        hs_age = None if p.last_handshake is None else round(time.time() - p.last_handshake, 1)
        return {
            "name": p.name,
            "public_key": p.key_b64,
            "key": p.key_b64[:8],
            "endpoint": fmt_addr(p.addr) if p.addr is not None else None,
            "address": str(p.address) if p.address is not None else None,
            "allowed_ips": list(p.cfg.allowed_ips),
            "state": "up" if p.up else (
                "down" if p.started or p.last_handshake is not None else "never"),
            "last_handshake_age": hs_age,
            "rx_bytes": p.stats.rx_bytes,
            "tx_bytes": p.stats.tx_bytes,
            "rx_packets": p.stats.rx_packets,
            "tx_packets": p.stats.tx_packets,
            "handshakes": p.handshakes,
            "drops": {k: v for k, v in sorted(drops.items()) if v},
            # read from a receive queue of its own (it ignored its budget, or protected)
            "own_queue": self._queues.isolated(p),
            # its own queue is read on a ration: it keeps sending beyond what it loses
            "rationed": self._queues.rationed(p),
        }

    def peers_status(self) -> list[dict[str, Any]]:
        return [self.peer_status(p) for p in self.peers.values()]

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "mode": self.config.mode, "hub": True} | super().status()

    def _status_more(self, now: float | None) -> tuple[bool, float | None, dict[str, Any]]:
        cfg = self.config
        up = sum(1 for p in self.peers.values() if p.up)
        handshakes = sum(p.handshakes for p in self.peers.values())
        return True, self.stats.last_rx, {
            "peers_up": up,
            "peers_configured": len(self.peers),
            "client_to_client": cfg.client_to_client,
            "data_path": self._fast.describe(),
            "device_udp_merged": self.device.udp_merged if self.device is not None else 0,
            "pool": cfg.pool,
            "cookies": {**self.cookies.stats(), "under_load": (
                self.cookies.under_load(now) if now is not None else False)},
            "crypto": {"cipher": cfg.cipher, "established": up > 0, "handshakes": handshakes,
                       "initiations_processed": self._acceptor.dh},
            "peers": self.peers_status(),
            **self._device_status(),
        }

    def set_hooks(self, hooks: Any) -> None:
        self.peer_table.set_hooks(hooks)

    # ------------------------------------------------------------------ lifecycle
    async def _prepare(self) -> None:
        assert self._loop is not None
        self._fast = FastPath(self.config, UNDERLAY_MTU)
        self._acceptor.reasm = self._fast.reasm
        self._acceptor.clock_offset = time.time() - self._loop.time()
        self.peer_table.load()

    async def _device_configured(self, name: str) -> None:
        if self.tap:
            await self._own_lladdr(name)
        await self.peer_table.device_opened()

    async def _own_lladdr(self, name: str) -> None:
        """A TAP's MAC: the one it had first, put back on a recreated device, and with
        ``mac_pin`` pinned to the hub itself (no peer may take it)."""
        cfg = self.config
        if self._own_mac is not None:
            await self.netlink.call(nl.set_lladdr, name, self._own_mac, cfg.netns)
        else:
            self._own_mac = await self.netlink.call(nl.get_lladdr, name, cfg.netns)
        if cfg.mac_pin and self._own_mac:
            self.macs.unpin_port(LOCAL)
            self.macs.pin(parse_mac(self._own_mac), LOCAL)

    async def _open_transport(self) -> None:
        """One UDP socket for every peer, read through the peers' fair share (UDP
        GSO/GRO: the runs send_batch makes per peer leave in one sendmsg, a client's
        runs arrive in one read; a coalesced FRAGMENT read stays whole)."""
        assert self._loop is not None
        udp = self._udp = self._new_udp(self.config.port)
        self._queues.attach(udp, self._loop)
        self._device_reader(True)
        self._set_state(State.DOWN)

    def _log_started(self) -> None:
        self.log.info("hub %s started: %d peers, device %s mtu %d, udp %s", self.name,
                      len(self.peers), self.device_name, self.mtu,
                      fmt_addr(self._udp.local_address) if self._udp else "-")

    def _notify_exit(self) -> None:
        for p in self.peers.values():
            if p.up:
                self._peer_state(p, False, "hub stopping")

    async def _close_all(self) -> None:
        await super()._close_all()
        self._timers.clear()
        self._queues.close()
        self.peer_table.closed()
        self._own_mac = None  # a new start: a new device, its own MAC
        for p in self.peers.values():
            p.up = False
        self._acceptor.clear()
        self.table.clear()

    # ------------------------------------------------------------------ peer table
    def _apply_peer_table(self, table: Iterable[PeerConfig], *, initial: bool = False
                          ) -> dict[str, list[str]]:
        return self.peer_table.apply(table, initial=initial)

    def _peer_removed(self, p: HubPeer) -> None:
        if p.up:
            self._peer_state(p, False, "removed")
        self._queues.unisolate(p)
        self._acceptor.forget(p)
        self._timers.discard(p)
        self.log.info("hub %s: peer %s removed", self.name, p.name)

    # ------------------------------------------------------------------ wire -> device
    def _on_udp_batch(self, batch: list[tuple[Any, Any]]) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.stats.wire_rx += len(batch)
        batch = self._queues.admit(batch)
        udp = self._udp
        acceptor = self._acceptor
        inbound, touched = acceptor.receive_batch(
            batch, now, runs=udp is not None and udp.runs and udp.gro)
        if acceptor.has_output():
            self._acceptor_output()
        if inbound:
            self._route_inbound(inbound, now)
        for p in touched:
            self._flush_peer(p, now)

    def _acceptor_output(self) -> None:
        """Cookie replies and resets to their senders; peers that moved: a receive
        queue of their own is bound to the old address (closed), and a log line."""
        acceptor = self._acceptor
        udp = self._udp
        for packet, addr in acceptor.datagrams_to_send():
            if udp is not None:
                udp.sendto(packet, addr)
        for p, old in acceptor.moves():
            self._queues.moved(p)
            if old is None:
                self.log.info("hub %s: peer %s at %s", self.name, p.name, fmt_addr(p.addr))
            elif old != p.addr:
                self.log.info("hub %s: peer %s moved %s -> %s", self.name, p.name,
                              fmt_addr(old), fmt_addr(p.addr))

    def _route_inbound(self, items: list[tuple[HubPeer, Any]], now: float) -> None:
        dev = self.device
        out = self._switch.inbound(items, now, whole=dev is not None and dev.vnet_hdr)
        if out.to_device:
            self._to_device(out.to_device, now, out.extra)
        for q, frames in out.forward.values():
            self._send_to_peer(q, frames, now)

    # ------------------------------------------------------------------ device -> wire
    def send_device_frames(self, frames: list[bytes]) -> None:
        dev, loop = self.device, self._loop
        if dev is None or loop is None:
            return
        if dev.vnet_hdr:  # no TUNSETOFFLOAD: a whole packet behind a zero header
            frames = [f[VNET_HDR_LEN:] for f in frames]
        now = loop.time()
        st = self.stats
        st.tx_packets += len(frames)
        st.tx_bytes += sum(map(len, frames))
        groups = self._switch.outbound(frames, now, st.drops)
        for q, fs in groups:
            self._send_to_peer(q, fs, now)

    def _send_to_peer(self, q: HubPeer, frames: list[Any], now: float) -> None:
        native = q.native
        if native is None or q.addr is None or self._udp is None or not q.up:
            q.stats.drops["peer_down"] += len(frames)
            return
        q.stats.tx_packets += len(frames)
        q.stats.tx_bytes += sum(map(len, frames))
        self._udp.send_batch(native.encode_batch(frames, now), q.addr)
        self.stats.wire_tx += len(frames)
        if native.has_work():
            self._flush_peer(q, now)

    # ------------------------------------------------------------------ control, timer
    def _flush_peer(self, p: HubPeer, now: float) -> None:
        msgs, events = self._acceptor.drain(p)
        if msgs and self._udp is not None and p.addr is not None:
            for m in msgs:
                self._udp.sendto(m, p.addr)
        for ev in events:
            if isinstance(ev, PeerUp):
                self._peer_state(p, True, "alive")
            elif isinstance(ev, PeerDown) and ev.reason == "exit":
                self._peer_state(p, False, "it said it stops")
                self._queues.unisolate(p)  # its session ended with it (see drain)
            elif isinstance(ev, PeerDown):
                self._peer_state(p, False, f"nothing received for {ev.silent_for:.1f}s")
            elif isinstance(ev, HandshakeComplete):
                p.last_handshake = time.time()
                self.stats.connects += 1
            elif isinstance(ev, AuthFailure):
                self.log.warning("hub %s: peer %s: %s", self.name, p.name, ev.message)
            elif isinstance(ev, SessionExpired):
                self.log.info("hub %s: peer %s: session expired", self.name, p.name)
            elif isinstance(ev, Rekeyed):
                p.last_handshake = time.time()
        self._schedule(p)

    def _peer_state(self, p: HubPeer, up: bool, why: str) -> None:
        if p.up == up:
            return
        p.up = up
        if up:
            self._queues.peer_up(p)
            self.log.info("hub %s: peer %s up (%s, %s)", self.name, p.name,
                          fmt_addr(p.addr) if p.addr else "-", p.address or "no address")
        else:
            self.log.warning("hub %s: peer %s down: %s", self.name, p.name, why)
            if self.tap:
                self.macs.forget_port(p)
        hooks = self.peer_table.hooks
        if hooks is not None:
            try:
                (hooks.peer_up if up else hooks.peer_down)(self, p)
            except Exception:  # a hook bug must not break the data path
                self.log.exception("peer hook failed")
        self._update_state()
        self._event().set()

    def _update_state(self) -> None:
        if self.state not in (State.UP, State.DOWN):
            return
        self._set_state(State.UP if any(p.up for p in self.peers.values()) else State.DOWN)

    def _schedule(self, p: HubPeer) -> None:
        if self._stopping or self._loop is None:
            return
        t = p.native.get_timer() if (p.native is not None and p.started) else None
        if self._timers.schedule(p, t) and t is not None and (
                self._timer_at is None or t < self._timer_at):
            self._arm_at(t)

    def arm_timer(self) -> None:
        """The one timer: the earliest peer's, or a partial reassembly's expiry."""
        if self._loop is None or self._stopping:
            return
        times = [t for t in (self._timers.next(), self._fast.get_timer()) if t is not None]
        if times:
            self._arm_at(min(times))

    def _on_due(self, now: float) -> None:
        for p in self._timers.due(now):
            if p.native is not None:
                p.native.handle_timer(now)
                self._flush_peer(p, now)
        self._fast.handle_timer(now)
