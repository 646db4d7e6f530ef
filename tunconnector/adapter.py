"""The generic tunnel adapter: one device, one UDP socket or TCP stream, one timer, and a
sans-I/O :class:`~tunconnector.proto.connection.Connection` that makes every decision.

What :class:`ConnectionTunnel` does is what aioquic's ``QuicConnectionProtocol`` does for
a ``QuicConnection``: hand the connection what the device and the transport produced
(with ``now``), write out what it returns, re-arm one timer, and turn its events into
tunnel state (``up`` on :class:`Connected`, ``down`` on :class:`Disconnected`). It holds
no protocol state. Its public surface is :class:`tunconnector.tunnel.Tunnel`'s (state,
stats, ``wait_up``, listeners, ``status()``, start/stop/close), so the node, status,
metrics, health checks and bonds drive it unchanged.

:class:`ConfigAssigned` events (a server pushing our address, routes, MTU) are applied
to the device with netlink and undone when the tunnel stops.

:func:`make_tunnel` picks the adapter for a config: framings implemented as connections
(``openvpn``) run here, the others in :class:`~tunconnector.tunnel.Tunnel`.
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from .config import TunnelConfig
from .devicewatch import SupervisedDevice
from .errors import ConfigError, DeviceError, TransportError, TunconnectorError
from .io import netlink as nl
from .io import tcp as tcpio
from .io.device import Device
from .io.offload import enable_socket_offload, offload_env_off
from .io.udp import (
    SHARED_BATCH,
    SHARED_REST,
    UdpEndpoint,
    family_for,
    normalize,
    open_connected_twin,
    open_udp,
    retire_twin,
)
from .proto.admission import UNPROVEN_RECEIVED, Admission
from .proto.connection import (
    AddressChanged,
    ConfigAssigned,
    Connected,
    Connection,
    Disconnected,
    Rekeyed,
)
from .proto.openvpn import push
from .tunnel import State, TunnelStats, no_peer

log = logging.getLogger("tunconnector.tunnel")

#: a Connection for a tunnel, made when the transport opens (one per TCP stream on a server)
ConnectionFactory = Callable[[], Connection]

#: how often the replay state is saved with openvpn_replay_persist (seconds)
PERSIST_INTERVAL = 1.0
#: OpenVPN's default tun-mtu: both ends of an OpenVPN tunnel use it unless configured
OPENVPN_TUN_MTU = 1500


def _fmt_addr(addr: Any) -> str:
    if not isinstance(addr, tuple):
        return "-" if addr is None else str(addr)
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def derive_mtu(cfg: TunnelConfig) -> int:
    """The device MTU: configured, else what the framing's peers use by default."""
    if cfg.mtu is not None:
        return cfg.mtu
    return OPENVPN_TUN_MTU


def connection_factory(cfg: TunnelConfig, *, clock_offset: float, max_frame: int, mtu: int,
                       remote: Any) -> ConnectionFactory:
    """Load the key material of ``cfg`` now (errors before any device opens) and return
    what makes its connections."""
    if cfg.openvpn_config:
        from .ovpnclient import tls_connection_factory

        return tls_connection_factory(cfg, remote)
    if cfg.framing == "openvpn" and cfg.openvpn_secret:
        from .keys import load_openvpn_key_file
        from .proto.openvpn.static import StaticKeyConnection

        key = load_openvpn_key_file(cfg.openvpn_secret)
        persist = cfg.openvpn_replay_persist

        def make() -> Connection:
            return StaticKeyConnection(
                key, direction=cfg.key_direction, cipher=cfg.openvpn_cipher,
                auth=cfg.openvpn_auth, mode=cfg.mode, remote=remote,
                stream=cfg.proto == "tcp", keepalive=cfg.keepalive,
                dead_after=cfg.dead_after, max_frame=max_frame, dev_type=cfg.dev_type,
                tun_mtu=mtu, clock_offset=clock_offset, allow_float=cfg.openvpn_float,
                persisted=None if persist is None else load_persisted(persist, cfg.name),
            )

        return make
    raise ConfigError(f"tunnel {cfg.name}: framing {cfg.framing!r} has no connection "
                      "implementation for these settings")


