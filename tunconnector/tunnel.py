"""One tunnel at run time: a device, an underlay transport and a framing, glued together.

This is an asyncio adapter: the protocol decisions live in :mod:`.proto` connections
(native, raw, simpletun, and the OpenVPN framings: static key, TLS client); here we only
move bytes between the device fd and the socket, arm one timer, and turn connection
events into tunnel state changes. A :class:`ConfigAssigned` (a server pushing our
address, routes, MTU) is applied to the device with netlink and undone on stop.

State machine: ``stopped -> starting -> down <-> up``; ``failed`` when start failed.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyroute2.netlink.exceptions import NetlinkError

from .config import TunnelConfig
from .connections import (
    UNDERLAY_MTU,
    ConnectionFactory,
    connection_class,
    connection_factory,
    device_mtu,
    save_persisted,
)
from .connections import derive_mtu as derive_mtu  # where callers found it
from .devicewatch import DeviceSupervisor, SupervisedDevice
from .errors import DeviceError, TransportError, TunconnectorError
from .fastpath import FastPath
from .io import netlink as nl
from .io import tcp as tcpio
from .io.assign import Applied, apply_assigned, remove_assigned
from .io.device import Device
from .io.offload import enable_udp_gro
from .io.udp import (
    SHARED_BATCH,
    SHARED_REST,
    Addr,
    UdpEndpoint,
    family_for,
    normalize,
    open_connected_twin,
    open_udp,
    retire_twin,
)
from .keys import TunnelKeys, channel_from_config, load_tunnel_keys
from .lifecycle import State
from .multipath import MultiPathLink
from .proto.acceptor import PeerAcceptor
from .proto.admission import UNPROVEN_RECEIVED, Admission
from .proto.connection import (
    AddressChanged,
    ConfigAssigned,
    Connected,
    Connection,
    Disconnected,
    Notice,
)
from .proto.connection import Rekeyed as ConnRekeyed
from .proto.cookie import CookieChecker
from .proto.fragment import FragmentRun
from .proto.framing import (
    FLAG_GSO,
    HEADER_LEN,
)
from .proto.native import NativeEndpoint
from .proto.native_conn import PATHS, NativeConnection
from .proto.offload import VNET_HDR_LEN, ZERO_VNET_HDR, coalesce_tcp
from .proto.plain_conn import RawConnection, SimpletunConnection
from .proto.secure import HandshakeGuard

if TYPE_CHECKING:
    from .hubcontrol import HubControl

log = logging.getLogger("tunconnector.tunnel")



@dataclass(slots=True)
class TunnelStats:
    """Counters of device frames (``rx`` = from the wire into the device)."""

    rx_bytes: int = 0
    rx_packets: int = 0
    tx_bytes: int = 0
    tx_packets: int = 0
    wire_rx: int = 0
    wire_tx: int = 0
    connects: int = 0
    last_rx: float | None = None
    drops: collections.Counter[str] = field(default_factory=collections.Counter)
    #: the tunnel has been up once (device frames dropped before that are no fault)
    ever_up: bool = False


def no_peer(stats: TunnelStats) -> str:
    """The drop reason for device frames with nowhere to go: ``no_peer_yet`` before the
    tunnel was ever up (what the kernel sends as the device comes up: IPv6 router
    solicitations, MLD reports), ``no_peer`` once it had a peer and lost it."""
    return "no_peer" if stats.ever_up else "no_peer_yet"


#: a timer firing this much (seconds) after its time means the process stalled
LATE_TIMER = 0.03


#: the connection of a UDP point-to-point tunnel
PeerConnection = NativeConnection | RawConnection
#: the connection of one TCP stream
StreamConnection = NativeConnection | SimpletunConnection
#: how often the replay state is saved with openvpn_replay_persist (seconds)
PERSIST_INTERVAL = 1.0


class _Stream:
    """One TCP stream and the connection reading it (an OpenVPN framing's: a
    :class:`Connection` without the fast-path methods)."""

    __slots__ = ("proto", "conn", "counted", "unproven_rx")

    def __init__(self, proto: tcpio.StreamProtocol, conn: Any) -> None:
        self.proto = proto
        self.conn = conn
        self.counted = False  # its counters were added to the tunnel's when it ended
        self.unproven_rx = 0  # bytes received unproven (a connection without `buffered`)


# The latency lane. An idle tunnel wakes up once per packet (a ping, a game's update, a
# DNS query), and after a sleep every function and attribute on the way costs several
# times its hot price: the batch path (read until EAGAIN, batch lists, flush, timer
# re-arm) cost ~140 us of user CPU per hop against ~50 us for a bare read/send loop. The
# lane takes exactly an idle tunnel's common case (one small packet, known peer, live
# session) in a few lines, and hands anything else, and every packet while traffic is
# dense, to the batch path untouched: it never decides anything the batch path would
# decide differently.
#: callbacks closer together than this (seconds) mean traffic is dense: batch instead
BUSY = 0.0005
MAX_READ = 65_600
#: after a delivery, read the device once more: a local answer (ping reply, TCP ACK) is
#: usually queued by the time the write returns, and leaves at once, while hot
PEEK = os.environ.get("TUNCONNECTOR_EXPRESS_PEEK", "1") != "0"
#: after this many read-after-writes in a row found nothing (the side whose device does
#: not answer, e.g. a ping client's), only one delivery in PEEK_PROBE tries again
PEEK_GIVE_UP = 8
PEEK_PROBE = 16


#: at most one warning per this many seconds for the same kind of bad connection
WARN_EVERY = 10.0



class Tunnel(SupervisedDevice):
    """Runs one :class:`TunnelConfig`. Create through :class:`tunconnector.Node`.

    A configuration for many peers (:class:`~.hub.Hub`) overrides the hooks
    ``_prepare``, ``_device_configured``, ``_open_transport``, ``_status_more``,
    ``_notify_exit``, ``_close_all``, ``_log_started``, ``arm_timer``/``_on_due`` and
    the data path (``_on_udp_batch``, ``send_device_frames``); point to point keeps its
    own data path untouched."""

    #: a hub's peer table (:class:`~.hubcontrol.HubControl`); None for point to point
    peer_table: HubControl | None = None
    kind = "tunnel"  #: for the log

    def __init__(self, config: TunnelConfig, *, netlink: nl.Netlink | None = None) -> None:
        self.config = config
        self.name = config.name
        self._init_state()
        self.stats = TunnelStats()
        self.device: Device | None = None
        self.device_name: str | None = config.device
        #: the class of its connections: what it says before one exists
        self._wire = connection_class(config)
        self.mtu = device_mtu(config)
        self.max_frame = self.mtu + (18 if config.dev_type == "tap" else 0)
        self._packet_info = config.framing == "raw" and config.packet_info
        self.peer: Addr | None = None
        self.log = logging.LoggerAdapter(log, {"tunnel": self.name})
        self.netlink = netlink or nl.Netlink()
        self._own_netlink = netlink is None
        self._created_device = False
        self._devsup: DeviceSupervisor | None = None  # brings a deleted device back
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: UdpEndpoint | None = None
        #: the peer's own socket, connected to it, where its connection asks for one
        #: (``peer_socket``: _follow_peer)
        self._twin: UdpEndpoint | None = None
        self._mp: MultiPathLink | None = None  # [[tunnel.path]]: one socket per path
        #: UDP: the one connection (multi-path's: its paths pick the peer's addresses),
        #: and which datagrams are its (one socket)
        self._pconn: PeerConnection | None = None
        self._peer_acc: PeerAcceptor | None = None
        self._quick: tuple[Callable[[Any, float, Any], Any], Any] | None = None
        #: reads a UDP batch: by the acceptor and the quick decoder, or all to the
        #: connection (one without ``quick_parts``)
        self._on_batch: Callable[[list[tuple[Any, Addr]]], None] = self._on_udp_batch
        self._remote: Addr | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: asyncio.Server | None = None
        self._stream: _Stream | None = None  # TCP: the live stream
        # unproven TCP streams (server): bounded, oldest dropped first, with a deadline
        self._candidates: Admission[tcpio.StreamProtocol, _Stream] = Admission()
        self._warned: dict[str, tuple[float, int]] = {}  # kind -> (last warning, suppressed)
        self._reading_device = False
        #: runs of received TCP segments go to the device as one super-packet
        self._coalesce = False
        #: the device takes TSO super-packets (an OpenVPN connection takes packets one by
        #: one; a hub writes its clients' super-packets whole)
        self._tso = self._wire.takes_super
        self._stopping = False
        self._keys: TunnelKeys | None = None
        # a UDP server answers a flood of valid-mac1 initiations with cookie replies, not
        # a DH each (its NativeConnection sends them to each initiation's address); over
        # TCP the connection already proved the source address
        self._guard = HandshakeGuard(cookies=CookieChecker() if (
            config.mode == "server" and config.proto == "udp" and not config.path) else None)
        self._fast = FastPath(config, UNDERLAY_MTU)
        self._late = False  # the timer fired late once and was deferred past the I/O
        # the latency lane (see BUSY): on, off ($TUNCONNECTOR_EXPRESS=0), or None where
        # there is none (multi-path, not started)
        self._lane: bool | None = None
        self._lane_tx = 0  #: packets sent by the lane
        self._lane_rx = 0  #: packets delivered by the lane
        self._dev_last = float("-inf")
        self._wire_last = float("-inf")
        self._peer_tx_key: Any = None  # the peer object _peer_tx was made for
        self._peer_tx: Any = None  # sendto() form of the peer (v4-mapped on v6 sockets)
        self._peek_misses = 0  # read-after-writes in a row that found nothing
        self._make: ConnectionFactory | None = None  # OpenVPN: makes its connections
        #: OpenVPN: the live connection (UDP's; a TCP client's across its streams; a TCP
        #: server's last authenticated stream's)
        self._conn: Connection | None = None
        self._assigned: list[ConfigAssigned] = []  # applied, undone on stop
        self._applied: list[Applied] = []  # what applying each of them did
        self._assign_tasks: set[asyncio.Task[None]] = set()
        #: called with each ConfigAssigned once it is on the device (openvpn's up scripts)
        self.assign_listeners: list[Callable[[ConfigAssigned], None]] = []
        self._persist_handle: asyncio.TimerHandle | None = None
        self._persisted: dict[str, Any] | None = None  # last saved replay state

    # ------------------------------------------------------------------ public API
    def last_heard(self) -> float | None:
        """Loop time of the last valid message from the peer (keepalives included)."""
        conn = self._live()
        heard = None if conn is None else conn.last_heard
        return self.stats.last_rx if heard is None else heard

    def all_drops(self) -> dict[str, int]:
        # what the kernel dropped at a full receive queue, before this process saw it
        if self._udp is not None:
            self._udp.count_kernel_drops("udp_queue_full")
        if self._twin is not None:
            self._twin.count_kernel_drops("peer_queue_full")
        drops = collections.Counter(self.stats.drops)
        conn = self._live()
        if conn is not None:
            drops.update(conn.all_drops())
        for stream in self._candidates.values():  # what strangers sent is counted too
            drops.update(stream.conn.all_drops())
        return {k: v for k, v in sorted(drops.items()) if v}

    def status(self) -> dict[str, Any]:
        cfg = self.config
        now = self._loop.time() if self._loop is not None else None
        local = None
        if self._udp is not None:
            try:
                local = fmt_addr(self._udp.local_address)
            except OSError:
                local = None
        elif self._server is not None:
            socks = self._server.sockets
            local = fmt_addr(socks[0].getsockname()) if socks else None
        encrypted, last, more = self._status_more(now)
        return {
            "name": self.name,
            "mode": cfg.mode,
            "proto": cfg.proto,
            "framing": cfg.framing,
            "transport": f"{cfg.proto}/{cfg.framing}",
            "dev_type": cfg.dev_type,
            "device": self.device_name,
            "netns": cfg.netns,
            "addresses": list(cfg.address) + [a for ev in self._assigned for a in ev.addresses],
            "mtu": self.mtu,
            "local": local,
            "peer": fmt_addr(self.peer) if self.peer else None,
            "state": self.state.value,
            "error": self.error,
            "encrypted": encrypted,
            "since": self.since,
            "last_rx_age": round(now - last, 3) if (now is not None and last is not None) else None,
            "rx_bytes": self.stats.rx_bytes,
            "tx_bytes": self.stats.tx_bytes,
            "rx_packets": self.stats.rx_packets,
            "tx_packets": self.stats.tx_packets,
            "connects": self.stats.connects,
            "drops": self.all_drops(),
            **more,
        }

    def _status_more(self, now: float | None) -> tuple[bool, float | None, dict[str, Any]]:
        """Whether traffic is encrypted, when the last frame came, and the status fields
        of this configuration (data path, crypto, device supervision)."""
        cfg = self.config
        fastpath: dict[str, Any] = {}
        if self._wire.reports_crypto:  # its cipher and its last authentic packet
            conn = self._conn
            crypto = conn.status(now) if conn is not None and now is not None else None
            encrypted = bool(crypto and crypto.get("cipher") not in (None, "none"))
            last = self.last_heard()
            data_path = f"{cfg.framing} connection, {self._fast.describe()}"
        else:
            crypto = self._crypto_status(now)
            encrypted = bool(cfg.key_file or cfg.private_key_file)
            last = self.stats.last_rx
            data_path, fastpath = self._fast.describe(), self._fastpath_status()
        return encrypted, last, {
            "data_path": data_path,
            "fastpath": fastpath,
            **(self._mp.status_fields() if self._mp is not None else {}),
            **self._device_status(),
            "crypto": crypto,
        }

    def _fastpath_status(self) -> dict[str, Any]:
        out: dict[str, Any] = self._fast.stats()
        conn = self._live()
        if isinstance(conn, NativeConnection):
            out["super_tx"] += conn.super_tx
            out["super_rx"] += conn.super_rx
        if self._lane is not None:
            out["express_tx"], out["express_rx"] = self._lane_tx, self._lane_rx
        return out

    def _crypto_status(self, now: float | None) -> dict[str, Any] | None:
        """Cipher, session age and handshake counts of the live channel (no keys)."""
        if self._keys is None:
            return None
        conn = self._live()
        if isinstance(conn, NativeConnection) and conn.endpoint.secure is not None and (
                now is not None):
            return dict(conn.endpoint.secure.stats(now))
        return {"cipher": self.config.cipher, "established": False}

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.is_running:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self.error = None
        self._set_state(State.STARTING)
        cfg = self.config
        try:
            await self._prepare()
            await self._open_device()
            await self._supervise_device()
            await self._open_transport()
        except BaseException as exc:
            self.error = str(exc) if isinstance(exc, TunconnectorError) else repr(exc)
            await self._close_all()
            self._set_state(State.FAILED)
            raise
        if cfg.openvpn_replay_persist:
            self._persist_tick()
        self._log_started()

    def _log_started(self) -> None:
        self.log.info(
            "tunnel %s started: %s %s/%s device %s mtu %d",
            self.name, self.config.mode, self.config.proto, self.config.framing,
            self.device_name, self.mtu,
        )
        self.log.info("tunnel %s data path: %s", self.name, self._fast.describe())

    async def _prepare(self) -> None:
        """What start does before the device: key files (their errors before any
        device), the offload state, the remote's address, an OpenVPN framing's factory."""
        cfg = self.config
        assert self._loop is not None
        self._keys = load_tunnel_keys(cfg)
        self._fast = FastPath(cfg, UNDERLAY_MTU)
        if cfg.mode == "client" and not cfg.path:
            self._remote = await self._resolve(cfg.remote or "", cfg.remote_port)
        self._make = connection_factory(  # OpenVPN's key material, before any device too
            cfg, clock_offset=time.time() - self._loop.time(),
            max_frame=self.max_frame, mtu=self.mtu, remote=self._remote)

    async def stop(self) -> None:
        if self.state in (State.STOPPED, State.FAILED) and self.device is None:
            return  # nothing open; a failed tunnel keeps saying why
        self._stopping = True
        self._notify_exit()
        self._save_replay_state()
        await self._unassign()
        await self._close_all()
        self._set_state(State.STOPPED)
        self.log.info("%s %s stopped", self.kind, self.name)

    def _notify_exit(self) -> None:
        """A client stopping cleanly tells its server (a hub marks it down at once), an
        OpenVPN peer tells the other end (OCC EXIT, exit-notify): the connection queues
        its goodbye on close (native: a UDP client with a session only), and an OpenVPN
        stream is closed gracefully, so what was queued still leaves."""
        conn: Any = self._pconn or self._conn
        if conn is None or self._loop is None:
            return
        now = self._loop.time()
        conn.close(now)
        self._flush(conn, now)
        if self._conn is not None and self._stream is not None:
            self._stream.proto.close()

    # ------------------------------------------------------------------ replay-persist
    def _save_replay_state(self) -> None:
        """Write the connection's replay state if it changed (openvpn_replay_persist)."""
        path = self.config.openvpn_replay_persist
        state = None if self._conn is None else self._conn.persist_state()
        if not path or state is None or state == self._persisted:
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

    async def close(self) -> None:
        await self.stop()
        if self._own_netlink:
            self.netlink.close()

    # ------------------------------------------------------------------ device
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
            if cfg.netns and not existed and await self.netlink.call(
                nl.link_exists, name, cfg.netns
            ):
                raise DeviceError(
                    f"device {name!r} already exists in netns {cfg.netns!r}; attaching to a "
                    "device inside another namespace is not supported: remove it or run the "
                    "daemon inside that namespace"
                )
        tso = self._tso
        dev = self._fast.open_device(name, cfg.dev_type, tso=tso)
        # without TSO: runs of received TCP segments are written as one super-packet
        self._coalesce = dev.vnet_hdr and not tso and cfg.dev_type == "tun"
        self.device = dev
        self.device_name = dev.name
        if not reopen:
            self._created_device = not existed
        if cfg.netns:
            await self.netlink.call(nl.move_to_netns, dev.name, cfg.netns)
        await self.netlink.call(
            nl.configure, dev.name, addresses=cfg.interfaces, mtu=self.mtu, netns=cfg.netns
        )
        await self._device_configured(dev.name)
        if existed:
            self.log.info("attached to existing device %s (left in place on exit)", dev.name)

    async def _device_configured(self, name: str) -> None:
        """The device has its addresses and MTU: what this configuration adds to it."""
        await self._fast.after_configure(self.netlink, name, self.config.netns)

    def _device_reader(self, on: bool) -> None:
        if self.device is None or self._loop is None or on == self._reading_device:
            return
        if on:
            self._loop.add_reader(self.device.fd, self._lane_device if self._lane
                                  else self._on_device_readable)
        else:
            self._loop.remove_reader(self.device.fd)
        self._reading_device = on

    # ------------------------------------------------------------------ transports
    async def _open_transport(self) -> None:
        cfg = self.config
        if cfg.path:
            await self._open_multipath()
            return
        if cfg.proto == "udp":
            await self._open_udp()
        else:
            await self._open_tcp()

    async def _resolve(self, host: str, port: int) -> Addr:
        assert self._loop is not None
        try:
            infos = await self._loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except socket.gaierror as exc:
            raise TransportError(f"cannot resolve remote {host!r}: {exc.strerror}") from exc
        return normalize(infos[0][4])

    def _make_native(self) -> NativeEndpoint:
        """A native endpoint (the crypto layer plugs its SecureChannel in here)."""
        cfg = self.config
        secure = None
        if self._keys is not None:
            assert self._loop is not None
            secure = channel_from_config(
                cfg, keys=self._keys, clock_offset=time.time() - self._loop.time(),
                guard=self._guard,
            )
        return NativeEndpoint(
            keepalive=cfg.keepalive, dead_after=cfg.dead_after, max_frame=self.max_frame,
            secure=secure,
        )

    def _live(self) -> Connection | None:
        """The connection traffic goes to: UDP's one, the OpenVPN one, or the live TCP
        stream's."""
        if self._pconn is not None:
            return self._pconn
        if self._conn is not None:
            return self._conn
        return None if self._stream is None else self._stream.conn

    def _new_udp(self, port: int) -> UdpEndpoint:
        """A UDP socket of the tunnel's family (its bind address's, else a client's
        remote's, else dual-stack), with GSO/GRO where the kernel has them."""
        cfg = self.config
        if cfg.bind:
            family = family_for(cfg.bind)
        elif cfg.mode == "client":
            family = family_for(self._remote[0] if self._remote else None)
        else:
            family = socket.AF_INET6
        sock = open_udp(bind=cfg.bind, port=port, family=family,
                        bind_interface=cfg.bind_interface)
        udp = UdpEndpoint(sock, self.stats.drops)
        self._fast.attach_udp(udp)
        return udp

    async def _open_udp(self) -> None:
        cfg = self.config
        assert self._loop is not None
        udp = self._udp = self._new_udp(cfg.port if (cfg.mode == "server" or cfg.port) else 0)
        if cfg.mode == "client":
            self.peer = self._remote
            if self._remote is not None and not self._wire.follows_answer:
                # a client hears only its server (a stranger's datagram is dropped as
                # unknown_peer): connected, the kernel drops those before they queue
                # where the server's must wait behind them (NoPorts, ICMP unreachable).
                # Not where the server may answer from elsewhere (OpenVPN's remote list,
                # a multi-homed server): its peer's own socket, _follow_peer, keeps
                # strangers' datagrams out of its queue instead
                try:
                    udp.connect(self._remote)
                except TransportError:
                    udp.sock.close()
                    raise
        server = cfg.mode == "server"
        conn: Any
        if self._make is not None:
            conn = self._make()
        elif cfg.framing == "native":
            conn = NativeConnection(
                self._make_native, server=server, peer=self.peer,
                max_datagram=self._fast.max_datagram(self.peer),
                reassembler=self._fast.reasm, loss_cap=self._fast.loss,
                tap=cfg.dev_type == "tap")
        else:
            conn = RawConnection(server=server, max_frame=self.max_frame, peer=self.peer,
                                 packet_info=self._packet_info, tap=cfg.dev_type == "tap")
        quick = self._quick = conn.quick_parts()
        if quick is None:  # every datagram to the connection, which decides by its rules
            self._conn = conn
            self._on_batch = self._on_conn_batch
        else:  # the peer's raw address takes the quick decoder, the rest the acceptor
            self._pconn = conn
            self._peer_acc = PeerAcceptor(conn, server=server)
            self._on_batch = self._on_udp_batch
        self._lane_start(conn.lane)
        udp.start(self._on_batch, reader=self._lane_udp if self._lane else None)
        # raw: a client has nothing to wait for
        self._set_state(State.UP if type(conn) is RawConnection and not server else State.DOWN)
        self._device_reader(True)
        now = self._loop.time()
        conn.start(now)
        self._flush(conn, now)

    def _reopen_udp(self) -> None:
        """An OpenVPN client about to reconnect gets a fresh ephemeral source port, as
        openvpn's own client does: a server may still hold state for the old address and
        ignore a new session from it. A configured ``port`` is kept."""
        cfg = self.config
        if cfg.mode != "client" or cfg.port or self._udp is None or self._stopping:
            return
        try:
            udp = self._new_udp(0)
        except (OSError, TransportError) as exc:
            self.log.warning("cannot open a new UDP socket (keeping the old one): %s", exc)
            return
        self._drop_twin()  # bound to the old port
        self._udp.close()
        self._udp = udp
        udp.start(self._on_batch, reader=self._lane_udp if self._lane else None)

    async def _open_multipath(self) -> None:
        """One UDP socket per ``[[tunnel.path]]``, driven by the multi-path core; the
        connection (its peer: the paths) is driven as over one socket (:meth:`_flush`)."""
        assert self._loop is not None
        conn = self._pconn = NativeConnection(
            self._make_native, server=self.config.mode == "server", peer=PATHS)
        self._mp = MultiPathLink(self.config, conn, deliver=self._to_device,
                                 after_receive=functools.partial(self._flush, conn),
                                 drops=self.stats.drops, logger=self.log)
        await self._mp.start()
        self._device_reader(True)
        now = self._loop.time()
        conn.start(now)
        self._flush(conn, now)
        self._set_state(State.DOWN)

    async def _open_tcp(self) -> None:
        cfg = self.config
        assert self._loop is not None
        if cfg.mode == "server":
            family = family_for(cfg.bind) if cfg.bind else socket.AF_INET6
            sock = tcpio.listen_socket(bind=cfg.bind, port=cfg.port, family=family,
                                       bind_interface=cfg.bind_interface)
            self._server = await self._loop.create_server(self._protocol, sock=sock)
            self._set_state(State.DOWN)
        else:
            self._set_state(State.DOWN)
            assert self._remote is not None
            if self._make is not None:  # OpenVPN: one connection across the streams
                self._conn = self._make()
                self._conn.start(self._loop.time())
            self._tasks.append(asyncio.create_task(tcpio.keep_connected(
                self._remote, self._protocol, bind=cfg.bind, port=cfg.port,
                bind_interface=cfg.bind_interface, stopping=lambda: self._stopping,
                log=self.log)))
        self._lane_start(self._wire.stream_lane)
        self._device_reader(True)

    def _lane_start(self, on: bool) -> None:
        """The latency lane on (unless $TUNCONNECTOR_EXPRESS=0), counted afresh."""
        self._lane = on and os.environ.get("TUNCONNECTOR_EXPRESS", "1") != "0"
        self._lane_tx = self._lane_rx = self._peek_misses = 0
        self._dev_last = self._wire_last = float("-inf")

    def _protocol(self) -> tcpio.StreamProtocol:
        return tcpio.StreamProtocol(
            self._on_stream_data, self._on_stream_lost, self._on_stream_made,
            self._on_stream_pause,
        )

    # ------------------------------------------------------------------ data: device -> wire
    def _on_device_readable(self) -> None:
        dev = self.device
        if dev is not None and (frames := self._read_device(dev)):
            self.send_device_frames(frames)

    def send_device_frames(self, frames: list[bytes]) -> None:
        """Send frames read from the device (the latency lane hands its overflow here):
        the connection encodes them (whole super-packets when the device has
        virtio_net_hdr; an OpenVPN connection takes plain frames and counts those it
        cannot send yet itself), :meth:`_flush` sends what it made."""
        dev, loop = self.device, self._loop
        if dev is None or loop is None:
            return
        stats = self.stats
        n = len(frames)
        conn: PeerConnection | StreamConnection | None = self._pconn
        if conn is None:
            plain = self._conn
            if plain is not None:  # OpenVPN: plain frames, one message each
                now = loop.time()
                # OpenVPN's device: no TUNSETOFFLOAD, a zero header each, which the
                # connection skips as it seals (no copy of every packet to drop it)
                off = VNET_HDR_LEN if dev.vnet_hdr else 0
                stats.tx_packets += n
                stats.tx_bytes += sum(map(len, frames)) - off * n
                stats.wire_tx += n
                plain.send_frames(frames, now, off)
                self._flush_data(plain, now)
                return
            stream = self._stream
            conn = None if stream is None else stream.conn
        if conn is None or conn.peer is None:
            stats.drops[no_peer(stats)] += n
            return
        vnet = dev.vnet_hdr
        stats.tx_packets += n
        stats.tx_bytes += sum(map(len, frames)) - (VNET_HDR_LEN * n if vnet else 0)
        stats.wire_tx += n
        now = loop.time()
        conn.send_device(frames, now, vnet_hdr=vnet)
        self._flush(conn, now)

    # ------------------------------------------------------------------ data: wire -> device
    def _on_udp_batch(self, batch: list[tuple[Any, Addr]]) -> None:
        """A batch read from a UDP socket of a point-to-point tunnel.

        The bulk (DATA from the peer's raw address) costs one compare and one call of the
        connection's quick decoder per datagram, fetched once per batch; anything else
        (a stranger, the peer's first datagram after a move, a handshake, a fragment, a
        GRO run of fragments, which the quick decoder refuses untouched) goes through the
        acceptor to the connection, with its frames taken in order.
        """
        conn, acc, loop = self._pconn, self._peer_acc, self._loop
        if conn is None or acc is None or loop is None:
            return
        now = loop.time()
        self.stats.wire_rx += len(batch)
        frames: list[Any] = []
        append = frames.append
        quick, source = conn.quick_parts()
        peer_raw = acc.raw
        for data, raw in batch:
            if raw == peer_raw:
                frame = quick(data, now, source)
                if frame is not False:
                    if frame is not None:
                        append(frame)
                    continue
            if type(data) is FragmentRun:
                acc.receive_run(data, raw, normalize(raw), now)
            else:
                acc.receive(data, raw, normalize(raw), now)
            got = conn.frames_to_deliver()
            if got:
                frames.extend(got)
            if acc.raw != peer_raw:  # the peer's first datagram, or its first after a move
                peer_raw = acc.raw
                quick, source = conn.quick_parts()
        if frames:
            self._to_device(frames, now)
        self._flush(conn, now)
        if (self.peer is not None and self.state != State.UP
                and isinstance(conn, RawConnection) and conn.server):
            self._set_state(State.UP)  # raw: a server is up once it has a peer

    def _on_conn_batch(self, batch: list[tuple[Any, Addr]]) -> None:
        """A UDP batch of a connection without ``quick_parts`` (OpenVPN's): every datagram
        to it, which decides (replay, float, peer-id: openvpn's rules), the bulk through
        its quick decoder; then the frames, in order, at once."""
        conn, loop = self._conn, self._loop
        if conn is None or loop is None:
            return
        now = loop.time()
        self.stats.wire_rx += len(batch)
        receive, quick = conn.receive_datagram, conn.quick_datagram
        frames: list[bytes] = []
        queued = False  # frames wait in the connection (taken before a quick one)
        slow = False  # a datagram went the full way (control, a move): flush all after
        last_raw: Any = None
        addr: Any = None
        for data, raw in batch:
            if raw != last_raw:
                last_raw, addr = raw, normalize(raw)
            if type(data) is not bytes:
                data = bytes(data)
            frame = quick(data, addr, now)
            if frame is False:
                receive(data, addr, now)
                queued = slow = True
            elif frame is not None:
                if queued:
                    frames.extend(conn.frames_to_deliver())
                    queued = False
                frames.append(frame)
        if queued:
            frames.extend(conn.frames_to_deliver())
        if frames:
            self._to_device(frames, now)
        if slow or conn.has_work():  # quick decodes alone: flushed when they queued
            self._flush(conn, now)  # output (an OCC answer, a rekey), as the lane's

    def _flush_data(self, conn: Any, now: float) -> None:
        """After an OpenVPN connection sealed device frames: its runs sent; the rest of
        :meth:`_flush` (control, events, the timer) only when it has work, as after the
        lane's send (sending data only moves its timers later)."""
        udp = self._udp
        if udp is None:
            self._flush(conn, now)
            return
        self._send_runs(udp, conn, now)
        if conn.has_work():
            self._flush(conn, now)

    @staticmethod
    def _send_runs(udp: UdpEndpoint, conn: Any, now: float) -> None:
        """The connection's bulk UDP output (:meth:`batches_to_send`)."""
        addr: Any  # the connection's Addr is the socket's (host, port)
        for batch, addr in conn.batches_to_send(now):
            if type(batch) is list:
                udp.send_batch(batch, addr)  # equal-size runs: one UDP GSO sendmsg
            else:
                udp.send_gso(batch.buf, batch.stride, addr)

    def _flush(self, conn: Any, now: float, stream: _Stream | None = None) -> None:
        """Send what the connection has to send (data before control, as it was queued),
        act on its events, re-arm the timer. ``stream``: the TCP stream of ``conn``
        (None: the live one)."""
        udp = self._udp
        if udp is not None:
            self._send_runs(udp, conn, now)
            addr: Any
            run: list[bytes] = []  # datagrams in order; a run to one address leaves in
            run_addr: Any = None  # one send_batch (equal sizes: one UDP GSO sendmsg)
            for dgram, addr in conn.datagrams_to_send(now):
                if addr != run_addr and run:
                    udp.send_batch(run, run_addr)
                    run = []
                run_addr = addr
                run.append(dgram)
            if run and run_addr is not None:
                udp.send_batch(run, run_addr)
        elif self._mp is not None:  # multi-path: the paths send it
            self._mp.flush(now)
        else:
            if stream is None:
                stream = self._stream
            chunks = conn.stream_to_send(now)
            if chunks and stream is not None:
                stream.proto.writelines(chunks)  # a super-packet's parts gathered, not joined
        while (ev := conn.next_event()) is not None:
            self._on_event(ev, now, stream)
        self.arm_timer()

    def _on_event(self, ev: object, now: float, stream: _Stream | None) -> None:
        """One log line per state change of the live connection (never key material).
        An unproven TCP stream changes no tunnel state: it takes over when it proves
        itself (Connected), and is closed when it breaks."""
        if stream is not None and stream is not self._stream:
            if isinstance(ev, Connected):
                self._promote(stream)
            elif isinstance(ev, Disconnected):
                self._drop_candidate(stream)
                return
            elif not isinstance(ev, Notice):
                return
        if isinstance(ev, AddressChanged):
            conn: Any = self._pconn or self._conn
            if conn is not None:
                self._float(conn, ev.addr)
        elif isinstance(ev, Connected):
            answered: Any = ev.addr
            if answered is not None and self._wire.follows_answer:  # it answered from there
                self.peer = answered
                self._follow_peer(answered)
            self.log.info("peer %s alive", fmt_addr(self.peer) if self.peer else "?")
            if self._keys is not None:
                self.log.info("tunnel %s: encrypted session established", self.name)
            self._set_state(State.UP)
        elif isinstance(ev, Disconnected) and self._wire.outlives_stream:  # it restarts
            self.log.warning("peer %s down: %s", fmt_addr(self.peer), ev.reason)
            self._set_state(State.DOWN)
            if stream is not None and ev.restart:
                stream.proto.abort()  # the client dials again
            elif ev.restart and self._conn is not None and self._conn.new_port_on_restart:
                self._reopen_udp()
        elif isinstance(ev, Disconnected):
            if stream is not None:
                stream.proto.abort()  # lost: _on_stream_lost says so
                if ev.reason not in ("exit", "dead_peer"):
                    return  # a broken stream (its Notice said why)
            if ev.reason == "exit":
                self.log.warning("peer down: it said it stops")
            else:
                heard = self.last_heard()
                silent = now - heard if heard is not None else self.config.dead_after
                self.log.warning("peer dead: nothing received for %.1fs", silent)
            self._set_state(State.DOWN)
        elif isinstance(ev, Notice):
            if ev.level >= logging.WARNING:
                self._warn_limited(ev.kind, "tunnel %s: %s", self.name, ev.message)
            else:
                self.log.log(ev.level, "tunnel %s: %s", self.name, ev.message)
        elif isinstance(ev, ConfigAssigned):
            self._assign(ev)
        elif isinstance(ev, ConnRekeyed):
            self.log.debug("tunnel %s: rekeyed (key id %d)", self.name, ev.key_id)

    def _float(self, conn: Any, addr: Any) -> None:
        """The connection follows its peer to ``addr``: the tunnel's bookkeeping."""
        old = self.peer
        self.peer = addr
        if isinstance(conn, NativeConnection):
            conn.max_datagram = self._fast.max_datagram(addr)
            why = "valid keepalive" if conn.endpoint.secure is None else "authenticated"
        elif isinstance(conn, RawConnection):
            why = "first datagram" if old is None else "new source"
        else:  # OpenVPN's float rules: an authentic packet
            why = "authenticated"
        if conn is not self._conn:  # the quick decoder follows the peer
            self._quick = conn.quick_parts()
        self._follow_peer(addr)
        if old is None:
            self.log.info("peer is %s (%s)", fmt_addr(addr), why)
        else:
            self.log.info("peer moved %s -> %s (%s)", fmt_addr(old), fmt_addr(addr), why)

    def _follow_peer(self, addr: Addr) -> None:
        """Where the connection asks for it (``peer_socket``: a UDP server's authenticated
        native peer, an OpenVPN peer on either side), give the peer a socket of its own,
        connected to it on the shared socket's address and port (``open_connected_twin``);
        the kernel queues its datagrams there, so a stranger flooding the shared socket
        fills only that one, which is then read with a budget (SHARED_BATCH, SHARED_REST).
        The peer's next authenticated move arrives on the shared socket and moves this
        one. Not without keys: there any source takes the peer, so a stranger's datagram
        would move it anyway."""
        udp, conn = self._udp, self._pconn or self._conn
        if udp is None or conn is None or not conn.peer_socket:
            return
        if self._twin is not None:
            if self._twin.remote == addr:
                return
            self._drop_twin()
        try:
            sock = open_connected_twin(udp.sock, udp.tx_addr(addr), rcvbuf=4 << 20,
                                       bind_interface=self.config.bind_interface)
        except TransportError as exc:
            self.stats.drops["twin_failed"] += 1
            self.log.warning("peer %s: %s", fmt_addr(addr), exc)
            return
        twin = self._twin = UdpEndpoint(sock, self.stats.drops)
        twin.remote = addr
        twin.runs = udp.runs
        twin.gro = udp.gro and enable_udp_gro(sock)  # as the batch path expects
        twin.start(self._on_batch,
                   reader=functools.partial(self._lane_udp, twin) if self._lane else None)
        udp.budget(SHARED_BATCH, SHARED_REST)

    def _drop_twin(self) -> None:
        twin, self._twin = self._twin, None
        retire_twin(twin, self._udp)

    # ------------------------------------------------------------------ assigned config
    def _assign(self, ev: ConfigAssigned) -> None:
        """Apply a pushed configuration (addresses, routes, MTU) to the device."""
        if self._loop is None or self.device_name is None:
            return
        task = self._loop.create_task(self._apply(ev))
        self._assign_tasks.add(task)
        task.add_done_callback(self._assign_tasks.discard)

    async def _apply(self, ev: ConfigAssigned) -> None:
        await self._unassign()  # a new assignment replaces the previous one
        server = ev.extra.get("server") or ev.extra.get("bypass_host")
        try:
            done = await self.netlink.call(apply_assigned, self.device_name or "", ev,
                                           self.config.netns, server)
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

    # ------------------------------------------------------------------ latency lane
    def _lane_device(self) -> None:
        """The device is readable: one read, sent at once, or it and the rest batched."""
        dev, loop = self.device, self._loop
        if dev is None or loop is None:
            return
        try:
            f = os.read(dev.fd, MAX_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._on_device_readable()  # reports the error its usual way
            return
        now = loop.time()
        busy = now - self._dev_last < BUSY
        self._dev_last = now
        if busy or not self._lane_send(f, now):
            self._lane_overflow(f)

    def _lane_overflow(self, f: bytes) -> None:
        """``f`` and whatever else the device holds, through the batch path."""
        dev = self.device
        if dev is None:
            return
        try:
            more = dev.read_batch(63)
        except DeviceError:
            more = []
        self.send_device_frames([f, *more])

    def _lane_send(self, f: bytes, now: float) -> bool:
        """One frame read from the device, to the peer at once; False: untouched."""
        conn: Any = self._pconn or self._conn
        udp, stream, dev = self._udp, self._stream, self.device
        if conn is None:
            if stream is None:
                return False
            conn = stream.conn
        if dev is None:
            return False
        vnet = dev.vnet_hdr
        msg = conn.send_one(f, now, vnet_hdr=vnet)
        if msg is False:
            return False
        if conn.has_work():  # queued for a handshake, a rekey started, or a timer moved
            if conn.has_output():
                self._flush(conn, now)
            else:
                self.arm_timer()  # the first unanswered send: the stale-session timer
        stats = self.stats
        stats.tx_packets += 1
        stats.tx_bytes += len(f) - VNET_HDR_LEN if vnet else len(f)
        if msg is None:
            return True  # queued for the session
        if udp is None:
            assert stream is not None
            stream.proto.write(msg)
        else:
            peer: Any = conn.peer
            if peer is not self._peer_tx_key:
                self._peer_tx_key = peer
                self._peer_tx = udp.tx_addr(peer)
            twin = self._twin
            try:
                if twin is not None and twin.remote == peer:
                    twin.sock.send(msg)  # connected to the peer: its route is cached
                else:
                    udp.sock.sendto(msg, self._peer_tx)
            except OSError:  # a refusal the twin reports: this one goes the shared way
                udp.sendto(msg, peer)  # counts the failure by its errno
        stats.wire_tx += 1
        self._lane_tx += 1
        return True

    def _lane_udp(self, endpoint: UdpEndpoint | None = None) -> None:
        """Read one datagram; deliver it at once, or it and the rest through the batch
        path. ``endpoint``: the socket to read, when not the tunnel's (its peer's own)."""
        udp = endpoint or self._udp
        loop = self._loop
        if udp is None or loop is None:
            return
        got = udp.recv_one()
        if got is None:
            return
        data, anc, raw = got
        now = loop.time()
        busy = now - self._wire_last < BUSY
        self._wire_last = now
        if anc or busy or not self._lane_take(data, raw, now):
            batch: list[tuple[Any, Any]] = []
            udp.add_received(batch, data, anc, raw)
            udp.drain(batch)
            self._on_batch(batch)

    def _lane_take(self, data: bytes, raw: Any, now: float) -> bool:
        """Deliver one datagram of the peer to the device, or refuse it untouched."""
        dev, acc, quick = self.device, self._peer_acc, self._quick
        conn: Any = self._pconn
        if dev is None:
            return False
        if self._conn is not None:  # no acceptor: its own rules say whose data it takes
            conn = self._conn
            frame = conn.quick_datagram(data, normalize(raw), now)
        else:
            if acc is None or quick is None or conn is None or raw != acc.raw:
                return False  # a stranger, or the peer's first datagram: the batch path's
            if isinstance(conn, NativeConnection):
                if len(data) <= HEADER_LEN or data[2] & FLAG_GSO:
                    return False  # a super-packet: the batch path's (it writes GsoFrames)
            elif self.state != State.UP:
                return False  # raw: the batch path brings it up
            frame = quick[0](data, now, quick[1])
        if frame is False:
            return False
        if conn.has_work():
            self._flush(conn, now)  # an opened message may start a rekey
        self._lane_rx += 1
        self._lane_deliver(dev, frame, now)
        return True

    def _lane_stream(self, proto: tcpio.StreamProtocol, data: bytes) -> bool:
        """A TCP read of the live stream holding exactly one whole small message: its
        frame delivered at once; False (nothing consumed) for anything else: partial or
        several messages, bytes already buffered, a candidate's stream, dense traffic."""
        stream, dev, loop = self._stream, self.device, self._loop
        if stream is None or stream.proto is not proto or dev is None or loop is None:
            return False
        now = loop.time()
        busy = now - self._wire_last < BUSY
        self._wire_last = now
        if busy:
            return False
        conn = stream.conn
        frame = conn.quick_read(data, now)
        if frame is False:
            return False
        if conn.has_work():
            self._flush(conn, now, stream)  # an opened message may start a rekey
        self._lane_rx += 1
        self._lane_deliver(dev, frame, now)
        return True

    def _lane_deliver(self, dev: Device, frame: Any, now: float) -> None:
        """One message of the peer taken by the lane: its frame written to the device
        (None: consumed, an encrypted keepalive or a counted drop); then, as a
        local answer (ping reply, TCP ACK) is usually queued on the device by the time the
        write returns, it is read and sent at once, while hot, not after another wake."""
        stats = self.stats
        stats.wire_rx += 1
        if frame is None:
            return
        try:
            if dev.vnet_hdr:
                os.writev(dev.fd, [ZERO_VNET_HDR, frame])
            else:
                os.write(dev.fd, frame)
            stats.rx_packets += 1
        except OSError:
            stats.drops["device_refused"] += 1
            self._device_check()  # a deleted device: the supervisor takes over
            if self.device is not dev:
                return  # closed: its fd number is no longer ours to read
        stats.rx_bytes += len(frame)
        stats.last_rx = now
        if not PEEK:
            return
        misses = self._peek_misses
        if misses >= PEEK_GIVE_UP:  # no local answers lately (a client's pings): probe now
            self._peek_misses = misses + 1  # and then, not on every delivery
            if misses % PEEK_PROBE:
                return
        try:
            f = os.read(dev.fd, MAX_READ)
        except OSError:
            self._peek_misses += misses < PEEK_GIVE_UP
            return
        self._peek_misses = 0
        busy = now - self._dev_last < BUSY  # bulk: the answer and the rest go batched
        self._dev_last = now
        if busy or not self._lane_send(f, now):
            self._lane_overflow(f)

    def _to_device(self, frames: list[Any], now: float, extra: int = 0) -> None:
        """Write frames to the device; ``extra``: packets the super-packets among them
        stand for beyond one each (a hub's, for the counters)."""
        dev = self.device
        if dev is None:
            self.stats.drops["device_gone"] += len(frames) + extra
            return
        n, size = len(frames), sum(map(len, frames))
        bad = dev.write_batch(coalesce_tcp(frames) if self._coalesce and n > 1 else frames)
        stats = self.stats
        if bad:
            stats.drops["device_refused"] += bad
            self._device_check()
        stats.rx_packets += n + extra - bad
        stats.rx_bytes += size
        stats.last_rx = now

    # ------------------------------------------------------------------ TCP callbacks
    def _on_stream_made(self, proto: tcpio.StreamProtocol) -> None:
        """A new stream, with a connection of its own. A client trusts the server it
        dialled, and simpletun has nothing to prove with (so with no live stream to
        protect a server takes it at once): those streams are live at once. Others wait
        in admission until they prove themselves (Connected: the first authentic native
        message, or simpletun's first valid frame). An OpenVPN client keeps its one
        connection across streams (told that a new one began)."""
        assert self._loop is not None
        cfg = self.config
        now = self._loop.time()
        server = cfg.mode == "server"
        peer = normalize(proto.peername) if proto.peername else None
        at_once = not server or (cfg.framing == "simpletun" and self._stream is None)
        conn: Any
        reuse = not server and self._conn is not None  # an OpenVPN client's connection
        if self._make is not None:
            conn = self._conn if reuse else self._make()
        elif cfg.framing == "simpletun":
            conn = SimpletunConnection(server=server, max_frame=self.max_frame, peer=peer,
                                       proven=at_once)
        else:
            conn = NativeConnection(self._make_native, server=server, stream=True, peer=peer,
                                    reassembler=self._fast.reasm, loss_cap=self._fast.loss,
                                    tap=cfg.dev_type == "tap")
        stream = _Stream(proto, conn)
        self.stats.connects += 1
        if at_once:
            self._promote(stream)
        else:
            for old in self._candidates.add(proto, stream, now):
                self.stats.drops["unproven_evicted"] += 1
                self._end_stream(old)
                old.proto.abort()
        if not reuse:
            conn.start(now)
        if conn.outlives_stream:
            conn.connection_made(now)
        self._flush(conn, now, stream)

    def _promote(self, stream: _Stream) -> None:
        old = self._stream
        self._candidates.pop(stream.proto)
        self._stream = stream
        self.peer = normalize(stream.proto.peername) if stream.proto.peername else None
        if old is not None and old is not stream:
            self.log.info("new connection from %s replaces the old one",
                          fmt_addr(self.peer) if self.peer else "?")
            self._end_stream(old)
            old.proto.abort()
        else:
            self.log.info("connected to %s", fmt_addr(self.peer) if self.peer else "?")
        if stream.conn.outlives_stream and self._conn is not stream.conn:
            self._retire()  # a server's OpenVPN traffic moves to the proven stream's
            self._conn = stream.conn

    def _find_stream(self, proto: tcpio.StreamProtocol) -> _Stream | None:
        stream = self._stream
        if stream is not None and stream.proto is proto:
            return stream
        return self._candidates.get(proto)

    def _on_stream_data(self, proto: tcpio.StreamProtocol, data: bytes) -> None:
        if self._lane and self._lane_stream(proto, data):
            return
        stream = self._find_stream(proto)
        if stream is None or self._loop is None:
            return
        now = self._loop.time()
        conn = stream.conn
        if stream is not self._stream and conn.buffered is None:  # judged by all it sent
            stream.unproven_rx += len(data)
            if stream.unproven_rx > UNPROVEN_RECEIVED:  # much talk and no proof: a stranger
                self.stats.drops["unproven_overflow"] += 1
                self._drop_candidate(stream)
                return
        conn.receive_stream(data, now)
        self._flush(conn, now, stream)  # first: a stream that proved itself takes over
        frames = conn.frames_to_deliver()
        if frames:
            self.stats.wire_rx += len(frames)
            if stream is self._stream:
                self._to_device(frames, now)
            else:
                self.stats.drops["unknown_peer"] += len(frames)
        if (stream is not self._stream and proto in self._candidates
                and (held := conn.buffered) is not None and self._candidates.over_buffer(held)):
            # holding most of a large frame before proving anything: not our peer
            self.stats.drops["unproven_overflow"] += 1
            self._drop_candidate(stream)

    def _drop_candidate(self, stream: _Stream) -> None:
        """Close an unproven stream (broken, too talkative): its counters stay."""
        self._candidates.pop(stream.proto)
        self._end_stream(stream)
        stream.proto.abort()

    def _end_stream(self, stream: _Stream) -> None:
        """A stream is gone: its connection's counters become the tunnel's (once; the
        live OpenVPN connection's when it is replaced or closed, :meth:`_retire`)."""
        if stream.counted:
            return
        stream.counted = True
        conn = stream.conn
        if conn is self._conn:
            return
        self.stats.drops.update(conn.all_drops())
        if isinstance(conn, NativeConnection):
            self._fast.super_tx += conn.super_tx
            self._fast.super_rx += conn.super_rx

    def _retire(self) -> None:
        """The live OpenVPN connection is replaced or closed: its counters become the
        tunnel's."""
        if self._conn is not None:
            self.stats.drops.update(self._conn.drops)
            self._conn = None

    def _warn_limited(self, kind: str, msg: str, *args: Any) -> None:
        """A warning at most every WARN_EVERY seconds per kind (counters have the rest)."""
        now = time.monotonic()
        last, suppressed = self._warned.get(kind, (float("-inf"), 0))
        if now - last < WARN_EVERY:
            self._warned[kind] = (last, suppressed + 1)
            return
        self._warned[kind] = (now, 0)
        if suppressed:
            msg += f" (and {suppressed} more like it in the last {WARN_EVERY:.0f}s)"
        self.log.warning(msg, *args)

    def _on_stream_lost(self, proto: tcpio.StreamProtocol, exc: Exception | None) -> None:
        stream = self._find_stream(proto)
        self._candidates.pop(proto)
        if stream is not None:
            conn = stream.conn
            session = conn.outlives_stream
            if self._loop is not None and (not self._stopping if session else conn.buffered):
                # EOF: inside a frame (counted); a session goes down (restart)
                now = self._loop.time()
                conn.receive_stream(b"", now)
                if session:
                    self._flush(conn, now, stream)
            self._end_stream(stream)
        if stream is not None and stream is self._stream:
            self._stream = None
            if not self._stopping:
                self.log.warning("connection to %s lost%s",
                                 fmt_addr(self.peer) if self.peer else "?",
                                 f": {exc}" if exc else "")
                self._set_state(State.DOWN)
            self._device_reader(True)

    def _on_stream_pause(self, proto: tcpio.StreamProtocol, paused: bool) -> None:
        if self._stream is not None and self._stream.proto is proto:
            self._device_reader(not paused)

    # ------------------------------------------------------------------ timer
    def arm_timer(self) -> None:
        if self._loop is None or self._stopping:
            return
        times = []
        # the live connection (_live() inlined: this runs after every batch)
        live: Any = self._pconn
        if live is None:
            live = self._conn
            if live is None and self._stream is not None:
                live = self._stream.conn
        if live is not None and (conn_at := live.get_timer()) is not None:
            times.append(conn_at)
        deadline = self._candidates.get_timer()  # the oldest unproven stream's
        if deadline is not None:
            times.append(deadline)
        if (reasm_at := self._fast.get_timer()) is not None:
            times.append(reasm_at)  # partial reassemblies expire on time, not on traffic
        if times:
            self._arm_at(min(times))

    def _arm_at(self, when: float) -> None:
        """The one timer fires at ``when`` (or earlier, when already armed earlier)."""
        assert self._loop is not None
        when = max(when, self._loop.time())
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= when:
                return  # an earlier (or equal) wake-up is already armed
            self._timer.cancel()
        self._timer_at = when
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        due = self._timer_at
        self._timer = None
        self._timer_at = None
        if self._loop is None or self._stopping:
            return
        now = self._loop.time()
        if due is not None and now - due > LATE_TIMER and not self._late:
            # The process stalled (timers run before I/O in the loop): whatever arrived
            # meanwhile is still unread. Read it first, so a stall of this process is not
            # taken for a dead peer (or a keepalive sent for nothing).
            self._late = True
            self._timer_at = now + 0.002
            self._timer = self._loop.call_at(self._timer_at, self._on_timer)
            return
        self._late = False
        self._on_due(now)
        self.arm_timer()

    def _on_due(self, now: float) -> None:
        """The timer's work: unproven streams' deadlines, the connections' timers."""
        for stream in self._candidates.expired(now):
            self.stats.drops["unproven_timeout"] += 1
            self._end_stream(stream)
            stream.proto.abort()
        live = self._live()
        if live is not None:
            live.handle_timer(now)  # the shared reassembler's expiry included
            self._flush(live, now)
        self._fast.handle_timer(now)

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
        for stream in [*self._candidates.clear(), *([self._stream] if self._stream else [])]:
            self._end_stream(stream)
            stream.proto.abort()
        self._stream = None
        self._lane = None
        if self._server is not None:
            self._server.close()
            self._server = None
        self._drop_twin()
        if self._udp is not None:
            self._udp.count_kernel_drops("udp_queue_full")
            self._udp.close()
            self._udp = None
        self._retire()
        if self._mp is not None:
            self._mp.close()
            self._mp = None
        self._pconn = None
        self._peer_acc = None
        self._quick = None
        self._detach_device()
        self.peer = None


def fmt_addr(addr: Addr | None) -> str:
    if addr is None:
        return "-"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
