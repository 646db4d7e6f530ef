"""Hub mode: one device, one UDP socket, many peers identified by their public keys.

An asyncio adapter like :mod:`.tunnel`, with the same public face (``state``,
``wait_up``, ``add_listener``, ``status()``, ``stats``, ``start``/``stop``/``close``)
plus a view of its peers. The decisions live in sans-I/O pieces: per peer a
:class:`~.proto.native.NativeEndpoint` with its own
:class:`~.proto.secure.SecureChannel` (responder), the :class:`~.proto.router.Router`
(TUN) or :class:`~.proto.mactable.MacTable` (TAP) between the device and the peers, the
:class:`~.proto.pool.AddressPool`, and the :class:`~.proto.cookie.CookieChecker` that
answers floods with cookies. Here we only read, dispatch and write.

Who sent a datagram: a known source address is the fast path; otherwise the receiver's
session index names the peer; an initiation is read once by the hub (mac1, load and
cookie, then the first Noise message, which reveals the initiator's static key) and
handed to that peer's channel. A peer follows its client on any authenticated message
(roaming, NAT rebinding).

One timer for all peers: a heap of per-peer deadlines, so 1,000 idle peers cost a
heap entry each and a wake-up only when one of them has something to do.

TCP is not offered for hubs (the config refuses it): one UDP port serves every peer.

The device is supervised like a point-to-point tunnel's (:mod:`.devicewatch`): deleted,
it is opened again with what the hub put on it (addresses, MTU, its MAC and the pin on
it, the peers' kernel routes, the virtio_net_hdr offload), and the hub says ``down`` with
the reason until it is back. The peers' sessions live on meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import heapq
import ipaddress
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .config import PeerConfig, TunnelConfig
from .devicewatch import SupervisedDevice
from .errors import ConfigError, CryptoError, RemoteProtocolError, TunconnectorError
from .fastpath import FastPath
from .io import netlink as nl
from .io import routes as rt
from .io.device import Device
from .io.udp import (
    Addr,
    UdpEndpoint,
    family_for,
    normalize,
    open_connected_twin,
    open_udp,
    socket_drops,
)
from .keys import decode_key, load_key_file, resolve_cipher
from .proto import fragment
from .proto.assign import Assignment
from .proto.cookie import Accept, CookieChecker, InitiationScreen, Reply, cookie_key
from .proto.fairshare import FloodJudge, RoundBudget
from .proto.framing import HEADER_LEN, MsgType
from .proto.hubtable import HubPeer, PeerTable
from .proto.liveness import PeerDown, PeerUp
from .proto.mactable import FLOOD, LOCAL, MacTable, parse_mac
from .proto.native import NativeEndpoint
from .proto.noise import HandshakeState, public_bytes
from .proto.offload import VNET_HDR_LEN, GsoFrame, coalesce_tcp
from .proto.pool import AddressPool
from .proto.reset import encode_reset, reset_key, reset_token, wants_reset
from .proto.router import FORWARD, TO_DEVICE, Router
from .proto.secure import (
    _INIT_PAYLOAD,
    MAC_LEN,
    PROLOGUE,
    AuthFailure,
    HandshakeComplete,
    Rekeyed,
    SecureChannel,
    SessionExpired,
    TokenBucketLimiter,
    _mac_key,
)
from .tunnel import State, TunnelStats, derive_mtu

log = logging.getLogger("tunconnector.hub")

#: header || e || enc(s) || enc(payload) || mac1  (IKpsk2 first message)
INIT_LEN = HEADER_LEN + 32 + (32 + 16) + _INIT_PAYLOAD.size + 16 + MAC_LEN
DEFAULT_STATE_DIR = "/var/lib/tunconnector"
#: frames a peer's channel holds while its session renews (bounded memory per peer)
PEER_QUEUE = 16
#: datagrams read from the socket per round at most (reading is cheap: drain it all)
READ_BATCH = 2048
#: rounds of READ_BATCH read at once from the shared queue when it goes on its ration
#: (its content then: up to 16,384 datagrams)
DRAIN_ROUNDS = 8
#: datagrams a round processes before the senders above their fair share lose their
#: excess (counted ``peer_budget``), and the least every sender keeps of a round
ROUND_CAPACITY = 128
MIN_SHARE = 8
#: initiations in one read round that mean a queue of them: under load (cookies) at once
INIT_BACKLOG = 16
#: a peer cut by its budget gets a receive queue of its own (a connected socket): the
#: kernel then drops its excess for free, and it is read this much per loop turn
MAX_ISOLATED = 64
ISOLATED_BATCH = 64
ISOLATED_RCVBUF = 1 << 20
#: a peer whose own queue keeps losing more than FLOOD_RATIO of what it sends (in
#: FLOOD_WINDOWS windows of FLOOD_WINDOW s in a row) ignores loss: a flood (see
#: proto/fairshare.FloodJudge). Its queue is then read FLOOD_BATCH datagrams at a time
#: with a FLOOD_REST pause after a full read (at most 8,000 datagrams/s; short stints, as
#: another peer's packet arriving during one waits for its end), so the process
#: stays idle often enough to answer the other peers at once; the ration ends after a
#: window without loss
FLOOD_WINDOW = 0.1
FLOOD_RATIO = 0.2
FLOOD_WINDOWS = 3
FLOOD_BATCH = 16
FLOOD_REST = 0.002
#: once the shared socket's queue overflows (a flood, from strangers as well), every peer
#: that is up gets such a queue too (protected, within MAX_ISOLATED), and the shared
#: socket, left to strangers and handshakes, is read SHARED_BATCH datagrams per loop turn
#: with a SHARED_REST pause after a full one: a flood there cannot starve the peers'
#: queues, and costs a bounded share of a core
SHARED_BATCH = 32
SHARED_REST = 0.002
#: ... or once the shared socket carries more than this many datagrams a second (measured
#: over SHARED_WINDOW s): a hub fast enough to keep its queue from overflowing would
#: otherwise spend a core reading a stranger's flood while its peers wait behind it; a
#: short window, as the peers' datagrams queue behind the flood until then
SHARED_PROTECT_RATE = 20_000
SHARED_WINDOW = 0.05



@dataclass(slots=True)
class OwnQueue:
    """A peer's own receive queue, once it sent beyond its share (see ``Hub._isolate``)."""

    endpoint: UdpEndpoint
    #: whether its sender floods (it keeps sending beyond what it loses)
    judge: FloodJudge
    #: the kernel's drop count there already added to the peer's ``peer_budget`` drops
    drops: int = 0
    #: datagrams read from it
    read: int = 0