def load_persisted(path: str, tunnel: str) -> dict[str, Any]:
    """The replay state a previous process saved (``openvpn_replay_persist``); a missing
    file is a first start, an unreadable one is said and ignored."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("tunnel %s: replay state %s unreadable, starting afresh: %s", tunnel,
                    path, exc, extra={"tunnel": tunnel})
        return {}
    return data if isinstance(data, dict) else {}


def save_persisted(path: str, state: dict[str, Any]) -> None:
    """Write the replay state atomically (a crash leaves the old file or the new one)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def uses_connection(cfg: TunnelConfig) -> bool:
    """Whether ``cfg`` runs on :class:`ConnectionTunnel` (else the native Tunnel)."""
    return cfg.framing == "openvpn" or bool(cfg.openvpn_config)


def make_tunnel(cfg: TunnelConfig, *, netlink: nl.Netlink | None = None) -> Any:
    """The tunnel object for ``cfg``: a ConnectionTunnel, a native Tunnel, or a hub
    (a server with ``[[tunnel.peer]]`` tables: :class:`tunconnector.hub.Hub`)."""
    if cfg.is_hub:
        from .hub import Hub

        return Hub(cfg, netlink=netlink)
    if cfg.openvpn_config and cfg.mode == "server":
        from .ovpnserver import OpenVPNServerTunnel

        return OpenVPNServerTunnel.from_tunnel_config(cfg, netlink=netlink)
    if uses_connection(cfg):
        return ConnectionTunnel(cfg, netlink=netlink)
    from .tunnel import Tunnel

    return Tunnel(cfg, netlink=netlink)


class _Stream:
    """One TCP stream and the connection reading it."""

    __slots__ = ("proto", "conn", "unproven_rx")

    def __init__(self, proto: tcpio.StreamProtocol, conn: Connection) -> None:
        self.proto = proto
        self.conn = conn
        self.unproven_rx = 0  # bytes received before it proved itself (server)