def _peer_key(cfg: PeerConfig, where: str) -> tuple[bytes, bytes | None]:
    try:
        public = decode_key(cfg.public_key, f"{where}.public_key")
        psk = load_key_file(cfg.key_file) if cfg.key_file else None
    except CryptoError as exc:
        raise ConfigError(str(exc)) from exc
    return public, psk


class Hub(SupervisedDevice):
    """Runs one hub :class:`TunnelConfig` (a server with ``[[tunnel.peer]]`` tables)."""

    def __init__(self, config: TunnelConfig, *, netlink: nl.Netlink | None = None) -> None:
        self.config = config
        self.name = config.name
        self._init_state()
        self.stats = TunnelStats()
        self.device: Device | None = None
        self.device_name: str | None = config.device
        self.mtu = derive_mtu(config)
        self.tap = config.dev_type == "tap"
        self.max_frame = self.mtu + (18 if self.tap else 0)
        self.peer: Addr | None = None  # the Tunnel face; a hub has many: see peers
        self.log = logging.LoggerAdapter(log, {"tunnel": self.name})
        self.netlink = netlink or nl.Netlink()
        self._own_netlink = netlink is None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: UdpEndpoint | None = None
        #: device and socket offloads (the device: virtio_net_hdr without TSO, so client
        #: super-packets are written whole; status "data_path")
        self._fast = FastPath(config)
        self._protecting = False  # the shared queue overflowed: peers get their own
        self._shared_since = 0.0  # the shared socket's rate window: start, datagrams
        self._shared_count = 0
        self._stopping = False
        self._by_raw: dict[Any, HubPeer] = {}
        self._by_index: dict[int, HubPeer] = {}
        self.router = Router(client_to_client=config.client_to_client)
        self.macs = MacTable(aging=config.mac_aging, max_per_peer=config.max_macs_per_peer,
                             move_after=config.mac_move_after)
        self.table = PeerTable(config, self.mtu, self.router, self.macs, None)
        #: the peers with a receive queue of their own (see _isolate)
        self._own: dict[HubPeer, OwnQueue] = {}
        self.cookies = CookieChecker()
        #: mac1, load, cookie and rate-limit checks before an initiation's DH; under
        #: load and out of reply budget a datagram costs a length check, not a MAC;
        #: the per-source limit applies only under load
        self._screen = InitiationScreen(init_len=INIT_LEN, mac_keys=(), cookies=self.cookies,
                                        limiter=TokenBucketLimiter(), cookie_key=b"",
                                        throttle_before_mac=True, limit_always=False)
        #: initiations that reached the Diffie-Hellman (status: initiations_processed)
        self._dh = 0
        self._budget = RoundBudget(ROUND_CAPACITY, MIN_SHARE)
        self._reset_key = b""
        #: SESSION_RESET replies: per source address, and in total
        self._reset_per_source = TokenBucketLimiter(rate=2.0, burst=2.0)
        self._reset_total = TokenBucketLimiter(rate=500.0, burst=100.0)
        self._static: X25519PrivateKey | None = None
        self._reasm: fragment.Reassembler = self._fast.reasm
        self._heap: list[tuple[float, int, HubPeer]] = []
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._clock_offset = 0.0
        self._hooks: Any = None
        self._kernel_routes: dict[str, list[str]] = {}
        self._reading_device = False
        self._created_device = False
        #: TAP: the MAC the device had when first opened (pinned to the hub); a device
        #: recreated after a deletion gets it back, so the peers' ARP caches stay right
        self._own_mac: str | None = None

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
        if self._udp is not None:  # dropped by the kernel at the shared socket's full queue
            self._udp.count_kernel_drops("udp_queue_full")
        drops = collections.Counter(self.stats.drops)
        for p in self.peers.values():
            self._sync_own_drops(p)
            drops.update(p.stats.drops)
        return {k: v for k, v in sorted(drops.items()) if v}

    def peer_status(self, p: HubPeer, now: float | None = None) -> dict[str, Any]:
        self._sync_own_drops(p)
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
            "endpoint": _fmt_addr(p.addr) if p.addr is not None else None,
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
            # its own queue is read on a ration: it keeps sending beyond what it loses
            "rationed": (q := self._own.get(p)) is not None and q.judge.flooding,
        }

    def peers_status(self) -> list[dict[str, Any]]:
        return [self.peer_status(p) for p in self.peers.values()]

    def status(self) -> dict[str, Any]:
        cfg = self.config
        now = self._loop.time() if self._loop is not None else None
        last = self.stats.last_rx
        local = None
        if self._udp is not None:
            try:
                local = _fmt_addr(self._udp.local_address)
            except OSError:
                local = None
        up = sum(1 for p in self.peers.values() if p.up)
        handshakes = sum(p.handshakes for p in self.peers.values())
        return {
            "name": self.name,
            "mode": cfg.mode,
            "hub": True,
            "proto": cfg.proto,
            "framing": cfg.framing,
            "transport": f"{cfg.proto}/{cfg.framing}",
            "dev_type": cfg.dev_type,
            "device": self.device_name,
            "netns": cfg.netns,
            "addresses": list(cfg.address),
            "mtu": self.mtu,
            "local": local,
            "peer": None,
            "state": self.state.value,
            "error": self.error,
            "encrypted": True,
            "since": self.since,
            "last_rx_age": round(now - last, 3) if (now is not None and last is not None) else None,
            "rx_bytes": self.stats.rx_bytes,
            "tx_bytes": self.stats.tx_bytes,
            "rx_packets": self.stats.rx_packets,
            "tx_packets": self.stats.tx_packets,
            "connects": self.stats.connects,
            "drops": self.all_drops(),
            "peers_up": up,
            "peers_configured": len(self.peers),
            "client_to_client": cfg.client_to_client,
            "data_path": self._fast.describe(),
            "pool": cfg.pool,
            "cookies": {**self.cookies.stats(), "under_load": (
                self.cookies.under_load(now) if now is not None else False)},
            "crypto": {"cipher": cfg.cipher, "established": up > 0, "handshakes": handshakes,
                       "initiations_processed": self._dh},
            "peers": self.peers_status(),
            **self._device_status(),
        }

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.is_running:
            return
        self._loop = asyncio.get_running_loop()
        self._clock_offset = time.time() - self._loop.time()
        self._stopping = False
        self._fast = FastPath(self.config)
        self._reasm = self._fast.reasm
        self.error = None
        self._set_state(State.STARTING)
        try:
            self._load_keys()
            self._setup_pool()
            self._apply_peer_table(self.config.peer, initial=True)
            await self._open_device()
            await self._supervise_device()
            self._open_udp()
            self._device_reader(True)
        except BaseException as exc:
            self.error = str(exc) if isinstance(exc, TunconnectorError) else repr(exc)
            await self._close_all()
            self._set_state(State.FAILED)
            raise
        self._set_state(State.DOWN)
        self.log.info("hub %s started: %d peers, device %s mtu %d, udp %s", self.name,
                      len(self.peers), self.device_name, self.mtu,
                      _fmt_addr(self._udp.local_address) if self._udp else "-")

    async def stop(self) -> None:
        if self.state in (State.STOPPED, State.FAILED) and self.device is None:
            return
        self._stopping = True
        for p in self.peers.values():
            if p.up:
                self._peer_state(p, False, "hub stopping")
        await self._close_all()
        self._set_state(State.STOPPED)
        self.log.info("hub %s stopped", self.name)

    async def close(self) -> None:
        await self.stop()
        if self._own_netlink:
            self.netlink.close()

    def set_hooks(self, hooks: Any) -> None:
        """Something with ``peer_up(hub, peer)`` / ``peer_down(hub, peer)`` methods."""
        self._hooks = hooks

    # ------------------------------------------------------------------ set-up
    def _load_keys(self) -> None:
        cfg = self.config
        try:
            priv = load_key_file(cfg.private_key_file or "")
        except CryptoError as exc:
            raise ConfigError(f"{cfg.name}.private_key_file: {exc}") from exc
        self._static = X25519PrivateKey.from_private_bytes(priv)
        self._own_public = public_bytes(self._static)
        self._screen.cookie_key = cookie_key(_mac_key(self._own_public, bytes(32)))
        self._reset_key = reset_key(priv)

    def _refresh_mac_keys(self) -> None:
        """mac1 keys of the peers' PSKs (a peer with a PSK keys mac1 with it too)."""
        keys = {_mac_key(self._own_public, bytes(32))}
        for p in self.peers.values():
            if p.psk is not None:
                keys.add(_mac_key(self._own_public, p.psk))
        self._screen.set_mac_keys(keys)

    def state_path(self) -> Path:
        cfg = self.config
        if cfg.state_file:
            return Path(cfg.state_file)
        return Path(DEFAULT_STATE_DIR) / f"{cfg.name}.json"

    def _setup_pool(self) -> None:
        cfg = self.config
        if cfg.pool is None:
            self.table.pool = None
            return
        reserved: list[Any] = [i.ip for i in cfg.interfaces]
        reserved += [p.address.split("/")[0] for p in cfg.peer if p.address]
        pool = self.table.pool = AddressPool(cfg.pool, reserved=reserved)
        path = self.state_path()
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.log.warning("hub %s: state file %s unreadable (%s): starting afresh",
                             self.name, path, exc)
            return
        n = pool.load(data.get("pool") if isinstance(data, dict) else None)
        self.log.info("hub %s: %d address leases restored from %s", self.name, n, path)

    def _save_pool(self) -> None:
        pool = self.pool
        if pool is None:
            return
        path = self.state_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps({"pool": pool.dump()}, indent=1))
            os.replace(tmp, path)
        except OSError as exc:
            self.stats.drops["state_file_error"] += 1
            self.log.warning("hub %s: cannot write state file %s: %s", self.name, path, exc)

    async def _open_device(self) -> None:
        """Open and configure the device: at start, and again each time the device
        supervisor brings a deleted one back (then under the name it had, which the
        kernel may have chosen). Reading it is switched on apart (``_device_reader``)."""
        cfg = self.config
        reopen = self._devsup is not None
        name = (self.device_name if reopen else cfg.device) or ""
        existed = False
        if name and not reopen:
            existed = await self.netlink.call(nl.link_exists, name)
        # IFF_VNET_HDR without TSO: reads are plain packets behind a zero header (see
        # _on_device_readable), a client's super-packet is written whole (_route_inbound);
        # without IFF_VNET_HDR the plain device, as FastPath.open_device decides
        dev = self._fast.open_device(name, cfg.dev_type, tso=False)
        self.device = dev
        self.device_name = dev.name
        if not reopen:
            self._created_device = not existed
        if cfg.netns:
            await self.netlink.call(nl.move_to_netns, dev.name, cfg.netns)
        await self.netlink.call(nl.configure, dev.name, addresses=cfg.interfaces,
                                mtu=self.mtu, netns=cfg.netns)
        if self.tap:
            await self._own_lladdr(dev.name)
        # a new device carries none of the routes the old one had
        self._kernel_routes.clear()
        await self._sync_kernel_routes()
        if existed:
            self.log.info("attached to existing device %s (left in place on exit)", dev.name)

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

    def _open_udp(self) -> None:
        cfg = self.config
        family = family_for(cfg.bind) if cfg.bind else family_for(None)
        sock = open_udp(bind=cfg.bind, port=cfg.port, family=family,
                        bind_interface=cfg.bind_interface)
        self._udp = UdpEndpoint(sock, self.stats.drops)
        # UDP GSO/GRO: the runs of equal-size datagrams send_batch makes per peer leave in
        # one sendmsg, a client's runs arrive in one read (memoryview slices)
        self._fast.attach_udp(self._udp)  # runs: a coalesced FRAGMENT read stays whole
        self._udp.start(self._on_shared_batch, max_batch=READ_BATCH)

    # ------------------------------------------------------------------ peer table
    def _apply_peer_table(self, table: Iterable[PeerConfig], *, initial: bool = False
                          ) -> dict[str, list[str]]:
        """Make the peers exactly ``table`` (see :meth:`PeerTable.apply`), then end the
        sessions of the peers it removed and write down changed leases."""
        try:
            result = self.table.apply(table, _peer_key, initial=initial)
        finally:
            changes = self.table.take_changes()
            for p in changes.removed:
                self._peer_removed(p)
        for p, why in changes.no_address:
            self.log.warning("hub %s: peer %s gets no address: %s", self.name, p.name, why)
        self._refresh_mac_keys()
        if changes.leases_changed or not initial:
            self._save_pool()
        return result

    def _peer_removed(self, p: HubPeer) -> None:
        if p.up:
            self._peer_state(p, False, "removed")
        if p.raw is not None:
            self._by_raw.pop(p.raw, None)
        for i in p.indices:
            if self._by_index.get(i) is p:
                del self._by_index[i]
        self._unisolate(p)
        p.native = None
        p.secure = None
        p.timer_at = None  # its heap entries are now stale
        self.log.info("hub %s: peer %s removed", self.name, p.name)

    async def _sync_kernel_routes(self) -> None:
        """Kernel routes for the peers' allowed_ips via the hub's device (while the device
        is missing there is nothing to change: its reopening adds what is then wanted)."""
        if self.device is None or self.device_name is None or self.tap:
            return
        want = {p.name: [str(ipaddress.ip_network(n, strict=False))
                         for n in p.cfg.allowed_ips] for p in self.peers.values()}
        for name, nets in list(self._kernel_routes.items()):
            gone = [n for n in nets if n not in want.get(name, [])]
            if gone:
                await self.netlink.call(rt.del_routes, self.device_name, gone,
                                        netns=self.config.netns)
            self._kernel_routes[name] = [n for n in nets if n not in gone]
        for name, nets in want.items():
            have = self._kernel_routes.get(name, [])
            add = [n for n in nets if n not in have]
            if add:
                await self.netlink.call(rt.add_routes, self.device_name, add,
                                        netns=self.config.netns)
            self._kernel_routes[name] = nets
        for name in [n for n in self._kernel_routes if n not in want]:
            del self._kernel_routes[name]

    async def apply_peers(self, table: Iterable[PeerConfig]) -> dict[str, list[str]]:
        """Live change: the peer table becomes ``table`` (reload, API)."""
        table = list(table)
        result = self._apply_peer_table(table)
        self.config.peer = table  # a later stop/start keeps the live table
        if self.is_running:
            await self._sync_kernel_routes()
        changed = {k: v for k, v in result.items() if v and k != "unchanged"}
        if changed:
            self.log.info("hub %s: peers %s", self.name,
                          ", ".join(f"{k} {' '.join(v)}" for k, v in changed.items()))
        self._update_state()
        return result

    async def put_peer(self, cfg: PeerConfig) -> str:
        """Add or replace one peer; returns ``added``, ``changed`` or ``unchanged``."""
        table = [p.cfg for p in self.peers.values() if p.name != cfg.name] + [cfg]
        result = await self.apply_peers(table)
        for k in ("added", "changed", "unchanged"):
            if cfg.name in result[k]:
                return k
        return "unchanged"  # pragma: no cover

    async def delete_peer(self, name: str) -> bool:
        if name not in self.peers:
            return False
        await self.apply_peers([p.cfg for p in self.peers.values() if p.name != name])
        return True

    def _ensure_channel(self, p: HubPeer) -> SecureChannel:
        if p.secure is None:
            cfg = self.config
            assert self._static is not None
            cipher, auto = resolve_cipher(cfg.cipher)
            p.secure = SecureChannel(
                initiator=False, psk=p.psk,
                private_key=self._static.private_bytes_raw(), peer_public_key=p.public,
                cipher=cipher, cipher_auto=auto, rekey_after_time=cfg.rekey_after_time,
                rekey_after_bytes=cfg.rekey_after_bytes, stale_after=cfg.keepalive + 5.0,
                clock_offset=self._clock_offset, guard=p.guard,
                queue_limit=PEER_QUEUE,
            )
            if p.assignment is not None:
                p.secure.response_extra = p.assignment.encode()
            key = self._reset_key

            def extra_for(index: int, p: HubPeer = p) -> bytes:
                """The assignment, with the new session's reset token."""
                return (p.assignment or Assignment()).encode(reset_token(key, index))

            p.secure.response_extra_for = extra_for
            p.native = NativeEndpoint(keepalive=cfg.keepalive, dead_after=cfg.dead_after,
                                      max_frame=self.max_frame, secure=p.secure)
        return p.secure

    # ------------------------------------------------------------------ wire -> device
    def _on_shared_batch(self, batch: list[tuple[bytes, Addr]]) -> None:
        """The shared socket's datagrams: watch its rate (see SHARED_PROTECT_RATE)."""
        if not self._protecting and self._loop is not None:
            now = self._loop.time()
            self._shared_count += len(batch)
            span = now - self._shared_since
            if span >= SHARED_WINDOW:
                if self._shared_count > SHARED_PROTECT_RATE * span:
                    self._protect(f"carries {self._shared_count / span:.0f} datagrams/s")
                self._shared_since, self._shared_count = now, 0
        self._on_udp_batch(batch)

    def _on_udp_batch(self, batch: list[tuple[bytes, Addr]]) -> None:
        assert self._loop is not None
        now = self._loop.time()
        stats = self.stats
        stats.wire_rx += len(batch)
        by_raw = self._by_raw
        touched: dict[int, HubPeer] = {}
        inbound: list[tuple[HubPeer, Any]] = []
        inits: list[tuple[bytes, Addr, Any]] = []
        if len(batch) >= SHARED_BATCH and not self._protecting:
            self._check_overflow()
        if len(batch) > ROUND_CAPACITY:
            batch = self._within_budget(batch)
        udp = self._udp
        if udp is not None and udp.runs and udp.gro:  # FragmentRuns -> their messages
            batch = self._fast.expand_runs(batch, now, stats.drops)
        for data, raw in batch:
            p = by_raw.get(raw)
            if p is not None and p.native is not None:
                frame = p.native.quick(data, now, raw)
                if frame is not False:
                    if frame is not None:
                        inbound.append((p, frame))
                    continue
            if len(data) < HEADER_LEN:
                stats.drops["truncated"] += 1
                continue
            if type(data) is memoryview:  # a UDP GRO slice: the slow path wants bytes
                data = bytes(data)
            mtype = data[1]
            if mtype == MsgType.FRAGMENT:
                try:
                    inner = self._reasm.receive(data, now)
                except RemoteProtocolError as exc:
                    stats.drops["fragment_" + exc.reason] += 1
                    continue
                if inner is None:
                    continue
                data = bytes(inner)
                mtype = data[1]
            addr = normalize(raw)
            if mtype == MsgType.HANDSHAKE_INIT:
                inits.append((data, addr, raw))  # after the round's data: see below
                continue
            session = int.from_bytes(data[4:8], "big")
            p = self._by_index.get(session)
            if p is None or p.native is None:
                stats.drops["unknown_session"] += 1
                if wants_reset(data):
                    self._send_reset(session, addr, now)
                continue
            decoded = p.native.decode(data, now, raw)
            if decoded.authentic and p.raw != raw:
                self._follow(p, addr, raw)
            for f in decoded.frames:
                inbound.append((p, f))
            touched[id(p)] = p
        if inits:
            if len(inits) >= INIT_BACKLOG:
                self.cookies.note_backlog(now)  # a queue of them: cookies before any DH
            for data, addr, raw in inits:
                p = self._on_initiation(data, addr, raw, now)
                if p is not None:
                    touched[id(p)] = p
        if inbound:
            self._route_inbound(inbound, now)
        for p in touched.values():
            self._flush(p, now)

    def _within_budget(self, batch: list[tuple[bytes, Any]]) -> list[tuple[bytes, Any]]:
        """The round's datagrams each sender may have processed: a sender beyond its
        fair share loses the rest before any decryption (see proto/fairshare.py).
        Senders are peers by source address; unknown sources share one budget."""
        get = self._by_raw.get
        budget = self._budget
        if not budget.plan([get(raw) for _, raw in batch]):
            return batch
        kept = []
        admit = budget.admit
        cut: dict[int, HubPeer] = {}
        for item in batch:
            p = get(item[1])
            if admit(p):
                kept.append(item)
            elif p is not None:
                p.stats.drops["peer_budget"] += 1
                cut[id(p)] = p
            else:
                self.stats.drops["peer_budget"] += 1
        for p in cut.values():
            self._isolate(p)
        return kept

    def _check_overflow(self) -> None:
        """A full read: did the kernel drop datagrams at the shared socket's full queue?
        Then protect the peers that are up (see SHARED_BATCH)."""
        udp = self._udp
        if udp is None:
            return
        before = self.stats.drops["udp_queue_full"]
        udp.count_kernel_drops("udp_queue_full")
        if self.stats.drops["udp_queue_full"] <= before:
            return
        self._protect("overflows")

    def _protect(self, why: str) -> None:
        """Peers that are up (and those that come up) get queues of their own; the shared
        socket is read within SHARED_BATCH per turn from now on."""
        udp = self._udp
        if udp is None or self._protecting:
            return
        self._protecting = True
        udp.budget(SHARED_BATCH, SHARED_REST)
        self.log.warning("hub %s: the shared socket %s: peers that are up get queues of "
                         "their own", self.name, why)
        for p in self.peers.values():
            if p.up:
                self._isolate(p, "protected from the shared queue")
        if self._loop is not None:
            self._loop.call_soon(self._drain_shared)

    def _drain_shared(self) -> None:
        """Once, as the shared queue goes on its ration: what it holds is read now, in
        rounds through the budgets (the flood cut before decryption). The peers'
        datagrams that were queued behind the flood before they had queues of their
        own would otherwise wait for the ration to reach them: a full queue at the
        ration's pace, most of a second."""
        udp = self._udp
        for _ in range(DRAIN_ROUNDS):
            if udp is None or udp is not self._udp:
                return
            batch = udp.drain([], READ_BATCH)
            if batch:
                self._on_udp_batch(batch)
            if len(batch) < READ_BATCH:
                return

    def _isolate(self, p: HubPeer, why: str = "sends beyond its share") -> None:
        """Give a peer that sent beyond its share a receive queue of its own (see
        ``open_connected_twin``), read at most ISOLATED_BATCH datagrams per loop turn:
        when it goes on, the kernel drops its excess before this process spends
        anything on it, and the shared socket stays free for the others. Also for
        every peer that is up once the shared queue overflows (``why``)."""
        udp = self._udp
        if p in self._own or p.raw is None or udp is None or len(self._own) >= MAX_ISOLATED:
            return
        try:
            sock = open_connected_twin(udp.sock, p.raw, rcvbuf=ISOLATED_RCVBUF,
                                       bind_interface=self.config.bind_interface)
        except TunconnectorError as exc:
            self.stats.drops["isolate_failed"] += 1
            self.log.warning("hub %s: peer %s: %s", self.name, p.name, exc)
            return
        own = UdpEndpoint(sock, p.stats.drops)
        self._own[p] = OwnQueue(own, FloodJudge(FLOOD_WINDOW, FLOOD_RATIO, FLOOD_WINDOWS))
        own.start(functools.partial(self._on_own_batch, p), max_batch=ISOLATED_BATCH)
        self.log.info("hub %s: peer %s %s: own receive queue", self.name, p.name, why)

    def _on_own_batch(self, p: HubPeer, batch: list[tuple[bytes, Addr]]) -> None:
        """A batch from a peer's own queue; now and then, judge whether it floods."""
        self._on_udp_batch(batch)
        q = self._own.get(p)
        if q is None or self._loop is None:
            return  # the batch ended its session
        q.read += len(batch)
        now = self._loop.time()
        judge = q.judge
        if not judge.due(now):
            return
        self._sync_own_drops(p)
        was = judge.flooding
        if judge.sample(now, q.read, q.drops) == was:
            return
        if judge.flooding:
            q.endpoint.budget(FLOOD_BATCH, FLOOD_REST)
            self.log.warning("hub %s: peer %s: its queue keeps overflowing (a flood): "
                             "read at most %d datagrams per %.0f ms", self.name, p.name,
                             FLOOD_BATCH, FLOOD_REST * 1000)
        else:
            q.endpoint.budget(ISOLATED_BATCH, 0.0)
            self.log.info("hub %s: peer %s: no more loss at its queue: read in full",
                          self.name, p.name)

    def _unisolate(self, p: HubPeer) -> None:
        if p not in self._own:
            return
        self._sync_own_drops(p)
        self._own.pop(p).endpoint.close()

    def _sync_own_drops(self, p: HubPeer) -> None:
        """Add what the kernel dropped at the peer's own queue to its ``peer_budget``."""
        q = self._own.get(p)
        if q is None:
            return
        n = socket_drops(q.endpoint.sock)
        if n > q.drops:
            p.stats.drops["peer_budget"] += n - q.drops
            q.drops = n

    def _send_reset(self, session: int, addr: Addr, now: float) -> None:
        """Data for a session we do not have (we restarted, or it ended): tell the
        sender with an authenticated SESSION_RESET, so it handshakes again at once."""
        if self._udp is None or not self._reset_key:
            return
        if not (self._reset_per_source.allow(addr, now) and self._reset_total.allow(None, now)):
            return
        self.stats.drops["reset_sent"] += 1
        self._udp.sendto(encode_reset(self._reset_key, session), addr)

    def _end_session(self, p: HubPeer) -> None:
        """Forget a peer's session (it said it stops); its next handshake starts anew."""
        self._unisolate(p)
        for i in p.indices:
            if self._by_index.get(i) is p:
                del self._by_index[i]
        p.indices = set()
        if p.raw is not None and self._by_raw.get(p.raw) is p:
            del self._by_raw[p.raw]
        p.raw = None
        p.past_handshakes = p.handshakes
        p.native = None
        p.secure = None
        p.started = False
        p.timer_at = None

    def _follow(self, p: HubPeer, addr: Addr, raw: Any) -> None:
        old = p.addr
        if p.raw != raw:
            self._unisolate(p)  # its queue is connected to the old address
        if p.raw is not None and self._by_raw.get(p.raw) is p:
            del self._by_raw[p.raw]
        p.addr = addr
        p.raw = raw
        self._by_raw[raw] = p
        if old is None:
            self.log.info("hub %s: peer %s at %s", self.name, p.name, _fmt_addr(addr))
        elif old != addr:
            self.log.info("hub %s: peer %s moved %s -> %s", self.name, p.name,
                          _fmt_addr(old), _fmt_addr(addr))

    def _on_initiation(self, data: bytes, addr: Addr, raw: Any, now: float) -> HubPeer | None:
        stats = self.stats
        verdict = self._screen.check(data, addr[0], now)
        if not isinstance(verdict, Accept):
            stats.drops[verdict.reason] += 1
            if isinstance(verdict, Reply) and self._udp is not None:
                self._udp.sendto(verdict.packet, addr)
            return None
        self._dh += 1
        hs = HandshakeState("IKpsk2", initiator=False, prologue=PROLOGUE, static=self._static,
                            psk=bytes(32))
        try:
            payload = hs.read_message(bytes(verdict.body[HEADER_LEN:-MAC_LEN]))
        except RemoteProtocolError:
            stats.drops["handshake_failed"] += 1
            return None
        p = self.table.by_key(hs.rs or b"")
        if p is None:
            stats.drops["unknown_peer"] += 1
            return None
        secure = self._ensure_channel(p)
        secure.accept_initiation(hs, payload, int.from_bytes(data[4:8], "big"), now, raw)
        if secure.last_authenticated == now and secure.authenticated_source == raw:
            self._follow(p, addr, raw)
            if not p.started and p.native is not None:
                p.started = True
                p.native.start(now, initiator=False)
            self._index_peer(p)
        return p

    def _index_peer(self, p: HubPeer) -> None:
        if p.secure is None:
            return
        now_idx = set(p.secure.local_indices())
        for i in p.indices - now_idx:
            if self._by_index.get(i) is p:
                del self._by_index[i]
        for i in now_idx - p.indices:
            self._by_index[i] = p
        p.indices = now_idx

    def _route_inbound(self, items: list[tuple[HubPeer, Any]], now: float) -> None:
        to_dev: list[Any] = []
        fwd: dict[int, tuple[HubPeer, list[Any]]] = {}
        router = self.router
        dev = self.device
        whole = dev is not None and dev.vnet_hdr and not self.tap
        extra = 0  # segments of the super-packets written whole, beyond one each
        for p, frame in items:
            if type(frame) is GsoFrame:
                if whole:
                    # the super-packet's IP header is its segments' header: the same
                    # anti-spoofing and routing verdict, for all of them at once
                    data = frame.data
                    v = router.inbound(p, memoryview(data)[VNET_HDR_LEN:])
                    st = p.stats
                    n = _segment_count(data)
                    if v.action == TO_DEVICE:  # written whole: the kernel segments it
                        st.rx_packets += n
                        st.rx_bytes += len(frame)
                        to_dev.append(frame)
                        extra += n - 1
                        continue
                    if v.action != FORWARD:
                        st.drops[v.reason] += n
                        continue
                    # to another peer (client-to-client): segmented as before
                try:
                    segs: list[Any] = frame.segments(tap=self.tap)
                except RemoteProtocolError:
                    p.stats.drops["bad_gso"] += 1
                    continue
            else:
                segs = [frame]
            for f in segs:
                st = p.stats
                st.rx_packets += 1
                st.rx_bytes += len(f)
                if self.tap:
                    self._switch_from_peer(p, f, now, to_dev, fwd)
                    continue
                v = router.inbound(p, f)
                if v.action == TO_DEVICE:
                    to_dev.append(f)
                elif v.action == FORWARD:
                    q: Any = v.peer
                    fwd.setdefault(id(q), (q, []))[1].append(f)
                else:
                    st.drops[v.reason] += 1
        if to_dev:
            self._to_device(to_dev, now, extra)
        for q, frames in fwd.values():
            self._send_to_peer(q, frames, now)

    def _switch_from_peer(self, p: HubPeer, f: Any, now: float, to_dev: list[Any],
                          fwd: dict[int, tuple[HubPeer, list[Any]]]) -> None:
        egress, refused = self.macs.decide(f, p, now)
        if refused is not None:  # a pinned or busy MAC, or beyond the peer's cap
            p.stats.drops[refused] += 1
        elif egress is None:
            p.stats.drops["hairpin"] += 1
        elif egress is LOCAL:
            to_dev.append(f)
        elif egress == FLOOD:
            to_dev.append(f)
            if self.config.client_to_client:
                for q in self.peers.values():
                    if q is not p and q.up:
                        fwd.setdefault(id(q), (q, []))[1].append(f)
        elif not self.config.client_to_client:
            p.stats.drops["client_to_client"] += 1
        else:
            dest: Any = egress
            fwd.setdefault(id(dest), (dest, []))[1].append(f)

    def _to_device(self, frames: list[Any], now: float, extra: int = 0) -> None:
        """Write frames to the device; ``extra``: packets the super-packets among them
        stand for beyond one each (for the counters)."""
        dev = self.device
        if dev is None:  # deleted, not back yet
            self.stats.drops["device_gone"] += len(frames) + extra
            return
        st = self.stats
        n = len(frames)
        st.rx_bytes += sum(map(len, frames))
        if dev.vnet_hdr and n > 1 and not self.tap:
            # clients without offload send plain segments: a run of one TCP flow goes
            # to the kernel as one super-packet (after the router's checks, per segment)
            frames = coalesce_tcp(frames)
        bad = dev.write_batch(frames)
        if bad:
            st.drops["device_refused"] += bad
            self._device_check()  # refused, or gone: the supervisor asks the fd
        st.rx_packets += n + extra - bad
        st.last_rx = now

    # ------------------------------------------------------------------ device -> wire
    def _on_device_readable(self) -> None:
        dev = self.device
        if dev is None or self._loop is None:
            return
        try:
            frames = dev.read_batch(64)
        except TunconnectorError as exc:
            self.stats.drops["device_read_error"] += 1
            self.log.warning("%s", exc)
            self._device_check()
            return
        if not frames:
            return
        if dev.vnet_hdr:  # no TUNSETOFFLOAD: a whole packet behind a zero header
            frames = [f[VNET_HDR_LEN:] for f in frames]
        now = self._loop.time()
        st = self.stats
        st.tx_packets += len(frames)
        st.tx_bytes += sum(map(len, frames))
        groups: dict[int, tuple[HubPeer, list[Any]]] = {}
        if self.tap:
            macs = self.macs
            up = [q for q in self.peers.values() if q.up]
            for f in frames:
                egress, refused = macs.decide(f, LOCAL, now)
                if refused is not None:
                    st.drops[refused] += 1
                elif egress == FLOOD:
                    for q in up:
                        groups.setdefault(id(q), (q, []))[1].append(f)
                elif egress is not None and egress is not LOCAL:
                    q = egress  # type: ignore[assignment]
                    groups.setdefault(id(q), (q, []))[1].append(f)
        else:
            outbound = self.router.outbound
            for f in frames:
                r: Any = outbound(f)
                if r is None:
                    st.drops["no_route"] += 1
                    continue
                groups.setdefault(id(r), (r, []))[1].append(f)
        for q, fs in groups.values():
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
            self._flush(q, now)

    # ------------------------------------------------------------------ control, timer
    def _flush(self, p: HubPeer, now: float) -> None:
        native = p.native
        if native is None:
            return
        msgs = native.messages_to_send()
        if msgs and self._udp is not None and p.addr is not None:
            for m in msgs:
                self._udp.sendto(m, p.addr)
        exited = False
        while (ev := native.next_event()) is not None:
            if isinstance(ev, PeerUp):
                self._peer_state(p, True, "alive")
            elif isinstance(ev, PeerDown) and ev.reason == "exit":
                exited = True
                self._peer_state(p, False, "it said it stops")
            elif isinstance(ev, PeerDown):
                self._peer_state(p, False, f"nothing received for {ev.silent_for:.1f}s")
        secure = p.secure
        if secure is not None:
            while (sev := secure.next_event()) is not None:
                if isinstance(sev, HandshakeComplete):
                    p.last_handshake = time.time()
                    self.stats.connects += 1
                elif isinstance(sev, AuthFailure):
                    self.log.warning("hub %s: peer %s: %s", self.name, p.name, sev.message)
                elif isinstance(sev, SessionExpired):
                    self.log.info("hub %s: peer %s: session expired", self.name, p.name)
                elif isinstance(sev, Rekeyed):
                    p.last_handshake = time.time()
            self._index_peer(p)
        if exited:
            self._end_session(p)
        self._schedule(p)

    def _peer_state(self, p: HubPeer, up: bool, why: str) -> None:
        if p.up == up:
            return
        p.up = up
        if up and self._protecting:
            self._isolate(p, "protected from the shared queue")
        if up:
            self.log.info("hub %s: peer %s up (%s, %s)", self.name, p.name,
                          _fmt_addr(p.addr) if p.addr else "-", p.address or "no address")
        else:
            self.log.warning("hub %s: peer %s down: %s", self.name, p.name, why)
            if self.tap:
                self.macs.forget_port(p)
        hooks = self._hooks
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
        if t is None:
            p.timer_at = None
            return
        if p.timer_at == t:
            return
        p.timer_at = t
        heapq.heappush(self._heap, (t, next(self._seq), p))
        if self._timer_at is None or t < self._timer_at:
            self._arm()

    def _arm(self) -> None:
        heap = self._heap
        while heap and heap[0][2].timer_at != heap[0][0]:
            heapq.heappop(heap)  # stale: the peer was rescheduled or removed
        if self._loop is None or not heap:
            return
        when = max(heap[0][0], self._loop.time())
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= when:
                return
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._loop is None or self._stopping:
            return
        now = self._loop.time()
        heap = self._heap
        due: list[HubPeer] = []
        while heap and heap[0][0] <= now:
            t, _, p = heapq.heappop(heap)
            if p.timer_at == t:
                p.timer_at = None
                due.append(p)
        for p in due:
            if p.native is None:
                continue
            p.native.handle_timer(now)
            self._flush(p, now)
        if self._reasm.pending:
            self._reasm.handle_timer(now)
        self._arm()

    # ------------------------------------------------------------------ state & teardown
    async def _close_all(self) -> None:
        self._stopping = True
        self._unsupervise_device()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        self._heap.clear()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        self._protecting = False
        self._detach_device()
        self._kernel_routes.clear()  # they went with the device
        self._own_mac = None  # a new start: a new device, its own MAC
        for p in self.peers.values():
            self._unisolate(p)
            p.native = None
            p.secure = None
            p.started = False
            p.up = False
            p.addr = None
            p.raw = None
            p.timer_at = None
            p.indices = set()
        self._by_raw.clear()
        self._by_index.clear()
        self.table.clear()