class ConnectionTunnel(SupervisedDevice):
    """Runs one :class:`TunnelConfig` whose wire protocol is a Connection."""

    def __init__(self, config: TunnelConfig, *, netlink: nl.Netlink | None = None,
                 factory: ConnectionFactory | None = None) -> None:
        self.config = config
        self.name = config.name
        self._init_state()
        self.stats = TunnelStats()
        self.device: Device | None = None
        self.device_name: str | None = config.device
        self.mtu = derive_mtu(config)
        self.max_frame = self.mtu + (18 if config.dev_type == "tap" else 0)
        self.peer: Any = None
        self.log = logging.LoggerAdapter(log, {"tunnel": self.name})
        self.netlink = netlink or nl.Netlink()
        self._own_netlink = netlink is None
        self._factory = factory
        self._make: ConnectionFactory | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: UdpEndpoint | None = None
        #: UDP server: a socket connected to the live peer (see _follow_peer)
        self._twin: UdpEndpoint | None = None
        self._conn: Connection | None = None  # the connection traffic goes to
        self._stream: _Stream | None = None  # TCP: the stream of self._conn
        # TCP server: streams not yet authentic; bounded, oldest dropped first, with a
        # deadline; every lookup O(1) (a flood of them must not slow the live one down)
        self._candidates: Admission[tcpio.StreamProtocol, _Stream] = Admission()
        self._candidate_of: dict[int, _Stream] = {}  # id(connection) -> its stream
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._reading_device = False
        self._created_device = False
        self._stopping = False
        self._remote: Any = None
        self._assigned: list[ConfigAssigned] = []  # applied, undone on stop
        self._applied: list[Applied] = []  # what applying each of them did
        self._assign_tasks: set[asyncio.Task[None]] = set()
        self._retired: list[Connection] = []  # replaced connections: their drops count
        #: called with each ConfigAssigned once it is on the device (openvpn's up scripts)
        self.assign_listeners: list[Callable[[ConfigAssigned], None]] = []
        self._persist_handle: asyncio.TimerHandle | None = None
        self._persisted: dict[str, Any] | None = None  # last saved replay state

    # ------------------------------------------------------------------ public API
    def last_heard(self) -> float | None:
        """Loop time of the last authentic message from the peer (pings included)."""
        if self._conn is not None:
            heard = getattr(self._conn, "last_heard", None)
            if heard is not None:
                return float(heard)
        return self.stats.last_rx

    def all_drops(self) -> dict[str, int]:
        # what the kernel dropped at a full receive queue, before this process saw it
        if self._udp is not None:
            self._udp.count_kernel_drops("udp_queue_full")
        if self._twin is not None:
            self._twin.count_kernel_drops("peer_queue_full")
        drops = collections.Counter(self.stats.drops)
        for conn in self._connections():
            drops.update(conn.drops)
        for stream in self._candidates.values():  # what strangers sent is counted too
            drops.update(stream.conn.drops)
        for conn in self._retired:
            drops.update(conn.drops)
        return {k: v for k, v in sorted(drops.items()) if v}

    def status(self) -> dict[str, Any]:
        cfg = self.config
        now = self._loop.time() if self._loop is not None else None
        last = self.last_heard()
        local = None
        try:
            if self._udp is not None:
                local = _fmt_addr(tuple(self._udp.local_address))
            elif self._server is not None:
                socks = getattr(self._server, "sockets", None) or []
                local = _fmt_addr(tuple(socks[0].getsockname())) if socks else None
        except OSError:
            local = None
        crypto = None
        if self._conn is not None and now is not None:
            crypto = self._conn.status(now)
        return {
            "name": self.name,
            "mode": cfg.mode,
            "proto": cfg.proto,
            "framing": cfg.framing,
            "transport": f"{cfg.proto}/{cfg.framing}",
            "dev_type": cfg.dev_type,
            "device": self.device_name,
            "netns": cfg.netns,
            "addresses": list(cfg.address)
            + [a for ev in self._assigned for a in ev.addresses],
            "mtu": self.mtu,
            "local": local,
            "peer": _fmt_addr(self.peer) if self.peer else None,
            "state": self.state.value,
            "error": self.error,
            "encrypted": bool(crypto and crypto.get("cipher") not in (None, "none")),
            "since": self.since,
            "last_rx_age": round(now - last, 3) if (now is not None and last is not None)
            else None,
            "rx_bytes": self.stats.rx_bytes,
            "tx_bytes": self.stats.tx_bytes,
            "rx_packets": self.stats.rx_packets,
            "tx_packets": self.stats.tx_packets,
            "connects": self.stats.connects,
            "drops": self.all_drops(),
            "data_path": f"{cfg.framing} connection, per-packet",
            "fastpath": {},
            "crypto": crypto,
            **self._device_status(),
        }

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.is_running:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self.error = None
        self._retired = []
        self._set_state(State.STARTING)
        try:
            if self.config.mode == "client":
                self._remote = await self._resolve(self.config.remote or "",
                                                   self.config.remote_port)
            self._make = self._factory or connection_factory(
                self.config, clock_offset=time.time() - self._loop.time(),
                max_frame=self.max_frame, mtu=self.mtu, remote=self._remote)
            await self._open_device()
            await self._supervise_device()
            if self.config.proto == "udp":
                self._open_udp()
            else:
                await self._open_tcp()
        except BaseException as exc:
            self.error = str(exc) if isinstance(exc, TunconnectorError) else repr(exc)
            await self._close_all()
            self._set_state(State.FAILED)
            raise
        if self.config.openvpn_replay_persist:
            self._persist_tick()
        self.log.info("tunnel %s started: %s %s/%s device %s mtu %d", self.name,
                      self.config.mode, self.config.proto, self.config.framing,
                      self.device_name, self.mtu)

    async def stop(self) -> None:
        if self.state in (State.STOPPED, State.FAILED) and self.device is None:
            return
        if self._loop is not None:
            now = self._loop.time()
            for conn in self._connections():  # tell the peer we leave (OCC EXIT ...)
                conn.close(now)
                self._flush(conn, now)
            if self._stream is not None:
                self._stream.proto.close()  # a graceful close still sends what was queued
        self._stopping = True
        self._save_replay_state()
        await self._unassign()
        await self._close_all()
        self._set_state(State.STOPPED)
        self.log.info("tunnel %s stopped", self.name)

    async def close(self) -> None:
        await self.stop()
        if self._own_netlink:
            self.netlink.close()

    # ------------------------------------------------------------------ replay-persist
    def _save_replay_state(self) -> None:
        """Write the connection's replay state if it changed (openvpn_replay_persist)."""
        path = self.config.openvpn_replay_persist
        conn = self._conn
        get = getattr(conn, "persist_state", None)
        if not path or get is None:
            return
        state = get()
        if state == self._persisted:
            return
        try:
            save_persisted(path, state)
        except OSError as exc:
            self.stats.drops["replay_persist_error"] += 1
            self.log.warning("tunnel %s: cannot save the replay state to %s: %s",
                             self.name, path, exc)
            return
        self._persisted = state

    def _persist_tick(self) -> None:
        """Once a second: a crash replays at most the last second's packets."""
        self._persist_handle = None
        if self._loop is None or self._stopping:
            return
        self._save_replay_state()
        self._persist_handle = self._loop.call_later(PERSIST_INTERVAL, self._persist_tick)

    # ------------------------------------------------------------------ device
    async def _open_device(self) -> None:
        cfg = self.config
        name = cfg.device or ""
        existed = False
        if name:
            existed = await self.netlink.call(nl.link_exists, name)
        dev = Device(name, cfg.dev_type)
        self.device = dev
        self.device_name = dev.name
        self._created_device = not existed
        if cfg.netns:
            await self.netlink.call(nl.move_to_netns, dev.name, cfg.netns)
        await self.netlink.call(nl.configure, dev.name, addresses=cfg.interfaces,
                                mtu=self.mtu, netns=cfg.netns)
        if existed:
            self.log.info("attached to existing device %s (left in place on exit)", dev.name)

    def _on_device_readable(self) -> None:
        dev = self.device
        if dev is None or self._loop is None:
            return
        frames = self._read_device(dev)
        if not frames:
            return
        stats = self.stats
        stats.tx_packets += len(frames)
        stats.tx_bytes += sum(map(len, frames))
        conn = self._conn
        if conn is None:
            stats.drops[no_peer(stats)] += len(frames)
            return
        now = self._loop.time()
        conn.send_frames(frames, now)
        stats.wire_tx += len(frames)
        self._flush(conn, now)

    def _to_device(self, frames: list[bytes], now: float) -> None:
        dev = self.device
        if dev is None:
            self.stats.drops["device_gone"] += len(frames)
            return
        bad = dev.write_batch(frames)
        stats = self.stats
        if bad:
            stats.drops["device_refused"] += bad
            self._device_check()
        stats.rx_packets += len(frames) - bad
        stats.rx_bytes += sum(map(len, frames))
        stats.last_rx = now

    # ------------------------------------------------------------------ transports
    async def _resolve(self, host: str, port: int) -> Any:
        assert self._loop is not None
        try:
            infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise TransportError(f"cannot resolve remote {host!r}: {exc.strerror}") from exc
        return normalize(infos[0][4])

    def _open_udp(self) -> None:
        cfg = self.config
        assert self._loop is not None and self._make is not None
        if cfg.mode == "client":
            family = family_for(cfg.bind or (self._remote[0] if self._remote else None))
        else:
            family = family_for(cfg.bind) if cfg.bind else socket.AF_INET6
        port = cfg.port if (cfg.mode == "server" or cfg.port) else 0
        sock = open_udp(bind=cfg.bind, port=port, family=family,
                        bind_interface=cfg.bind_interface)
        self._udp = UdpEndpoint(sock, self.stats.drops)
        self._udp.enable_offload(runs=False)  # GSO/GRO batch syscalls
        self._udp.start(self._on_udp_batch)
        conn = self._conn = self._make()
        if cfg.mode == "client":
            self.peer = self._remote
        self._set_state(State.DOWN)
        now = self._loop.time()
        conn.start(now)
        self._device_reader(True)
        self._flush(conn, now)

    def _new_udp_socket(self) -> None:
        """A client about to reconnect gets a fresh ephemeral source port, as openvpn's
        own client does: a server may still hold state for the old address and ignore
        a new session from it. A configured ``port`` is kept."""
        cfg = self.config
        if cfg.mode != "client" or cfg.port or self._udp is None:
            return
        family = family_for(cfg.bind or (self._remote[0] if self._remote else None))
        try:
            sock = open_udp(bind=cfg.bind, port=0, family=family,
                            bind_interface=cfg.bind_interface)
        except (OSError, TransportError) as exc:
            self.log.warning("cannot open a new UDP socket (keeping the old one): %s", exc)
            return
        self._drop_twin()  # bound to the old port
        self._udp.close()
        self._udp = UdpEndpoint(sock, self.stats.drops)
        self._udp.enable_offload(runs=False)  # GSO/GRO batch syscalls
        self._udp.start(self._on_udp_batch)

    def _follow_peer(self, addr: Any) -> None:
        """UDP: give the live peer at ``addr`` (a server's client, or a client's server
        as its authenticated datagrams came from) a socket of its own, connected to it on
        our address and port (``open_connected_twin``); the kernel queues its datagrams
        there, so a stranger flooding the shared socket fills only that one, which is then
        read with a budget (SHARED_BATCH, SHARED_REST). The shared socket stays: an
        authenticated move of the peer (float), a restarted peer, a client's next server
        of its ``remote`` list or an answer from another address of a multi-homed server
        still arrive there, and the socket follows the peer. Replies leave from the
        shared socket (same address and port)."""
        udp = self._udp
        if udp is None or self.config.proto != "udp":
            return
        twin = self._twin
        if twin is not None:
            if twin.remote == addr:
                return
            self._drop_twin()
        if addr is None:
            return
        try:
            sock = open_connected_twin(udp.sock, udp.tx_addr(addr), rcvbuf=4 << 20,
                                       bind_interface=self.config.bind_interface)
        except TransportError as exc:
            self.stats.drops["twin_failed"] += 1
            self.log.warning("peer %s: %s", _fmt_addr(addr), exc)
            return
        twin = self._twin = UdpEndpoint(sock, self.stats.drops)
        twin.remote = addr
        off = enable_socket_offload(sock, want=not offload_env_off())
        twin.gro = off.gro
        twin.start(self._on_udp_batch)
        udp.budget(SHARED_BATCH, SHARED_REST)

    def _drop_twin(self) -> None:
        twin, self._twin = self._twin, None
        retire_twin(twin, self._udp)

    def _on_udp_batch(self, batch: list[tuple[bytes, Any]]) -> None:
        conn = self._conn
        if conn is None or self._loop is None:
            return
        now = self._loop.time()
        self.stats.wire_rx += len(batch)
        receive = conn.receive_datagram
        last_raw: Any = None
        addr: Any = None
        for data, raw in batch:
            if raw != last_raw:
                last_raw, addr = raw, normalize(raw)
            receive(bytes(data) if type(data) is not bytes else data, addr, now)
        self._flush(conn, now)

    async def _open_tcp(self) -> None:
        cfg = self.config
        assert self._loop is not None and self._make is not None
        self._set_state(State.DOWN)
        if cfg.mode == "server":
            family = family_for(cfg.bind) if cfg.bind else socket.AF_INET6
            sock = tcpio.listen_socket(bind=cfg.bind, port=cfg.port, family=family,
                                       bind_interface=cfg.bind_interface)
            self._server = await self._loop.create_server(self._protocol, sock=sock)
        else:
            self._conn = self._make()
            self._conn.start(self._loop.time())
            self._tasks.append(asyncio.create_task(tcpio.keep_connected(
                self._remote, self._protocol, bind=cfg.bind, port=cfg.port,
                bind_interface=cfg.bind_interface, stopping=lambda: self._stopping,
                log=self.log)))
        self._device_reader(True)

    def _protocol(self) -> tcpio.StreamProtocol:
        return tcpio.StreamProtocol(self._on_stream_data, self._on_stream_lost,
                                    self._on_stream_made, self._on_stream_pause)

    def _on_stream_made(self, proto: tcpio.StreamProtocol) -> None:
        assert self._loop is not None and self._make is not None
        now = self._loop.time()
        self.stats.connects += 1
        if self.config.mode == "client":
            assert self._conn is not None
            stream = _Stream(proto, self._conn)
            self._stream = stream
            self.peer = normalize(proto.peername) if proto.peername else self._remote
            self.log.info("connected to %s", _fmt_addr(self.peer))
        else:
            conn = self._make()
            conn.start(now)
            stream = _Stream(proto, conn)
            for old in self._candidates.add(proto, stream, now):  # moves on authentication
                self._candidate_of.pop(id(old.conn), None)
                self.stats.drops["unproven_evicted"] += 1
                old.proto.abort()
            self._candidate_of[id(conn)] = stream
        stream.conn.connection_made(now)
        self._flush(stream.conn, now)

    def _find_stream(self, proto: tcpio.StreamProtocol) -> _Stream | None:
        if self._stream is not None and self._stream.proto is proto:
            return self._stream
        return self._candidates.get(proto)

    def _on_stream_data(self, proto: tcpio.StreamProtocol, data: bytes) -> None:
        stream = self._find_stream(proto)
        if stream is None or self._loop is None:
            return
        now = self._loop.time()
        if stream is not self._stream:
            stream.unproven_rx += len(data)
            if stream.unproven_rx > UNPROVEN_RECEIVED:  # much talk and no proof: a stranger
                self._drop_candidate(stream, "unproven_overflow")
                return
        stream.conn.receive_stream(data, now)
        self._flush(stream.conn, now)

    def _drop_candidate(self, stream: _Stream, reason: str) -> None:
        self._candidates.pop(stream.proto)
        self._candidate_of.pop(id(stream.conn), None)
        self.stats.drops[reason] += 1
        stream.proto.abort()

    def _on_stream_lost(self, proto: tcpio.StreamProtocol, exc: Exception | None) -> None:
        stream = self._find_stream(proto)
        if self._candidates.pop(proto) is not None and stream is not None:
            self._candidate_of.pop(id(stream.conn), None)
        if stream is not None and self._loop is not None and not self._stopping:
            now = self._loop.time()
            stream.conn.receive_stream(b"", now)  # EOF: the connection goes down
            self._flush(stream.conn, now)
        if stream is not None and stream is self._stream:
            self._stream = None
            if not self._stopping:
                self.log.warning("connection to %s lost%s", _fmt_addr(self.peer),
                                 f": {exc}" if exc else "")
                self._set_state(State.DOWN)
            self._device_reader(True)

    def _on_stream_pause(self, proto: tcpio.StreamProtocol, paused: bool) -> None:
        if self._stream is not None and self._stream.proto is proto:
            self._device_reader(not paused)

    def _stream_of(self, conn: Connection) -> _Stream | None:
        if self._stream is not None and self._stream.conn is conn:
            return self._stream
        return self._candidate_of.get(id(conn))

    def _promote(self, stream: _Stream) -> None:
        """A server's TCP stream authenticated: traffic moves to it."""
        old = self._stream
        self._candidates.pop(stream.proto)
        self._candidate_of.pop(id(stream.conn), None)
        self._stream = stream
        if self._conn is not None and self._conn is not stream.conn:
            self._retired.append(self._conn)
        self._conn = stream.conn
        self.peer = normalize(stream.proto.peername) if stream.proto.peername else None
        if old is not None and old is not stream:
            self.log.info("new connection from %s replaces the old one", _fmt_addr(self.peer))
            old.proto.abort()

    # ------------------------------------------------------------------ output + events
    def _flush(self, conn: Connection, now: float) -> None:
        """Write what ``conn`` produced, deliver its frames, act on its events."""
        if self._udp is not None:
            out = conn.datagrams_to_send(now)
            if out:
                udp = self._udp
                run: list[bytes] = []
                run_addr: Any = None
                for data, addr in out:
                    if addr != run_addr and run:
                        udp.send_batch(run, run_addr)
                        run = []
                    run_addr = addr
                    run.append(data)
                if run and run_addr is not None:
                    udp.send_batch(run, run_addr)
        else:
            chunks = conn.stream_to_send(now)
            if chunks:
                stream = self._stream_of(conn)
                if stream is not None:
                    stream.proto.writelines(chunks)
        frames = conn.frames_to_deliver()
        if frames:
            if conn is self._conn:
                self._to_device(frames, now)
            else:
                self.stats.drops["unknown_peer"] += len(frames)
        while (ev := conn.next_event()) is not None:
            self._on_event(conn, ev, now)
        self._arm_timer()

    def _on_event(self, conn: Connection, ev: Any, now: float) -> None:
        if isinstance(ev, Connected):
            stream = self._stream_of(conn)
            if stream is not None and stream is not self._stream:
                self._promote(stream)
                frames = conn.frames_to_deliver()
                if frames:
                    self._to_device(frames, now)
            if conn is not self._conn:
                return
            if ev.addr is not None:
                self.peer = ev.addr
                self._follow_peer(ev.addr)
            self.log.info("peer %s alive", _fmt_addr(self.peer))
            self._set_state(State.UP)
        elif conn is not self._conn:
            return
        elif isinstance(ev, Disconnected):
            self.log.warning("peer %s down: %s", _fmt_addr(self.peer), ev.reason)
            self._set_state(State.DOWN)
            stream = self._stream_of(conn)
            if stream is not None and ev.restart:
                stream.proto.abort()
            elif ev.restart and self._udp is not None and getattr(
                    conn, "new_port_on_restart", False):
                self._new_udp_socket()
        elif isinstance(ev, AddressChanged):
            old, self.peer = self.peer, ev.addr
            self._follow_peer(ev.addr)
            self.log.info("peer moved %s -> %s", _fmt_addr(old), _fmt_addr(ev.addr))
        elif isinstance(ev, ConfigAssigned):
            self._assign(ev)
        elif isinstance(ev, Rekeyed):
            self.log.debug("tunnel %s: rekeyed (key id %d)", self.name, ev.key_id)

    # ------------------------------------------------------------------ assigned config
    def _assign(self, ev: ConfigAssigned) -> None:
        """Apply a pushed configuration (addresses, routes, MTU) to the device."""
        if self._loop is None or self.device_name is None:
            return
        task = self._loop.create_task(self._apply(ev))
        self._assign_tasks.add(task)
        task.add_done_callback(self._assign_tasks.discard)

    async def _apply(self, ev: ConfigAssigned) -> None:
        # a new assignment replaces the previous one
        await self._unassign()
        name, netns = self.device_name or "", self.config.netns
        server = ev.extra.get("server") or ev.extra.get("bypass_host")
        try:
            done = await self.netlink.call(apply_assigned, name, ev, netns, server)
        except (DeviceError, NetlinkError, OSError, ValueError) as exc:
            self.stats.drops["config_assign_failed"] += 1
            self.log.warning("tunnel %s: cannot apply the assigned configuration: %s",
                             self.name, exc)
            return
        self._assigned.append(ev)
        self._applied.append(done)
        if ev.mtu is not None:
            self.mtu = ev.mtu
        if done.bypass_text:
            self.log.warning("tunnel %s: pushed route(s) %s cover the server %s: kept a host "
                             "route to it on the underlay (%s)", self.name,
                             ", ".join(done.covering), server, done.bypass_text)
        elif done.covering:
            self.log.warning("tunnel %s: pushed route(s) %s cover the server %s and no "
                             "underlay route to it was found: refused", self.name,
                             ", ".join(done.covering), server)
        for pushed, local in done.overlaps:
            self.log.warning("tunnel %s: pushed address %s overlaps the underlay's %s: "
                             "part of the local network now goes into the tunnel",
                             self.name, pushed, local)
        if done.existing:
            self.log.warning("tunnel %s: pushed route(s) %s already exist (not installed)",
                             self.name, ", ".join(done.existing))
        self.log.info("tunnel %s: assigned %s%s", self.name,
                      ", ".join(ev.addresses) or "no address",
                      f", routes {', '.join(done.installed)}" if done.installed else "")
        for cb in list(self.assign_listeners):
            try:
                cb(ev)
            except Exception:  # a listener bug must not break the tunnel
                self.log.exception("assignment listener failed")

    async def _unassign(self) -> None:
        for task in list(self._assign_tasks):
            if task is not asyncio.current_task():
                task.cancel()
        done, self._assigned = self._assigned, []
        applied, self._applied = self._applied, []
        if not done or self.device_name is None or self.device is None:
            return
        for ev, app in zip(done, applied, strict=False):
            try:
                await self.netlink.call(remove_assigned, self.device_name, ev,
                                        self.config.netns, app)
            except (DeviceError, NetlinkError, OSError, ValueError, RuntimeError) as exc:
                self.log.debug("tunnel %s: undoing assigned configuration: %s", self.name, exc)

    # ------------------------------------------------------------------ timer
    def _connections(self) -> list[Connection]:
        """The connections whose timers run: the live one (unproven ones only expire)."""
        return [] if self._conn is None else [self._conn]

    def _arm_timer(self) -> None:
        if self._loop is None or self._stopping:
            return
        times = [t for t in (c.get_timer() for c in self._connections()) if t is not None]
        deadline = self._candidates.get_timer()  # the oldest unproven stream's
        if deadline is not None:
            times.append(deadline)
        if not times:
            return
        when = max(min(times), self._loop.time())
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
        for stream in self._candidates.expired(now):
            self._candidate_of.pop(id(stream.conn), None)
            self.stats.drops["unproven_timeout"] += 1
            stream.proto.abort()
        for conn in self._connections():
            conn.handle_timer(now)
            self._flush(conn, now)
        self._arm_timer()

    # ------------------------------------------------------------------ state & teardown
    def _entered(self, new: State) -> None:
        if new == State.UP:
            self.stats.ever_up = True

    async def _close_all(self) -> None:
        self._stopping = True
        if self._persist_handle is not None:
            self._persist_handle.cancel()
            self._persist_handle = None
        self._unsupervise_device()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks.clear()
        for s in [*self._candidates.clear(), *([self._stream] if self._stream else [])]:
            s.proto.abort()
        self._candidate_of.clear()
        self._stream = None
        if self._server is not None:
            self._server.close()
            self._server = None
        self._drop_twin()
        if self._udp is not None:
            self._udp.count_kernel_drops("udp_queue_full")
            self._udp.close()
            self._udp = None
        if self._conn is not None:
            self._retired.append(self._conn)
        self._conn = None
        self._detach_device()
        self.peer = None