class PeerHooks:
    """Fires ``[tunnel.hooks]`` ``peer_up``/``peer_down`` for a hub's peers: the
    tunnel's hook environment plus the peer's name, endpoint and tunnel address."""

    def __init__(self, hooks: Any, base_env: Callable[[], dict[str, str]]) -> None:
        self.hooks = hooks
        self.base_env = base_env

    def _fire(self, event: str, p: HubPeer) -> None:
        from .hooks import peer_env

        env = dict(self.base_env())
        env.update(peer_env(name=p.name, endpoint=_fmt_addr(p.addr) if p.addr else None,
                            remote_address=str(p.address) if p.address else None))
        env["TUNCONNECTOR_PEER_PUBLIC_KEY"] = p.key_b64
        self.hooks.fire(event, env)

    def peer_up(self, hub: Hub, p: HubPeer) -> None:
        self._fire("peer_up", p)

    def peer_down(self, hub: Hub, p: HubPeer) -> None:
        self._fire("peer_down", p)


def _segment_count(data: Any) -> int:
    """Packets a super-packet (virtio_net_hdr + packet) stands for, for the counters."""
    gso_type, hdr_len, size = data[1], data[2] | data[3] << 8, data[4] | data[5] << 8
    if gso_type == 0 or size == 0:
        return 1
    return max(1, -(-(len(data) - VNET_HDR_LEN - hdr_len) // size))


def _fmt_addr(addr: Any) -> str:
    if addr is None:
        return "-"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