# ---------------------------------------------------------------------- netlink helpers
@dataclass(slots=True)
class Applied:
    """What :func:`apply_assigned` did: routes installed, routes that were already there
    (not ours to remove), pushed routes covering the server and the host route kept to it
    on the underlay (``bypass``: the kwargs it was added with), address overlaps."""

    installed: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    covering: list[str] = field(default_factory=list)
    bypass: dict[str, Any] | None = None
    bypass_text: str = ""
    overlaps: list[tuple[str, str]] = field(default_factory=list)


def _underlay_route(sock: Any, server: str, tun_idx: int) -> dict[str, Any] | None:
    """The route the kernel uses to reach ``server`` now, as kwargs for a host route
    (None: none, or only through the tunnel itself)."""
    addr = ipaddress.ip_address(server)
    try:
        msgs = sock.route("get", dst=server)
    except NetlinkError:
        return None
    for m in msgs:
        oif = m.get_attr("RTA_OIF")
        if oif is None or oif == tun_idx:
            continue
        kw: dict[str, Any] = {"dst": f"{server}/{addr.max_prefixlen}", "oif": oif}
        gw = m.get_attr("RTA_GATEWAY")
        if gw:
            kw["gateway"] = gw
        return kw
    return None


def apply_assigned(name: str, ev: ConfigAssigned, netns: str | None = None,
                   server: str | None = None) -> Applied:
    """Addresses, MTU and routes of a :class:`ConfigAssigned` on device ``name``
    (runs on the netlink thread). Pushed routes that cover ``server`` (the tunnel's own
    underlay peer) get a host route to it via its current underlay path first; without
    one they are refused."""
    done = Applied()
    ifaces = [ipaddress.ip_interface(a) for a in ev.addresses]
    with nl.ipr(netns) as sock:
        idx = sock.link_lookup(ifname=name)[0]
        underlay = [f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in sock.get_addr()
                    if a["index"] != idx and a.get_attr("IFA_ADDRESS")]
        done.overlaps = push.underlay_overlaps(list(ev.addresses), underlay)
        routes = list(ev.routes)
        if server:
            done.covering = push.routes_covering(routes, server)
            if done.covering:
                kw = _underlay_route(sock, server, idx)
                if kw is None:
                    routes = [r for r in routes
                              if str(ipaddress.ip_network(r[0], strict=False))
                              not in done.covering]
                else:
                    try:
                        sock.route("add", **kw)
                        done.bypass = kw
                    except NetlinkError as exc:
                        if exc.code != 17:  # EEXIST: a host route is there already
                            raise
                    done.bypass_text = f"{kw['dst']}" + (
                        f" via {kw['gateway']}" if kw.get("gateway") else "") + \
                        f" ifindex {kw['oif']}"
    nl.configure(name, addresses=ifaces, mtu=ev.mtu, netns=netns)
    with nl.ipr(netns) as sock:
        for dst, gateway in routes:
            net = str(ipaddress.ip_network(dst, strict=False))
            kw = {"dst": net, "oif": idx}
            if gateway:
                kw["gateway"] = gateway
            try:
                sock.route("add", **kw)
                done.installed.append(net)
            except NetlinkError as exc:
                if exc.code != 17:  # EEXIST: already there, and not ours
                    raise
                done.existing.append(net)
    return done


def remove_assigned(name: str, ev: ConfigAssigned, netns: str | None = None,
                    done: Applied | None = None) -> None:
    """Undo :func:`apply_assigned` (what is already gone is fine; routes that existed
    before are left alone)."""
    with nl.ipr(netns) as sock:
        if done is not None and done.bypass is not None:
            try:
                sock.route("del", **done.bypass)
            except NetlinkError:
                pass
        found = sock.link_lookup(ifname=name)
        if not found:
            return
        idx = found[0]
        for dst, gateway in ev.routes:
            net = str(ipaddress.ip_network(dst, strict=False))
            if done is not None and net not in done.installed:
                continue
            kw: dict[str, Any] = {"dst": net, "oif": idx}
            if gateway:
                kw["gateway"] = gateway
            try:
                sock.route("del", **kw)
            except NetlinkError:
                pass
        for a in ev.addresses:
            iface = ipaddress.ip_interface(a)
            try:
                sock.addr("del", index=idx, address=str(iface.ip),
                          prefixlen=iface.network.prefixlen)
            except NetlinkError:
                pass
