"""The OpenVPN server's I/O: one device, one UDP socket (or a TCP listener), many clients.

Every protocol decision is :class:`~.proto.openvpn.server.OpenVPNServer`'s (which session
a datagram belongs to, the cookie gate, TLS, keys, pool, CCD, push) and
:class:`~.proto.router.Router`'s (which client a packet goes to, anti-spoofing on inner
source addresses, client-to-client). Here we only read, dispatch, write, and run what
lives outside proto/: the ``auth-user-pass-verify``, ``client-connect`` and
``client-disconnect`` scripts, the ``ifconfig-pool-persist`` and ``status`` files.

One timer for the server (the earliest deadline of its sessions). UDP: a datagram is
handed to the server, then the sessions it touched give up their frames (to the device,
or to another client) and their datagrams. TCP: one stream per client, with the
server's bounds (``max-clients``, handshakes per source) decided before any TLS.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import logging
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from .config import TunnelConfig
from .errors import ConfigError, TunconnectorError
from .hooks import run_program
from .io import netlink as nl
from .io import routes as rt
from .io.device import Device
from .io.offload import enable_socket_offload, probe_vnet_hdr_support, takes_uso_writes
from .io.udp import UdpEndpoint, family_for, normalize, open_connected_twin, open_udp
from .lifecycle import State, StateFace
from .ovpn_scripts import LINK_MTU_OVERHEAD
from .ovpnserver_mgmt import ServerManagementListener
from .ovpnserverconf import ServerConfig
from .proto.admission import MAX_UNPROVEN, UNPROVEN_RECEIVED, Admission
from .proto.connection import (
    Addr,
    AddressChanged,
    AuthRequest,
    ClientConnect,
    ClientDisconnect,
    Connected,
    Disconnected,
    Notice,
)
from .proto.mactable import FLOOD, LOCAL, MacTable
from .proto.offload import VNET_HDR_LEN, coalesce_tcp
from .proto.openvpn.ccd import parse_client_config
from .proto.openvpn.packet import DATA_OPCODES
from .proto.openvpn.server import OpenVPNServer, OpenVPNServerSession
from .proto.openvpn.serverstatus import (
    NO_PEER_ID,
    ClientRow,
    RouteRow,
    ServerSnapshot,
    real_address,
    route_address,
    status_text,
)
from .proto.router import DROP, FORWARD

log = logging.getLogger("tunconnector.openvpn.server")

#: datagrams read per loop turn from the shared socket
READ_BATCH = 64
#: a script (auth-user-pass-verify, client-connect) that runs longer is a refusal
SCRIPT_TIMEOUT = 30.0
#: bytes read from a TCP client per call
TCP_READ = 65_536
#: seconds a TCP client has to connect (TLS, key exchange, authentication scripts);
#: openvpn gives hand-window (60 s) to each; a shorter one of ours, when smaller, wins
PROVE_WITHIN_TLS = 30.0
#: while clients have sockets of their own, the shared one (new clients, strangers)
#: is read at most SHARED_BATCH datagrams per turn, resting SHARED_REST s after a full one
SHARED_BATCH = 64
SHARED_REST = 0.002


class OpenVPNServerTunnel(StateFace):
    """An openvpn ``--server`` config served: see the module docstring."""

    def __init__(self, sc: ServerConfig, *, name: str = "openvpn",
                 netlink: nl.Netlink | None = None, config: TunnelConfig | None = None
                 ) -> None:
        self.sc = sc
        self.name = name
        #: the ``[[tunnel]]`` this server is (``openvpn_config`` naming a server config)
        self.config = config or TunnelConfig(name=name, mode="server", framing="openvpn",
                                             proto="tcp" if sc.proto == "tcp" else "udp",
                                             dev_type="tap" if sc.dev_type == "tap"
                                             else "tun", port=sc.port)
        self.log = logging.LoggerAdapter(log, {"tunnel": name})
        self._init_state()
        self._peer_hooks: Any = None
        #: clients whose peer_up fired (their peer_down fires once)
        self._announced: set[OpenVPNServerSession] = set()
        self.server = OpenVPNServer(sc.options)
        self.net = sc.expansion()
        self.device: Device | None = None
        self.device_name = ""
        self.netlink = netlink or nl.Netlink()
        self._udp: UdpEndpoint | None = None
        self._tcp: asyncio.Server | None = None
        self._streams: dict[OpenVPNServerSession, asyncio.StreamWriter] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._routes: list[str] = []
        self.drops: dict[str, int] = {}
        self.udp_drops: collections.Counter[str] = collections.Counter()
        self.bytes_in = self.bytes_out = 0
        self._pool_dirty = False
        self.connects = 0
        self.started = asyncio.Event()
        #: TCP streams not yet connected: bounded, each with a deadline (hand-window)
        self._unproven: Admission[OpenVPNServerSession, OpenVPNServerSession] = Admission(
            MAX_UNPROVEN, min(sc.options.hand_window, PROVE_WITHIN_TLS))
        self._tcp_refusal_logged = -1e9
        #: connected UDP clients' own sockets (see _own_queue)
        self._own: dict[OpenVPNServerSession, UdpEndpoint] = {}
        #: socket addresses as the server keys them (IPv4-mapped IPv6 made plain)
        self._norm: dict[Any, Addr] = {}
        #: the crl-verify file's (mtime, size) as last read
        self._crl_seen = self._crl_stamp()
        #: TAP: which client (peer-id) or the device (LOCAL) owns a MAC address
        self.macs: MacTable | None = MacTable() if sc.dev_type == "tap" else None

    @classmethod
    def from_tunnel_config(cls, cfg: TunnelConfig, *, netlink: nl.Netlink | None = None
                           ) -> OpenVPNServerTunnel:
        """A ``[[tunnel]]`` whose ``openvpn_config`` is a server config; the tunnel's
        ``device`` wins over the config's ``dev``."""
        from .ovpnserverconf import load

        sc = load(cfg.openvpn_config or "")
        if cfg.device:
            sc.device = cfg.device
        return cls(sc, name=cfg.name, netlink=netlink, config=cfg)

    # ------------------------------------------------------------------ tunnel face
    @property
    def peer_table(self) -> OpenVPNServerTunnel:
        """Its peer table's face (hooks per client, the REST API's peer endpoints, which
        refuse changes: :attr:`peer_table_refusal`)."""
        return self

    def set_hooks(self, hooks: Any) -> None:
        """``[tunnel.hooks]`` ``peer_up``/``peer_down`` per client (a hub's PeerHooks:
        its ``hooks`` and ``base_env``), with the peer's name = common name."""
        self._peer_hooks = hooks

    def _fire_peer(self, event: str, session: OpenVPNServerSession) -> None:
        hooks = self._peer_hooks
        if hooks is None:
            return
        from .hooks import peer_env

        env = dict(hooks.base_env())
        env.update(peer_env(name=session.common_name or session.username,
                            endpoint=_fmt(session.peer), remote_address=session.address))
        hooks.hooks.fire(event, env)

    def _update_state(self) -> None:
        if self.state in (State.DOWN, State.UP):
            up = any(s.state == "connected" for s in self.server.sessions.values())
            self._set_state(State.UP if up else State.DOWN)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.is_running:
            return
        self._loop = asyncio.get_running_loop()
        self.error = None
        self._set_state(State.STARTING)
        try:
            self._load_pool()
            await self._open_device()
            if self.sc.proto == "tcp":
                await self._open_tcp()
            else:
                self._open_udp()
        except BaseException as exc:
            self.error = str(exc) if isinstance(exc, TunconnectorError) else repr(exc)
            await self._close_io()
            self._set_state(State.FAILED)
            raise
        self._spawn(self._periodic())
        log.info("openvpn server %s: %s on %s, device %s", self.name, self.sc.proto,
                 self.sc.port, self.device_name)
        self._set_state(State.DOWN)
        self.started.set()

    async def close(self) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Tell every client to reconnect (explicit-exit-notify), then close."""
        if not self.is_running:
            return
        now = self._now()
        for session in list(self.server.sessions.values()):
            if not session.closed:
                if self.sc.explicit_exit_notify and self.sc.proto == "udp":
                    self.server.close_session(session, now)
        self._flush_all(now)
        self._drain_events()
        self._save_pool()
        self._write_status()
        await self._close_io()
        self._set_state(State.STOPPED)

    async def _close_io(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        for w in list(self._streams.values()):
            w.close()
        self._streams.clear()
        if self._tcp is not None:
            self._tcp.close()
        for own in self._own.values():
            own.close()
        self._own.clear()
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        self._tcp = None
        if self.device is not None:
            assert self._loop is not None
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.device.fd)
            if self._routes:
                with contextlib.suppress(Exception):
                    await self.netlink.call(rt.del_routes, self.device_name, self._routes)
            self.device.close()
            self.device = None
            down = self.sc.scripts.get("down")
            if down:
                await self._run_script(down, self._device_env("down"), self._device_args())

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ device
    async def _open_device(self) -> None:
        sc, net = self.sc, self.net
        dev = self._open_tun_tap()
        self.device = dev
        self.device_name = dev.name
        addresses: list[Any] = []
        routes: list[str] = list(net.routes)
        if net.local4 is not None and sc.options.server_bridge is None:
            if net.topology == "net30" or net.topology == "p2p":
                addresses.append(ipaddress.ip_interface(f"{net.local4}/32"))
            elif net.remote_netmask4 is not None:
                addresses.append(ipaddress.ip_interface(f"{net.local4}/{net.remote_netmask4}"))
        if net.local6 is not None:
            addresses.append(ipaddress.ip_interface(f"{net.local6}/{net.netbits6}"))
        await self.netlink.call(nl.configure, dev.name, addresses=addresses,
                                mtu=sc.options.tun_mtu)
        routes += sc.routes
        if routes:
            self._routes = await self.netlink.call(rt.add_routes, dev.name, routes)
        assert self._loop is not None
        self._loop.add_reader(dev.fd, self._on_device_readable)
        up = sc.scripts.get("up")
        if up and not await self._run_script(up, self._device_env("up"),
                                             self._device_args()):
            raise TunconnectorError(f"up script {up[0]!r} failed")

    def _open_tun_tap(self) -> Device:
        """The device; a TUN with IFF_VNET_HDR when the kernel has it (and
        $TUNCONNECTOR_OFFLOAD is not "off"), so runs of a TCP flow's segments from a
        client are written as one super-packet (:func:`coalesce_tcp`, and UDP's with
        ``coalesce_udp`` when the kernel takes USO writes). No TUNSETOFFLOAD:
        what we read stays plain packets, each behind a zero header."""
        sc = self.sc
        if sc.dev_type != "tap" and probe_vnet_hdr_support() and \
                os.environ.get("TUNCONNECTOR_OFFLOAD", "").lower() != "off":
            try:
                dev = Device(sc.device or "", "tun", vnet_hdr=True)
            except TunconnectorError as exc:
                log.info("openvpn server %s: no IFF_VNET_HDR (%s): plain writes",
                         self.name, exc)
            else:
                dev.coalesce_udp = takes_uso_writes(dev.fd)  # runs of a UDP flow too
                return dev
        return Device(sc.device or "", "tap" if sc.dev_type == "tap" else "tun")

    def _device_args(self) -> list[str]:
        """openvpn's up/down arguments: dev tun_mtu link_mtu ifconfig_local
        ifconfig_netmask|ifconfig_remote init (server-bridge: no addresses, as openvpn
        leaves a bridged device to the operator's up script)."""
        net, mtu = self.net, self.sc.options.tun_mtu
        local = "" if net.local4 is None or self.sc.options.server_bridge is not None \
            else str(net.local4)
        other = "" if not local or net.remote_netmask4 is None else str(net.remote_netmask4)
        return [self.device_name, str(mtu), str(mtu + LINK_MTU_OVERHEAD), local, other,
                "init"]

    def _device_env(self, script_type: str) -> dict[str, str]:
        args = self._device_args()
        env = {"script_type": script_type, "dev": self.device_name, "dev_type":
               self.sc.dev_type, "tun_mtu": args[1], "link_mtu": args[2],
               "script_context": "init", "config": self.sc.path}
        if args[3]:
            env["ifconfig_local"] = args[3]
            env["ifconfig_netmask" if self.net.topology in ("subnet", None)
                else "ifconfig_remote"] = args[4]
        return env

    def _on_device_readable(self) -> None:
        dev = self.device
        if dev is None:
            return
        try:
            frames = dev.read_batch(READ_BATCH)
        except (OSError, TunconnectorError) as exc:
            self._drop("device_read_error")
            log.warning("openvpn server %s: device read failed: %s", self.name, exc)
            return
        if not frames:
            return
        # without TUNSETOFFLOAD the header is all zero: skipped by the routing and the
        # sealing (offset), not copied off each packet
        off = VNET_HDR_LEN if dev.vnet_hdr else 0
        now = self._now()
        by_peer: dict[Any, list[bytes]] = {}
        if self.macs is not None:
            if off:  # (a TAP device is never opened with the header)
                frames, off = [f[off:] for f in frames], 0
            connected = [pid for pid, s in self.server.by_peer_id.items()
                         if s.state == "connected"]
            for f in frames:
                egress, refused = self.macs.decide(f, LOCAL, now)
                if refused is not None:
                    self._drop(refused)
                elif egress == FLOOD:
                    for pid in connected:
                        by_peer.setdefault(pid, []).append(f)
                elif egress is not None and egress is not LOCAL:
                    by_peer.setdefault(egress, []).append(f)
        else:
            router = self.server.router
            for f in frames:
                owner = router.outbound(f, off)
                if owner is None:
                    self._drop("no_route")
                    continue
                by_peer.setdefault(owner, []).append(f)
        touched = []
        for pid, fs in by_peer.items():
            session = self.server.by_peer_id.get(pid)
            if session is None or session.closed:
                self._drop("no_session", len(fs))
                continue
            session.send_frames(fs, now, off)
            touched.append(session)
        for session in touched:
            self._flush(session, now)

    # ------------------------------------------------------------------ UDP
    def _open_udp(self) -> None:
        sc = self.sc
        family = family_for(sc.local) if sc.local else family_for(None)
        if sc.family == 4 and not sc.local:
            family = socket.AF_INET
        sock = open_udp(bind=sc.local, port=sc.port, family=family,
                        rcvbuf=sc.rcvbuf or 4 << 20, sndbuf=sc.sndbuf or 4 << 20)
        self._udp = UdpEndpoint(sock, self.udp_drops)
        # UDP GSO/GRO: a client's run of equal-size datagrams leaves in one sendmsg and
        # arrives in one read ($TUNCONNECTOR_OFFLOAD=off keeps the socket plain)
        off = enable_socket_offload(
            sock, want=os.environ.get("TUNCONNECTOR_OFFLOAD", "").lower() != "off")
        self._udp.gso, self._udp.gro = off.gso, off.gro
        self._udp.start(self._on_udp_batch, max_batch=READ_BATCH)

    def _on_udp_batch(self, batch: list[tuple[bytes, Any]]) -> None:
        now = self._now()
        touched: dict[OpenVPNServerSession, None] = {}
        frames: dict[OpenVPNServerSession, list[bytes]] = {}
        server = self.server
        sessions = server.sessions
        norm = self._norm
        if len(norm) > 4096:
            norm.clear()
        for data, raw in batch:
            self.bytes_in += len(data)
            addr = norm.get(raw)
            if addr is None:
                addr = norm[raw] = normalize(raw)
            try:
                # the fast path: data from a connected client's own address
                if data and (data[0] >> 3) in DATA_OPCODES:
                    session = sessions.get(addr)
                    if session is not None:
                        got = session.quick_data(data, now)
                        if got is not False:
                            if got is not None:
                                got_frames = frames.get(session)
                                if got_frames is None:
                                    frames[session] = [got]  # type: ignore[list-item]
                                else:
                                    got_frames.append(got)  # type: ignore[arg-type]
                            touched[session] = None
                            continue
                session = server.receive_datagram(bytes(data), addr, now)
            except Exception:  # a bug must not take the other clients down
                log.exception("openvpn server %s: datagram from %s", self.name, _fmt(addr))
                self._drop("internal_error")
                continue
            if session is not None:
                touched[session] = None
        for session, fs in frames.items():
            self._route(session, fs, now, touched)
        self._after(touched, now)

    # ------------------------------------------------------------------ TCP
    async def _open_tcp(self) -> None:
        sc = self.sc
        host = sc.local or ("0.0.0.0" if sc.family == 4 else None)
        self._tcp = await asyncio.start_server(self._on_tcp_client, host=host, port=sc.port,
                                               reuse_address=True)

    async def _on_tcp_client(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        addr: Addr = normalize(tuple(peer)) if peer else None
        now = self._now()
        session = self.server.accept_stream(addr, now)
        if session is None:
            self._drop("tcp_refused")
            if now >= self._tcp_refusal_logged + 10.0:  # one line per 10 s under a flood
                self._tcp_refusal_logged = now
                log.warning("openvpn server %s: TCP client %s refused (%s)", self.name,
                            _fmt(addr), ", ".join(f"{k}={v}" for k, v in
                                                  sorted(self.server.drops.items())))
            writer.close()
            return
        self._streams[session] = writer
        # until it is connected the stream is one of a bounded set with a deadline, and
        # may send at most UNPROVEN_RECEIVED bytes (a TLS handshake is far smaller)
        for old in self._unproven.add(session, session, now):
            self._drop("tcp_unproven_evicted")
            self.server.close_session(old, now)
            self._drain_events()
        received = 0
        try:
            while not session.closed:
                data = await reader.read(TCP_READ)
                if not data:
                    break
                self.bytes_in += len(data)
                now = self._now()
                if session in self._unproven:
                    received += len(data)
                    if received > UNPROVEN_RECEIVED:
                        self._drop("tcp_unproven_overflow")
                        break
                session.receive_stream(data, now)
                self.server.collect(session)
                self._after({session: None}, now)
        except (ConnectionError, OSError):
            pass
        finally:
            now = self._now()
            self._unproven.pop(session)
            if not session.closed:
                self.server.close_session(session, now)
            self._streams.pop(session, None)
            self._drain_events()
            writer.close()

    # ------------------------------------------------------------------ dispatch
    def _after(self, touched: dict[OpenVPNServerSession, None], now: float) -> None:
        """What the sessions in ``touched`` produced: events, frames, datagrams."""
        self._drain_events()
        for session in list(touched):
            frames = session.frames_to_deliver()
            if frames:
                self._route(session, frames, now, touched)
        gate = self.server.take_gate_datagrams()
        if gate:
            self._send_datagrams(gate)
        schedule = self.server.schedule
        for session in touched:
            self._flush(session, now)
            schedule(session)  # the fast path may have moved its deadline
        self._arm()

    def _route(self, session: OpenVPNServerSession, frames: list[bytes], now: float,
               touched: dict[OpenVPNServerSession, None]) -> None:
        router = self.server.router
        to_dev: list[bytes] = []
        macs = self.macs
        for f in frames:
            if macs is not None:
                self._switch(session, f, now, to_dev, touched)
                continue
            v = router.inbound(session.peer_id, f)
            if v.action == DROP:
                self._drop(v.reason)
            elif v.action == FORWARD:
                other = self.server.by_peer_id.get(v.peer)  # type: ignore[call-overload]
                if other is None or other.closed:
                    self._drop("no_session")
                    continue
                other.send_frames([f], now)
                touched[other] = None
            else:
                to_dev.append(f)
        dev = self.device
        if to_dev and dev is not None:
            if dev.vnet_hdr and len(to_dev) > 1:
                to_dev = coalesce_tcp(to_dev)
            bad = dev.write_batch(to_dev)
            if bad:
                self._drop("device_refused", bad)

    def _switch(self, session: OpenVPNServerSession, f: bytes, now: float,
                to_dev: list[bytes], touched: dict[OpenVPNServerSession, None]) -> None:
        """TAP: a learning switch between the device and the clients (client-to-client
        decides whether clients reach each other, as openvpn's)."""
        assert self.macs is not None
        egress, refused = self.macs.decide(f, session.peer_id, now)
        if refused is not None:
            self._drop(refused)
        elif egress is None:
            self._drop("hairpin")
        elif egress is LOCAL:
            to_dev.append(f)
        elif egress == FLOOD:
            to_dev.append(f)
            if self.sc.options.client_to_client:
                for other in self.server.by_peer_id.values():
                    if other is not session and other.state == "connected":
                        other.send_frames([f], now)
                        touched[other] = None
        elif not self.sc.options.client_to_client:
            self._drop("client_to_client")
        else:
            other = self.server.by_peer_id.get(egress)  # type: ignore[call-overload]
            if other is None or other.closed:
                self._drop("no_session")
            else:
                other.send_frames([f], now)
                touched[other] = None

    def _flush(self, session: OpenVPNServerSession, now: float) -> None:
        writer = self._streams.get(session)
        if writer is not None:
            chunks = session.stream_to_send(now)
            if chunks:
                data = b"".join(chunks)
                self.bytes_out += len(data)
                writer.write(data)
            if session.closed:
                writer.close()
            return
        if self.sc.proto == "tcp":
            session.datagrams_to_send(now)  # a stream already gone: nothing to carry
            return
        out = session.datagrams_to_send(now)
        if out:
            udp = self._udp
            if udp is None:
                return
            for data, _ in out:
                self.bytes_out += len(data)
            if len(out) == 1:
                udp.sendto(out[0][0], out[0][1])  # type: ignore[arg-type]
            else:  # one peer: runs of equal sizes leave in one UDP GSO sendmsg
                udp.send_batch([d for d, _ in out], out[0][1])  # type: ignore[arg-type]

    def _send_datagrams(self, out: list[tuple[bytes, Addr]]) -> None:
        udp = self._udp
        if udp is None:
            return
        for data, addr in out:
            self.bytes_out += len(data)
            udp.sendto(data, addr)  # type: ignore[arg-type]

    def _flush_all(self, now: float) -> None:
        gate = self.server.take_gate_datagrams()
        self._send_datagrams(gate)
        for session in list(self.server.sessions.values()):
            self._flush(session, now)

    def _drop(self, reason: str, n: int = 1) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n

    # ------------------------------------------------------------------ timer
    def _arm(self) -> None:
        at = self.server.get_timer()
        if at == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            assert self._loop is not None
            self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self._now()
        due: list[OpenVPNServerSession] = []
        try:
            due = self.server.handle_timer(now)
        except Exception:
            log.exception("openvpn server %s: timer", self.name)
        self._drain_events()
        gate = self.server.take_gate_datagrams()
        if gate:
            self._send_datagrams(gate)
        for session in due:
            self._flush(session, now)
        self._arm()

    # ------------------------------------------------------------------ events
    def _drain_events(self) -> None:
        server = self.server
        while (item := server.next_event()) is not None:
            session, ev = item
            if isinstance(ev, (Connected, AddressChanged)) and self._udp is not None:
                self._own_queue(session)
            if isinstance(ev, Connected):
                self._unproven.pop(session)
                log.info("openvpn server %s: client %s (%s) connected, address %s%s",
                         self.name, session.common_name or session.username,
                         _fmt(session.peer), session.address,
                         f" {session.address6}" if session.address6 else "")
                self._pool_dirty = True
                self.connects += 1
                self._update_state()
                self._announced.add(session)
                self._fire_peer("peer_up", session)
            elif isinstance(ev, Disconnected):
                self._pool_dirty = True
                self._update_state()
                self._retire_queue(session)
                if session in self._announced:
                    self._announced.discard(session)
                    self._fire_peer("peer_down", session)
                if self.macs is not None:
                    self.macs.forget_port(session.peer_id)
                writer = self._streams.pop(session, None)
                if writer is not None:
                    with contextlib.suppress(Exception):
                        chunks = session.stream_to_send(self._now())
                        if chunks:
                            writer.write(b"".join(chunks))
                    writer.close()
            elif isinstance(ev, AuthRequest):
                self._spawn(self._auth(session, ev))
            elif isinstance(ev, ClientConnect):
                self._spawn(self._client_connect(session, ev))
            elif isinstance(ev, ClientDisconnect):
                argv = self.sc.scripts.get("client-disconnect")
                if argv:
                    self._spawn(self._run_script(argv, ev.env))
            elif isinstance(ev, Notice):
                log.log(ev.level, "openvpn server %s: %s", self.name, ev.message)

    def _own_queue(self, session: OpenVPNServerSession) -> None:
        """A connected UDP client gets a socket of its own, connected to its address:
        the kernel hands it that client's datagrams before the shared socket, so a
        flood of strangers at the port (which fills the shared queue, read on a
        ration while clients have their own) neither drops nor delays them."""
        self._retire_queue(session)
        shared = self._udp
        if shared is None or not isinstance(session.peer, tuple):
            return
        try:
            sock = open_connected_twin(shared.sock, shared.tx_addr(session.peer),
                                       rcvbuf=self.sc.rcvbuf or 4 << 20)
        except TunconnectorError as exc:
            log.info("openvpn server %s: %s keeps the shared socket: %s", self.name,
                     _fmt(session.peer), exc)
            return
        own = UdpEndpoint(sock, self.udp_drops)
        off = enable_socket_offload(sock, want=shared.gro or shared.gso)
        own.gso, own.gro = off.gso, off.gro
        own.start(self._on_udp_batch, max_batch=READ_BATCH)
        self._own[session] = own
        shared.budget(SHARED_BATCH, SHARED_REST)

    def _retire_queue(self, session: OpenVPNServerSession) -> None:
        own = self._own.pop(session, None)
        if own is not None:
            own.count_kernel_drops("client_queue_full")
            own.close()
        if not self._own and self._udp is not None:
            self._udp.budget(READ_BATCH, 0.0)

    def _script_env(self, session: OpenVPNServerSession, script_type: str) -> dict[str, str]:
        env = dict(self.sc.setenv)
        env.update(session.script_env(script_type))
        env.update(dev=self.device_name, script_context="init", verb="3",
                   daemon="0", proto_1=self.sc.proto, local_port_1=str(self.sc.port),
                   config=self.sc.path)
        if "trusted_ip" in env:
            env["untrusted_ip"] = env["trusted_ip"]
            env["untrusted_port"] = env.get("trusted_port", "")
        return env

    async def _run_script(self, argv: list[str], env: dict[str, str],
                          extra_args: list[str] | None = None) -> bool:
        if self.sc.script_security < 2:
            log.warning("openvpn server %s: %s not run: script-security %d (needs 2)",
                        self.name, argv[0], self.sc.script_security)
            return False
        full = {**dict(self.sc.setenv), **env}
        result, why = await run_program([_program(argv[0]), *argv[1:], *(extra_args or [])],
                                        full, SCRIPT_TIMEOUT)
        if result != "ok":
            log.info("openvpn server %s: %s: %s", self.name, argv[0], why)
        return result == "ok"

    async def _auth(self, session: OpenVPNServerSession, ev: AuthRequest) -> None:
        argv = self.sc.scripts.get("auth-user-pass-verify")
        env = self._script_env(session, "user-pass-verify")
        env["username"] = ev.username or ""
        if ev.common_name:
            env["common_name"] = ev.common_name
        ok = False
        if argv:
            if self.sc.auth_user_pass_verify_via == "via-env":
                if self.sc.script_security < 3:  # openvpn: passwords in env need level 3
                    log.warning("openvpn server %s: auth-user-pass-verify via-env needs "
                                "script-security 3 (the password goes in the environment)",
                                self.name)
                else:
                    env["password"] = ev.password or ""
                    ok = await self._run_script(argv, env)
            else:
                fd, path = tempfile.mkstemp(prefix="tunconnector-auth-")
                try:
                    with os.fdopen(fd, "w") as f:
                        f.write(f"{ev.username or ''}\n{ev.password or ''}\n")
                    ok = await self._run_script(argv, env, [path])
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
        if session.closed:
            return
        why = f"auth-user-pass-verify refused user {ev.username!r}" if argv \
            else "auth-user-pass-verify: no script"
        now = self._now()
        self.server.auth_result(session, ok, now, why=why)  # the session logs a refusal
        self._after({session: None}, now)

    async def _client_connect(self, session: OpenVPNServerSession,
                              ev: ClientConnect) -> None:
        argv = self.sc.scripts.get("client-connect")
        config = None
        ok = True
        if argv:
            fd, path = tempfile.mkstemp(prefix="tunconnector-cc-")
            os.close(fd)
            try:
                env = {**self._script_env(session, "client-connect"), **ev.env}
                ok = await self._run_script(argv, env, [path])
                text = Path(path).read_text(errors="replace")
                if ok and text.strip():
                    config = parse_client_config(text, f"client-connect {argv[0]}")
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            if not ok:
                log.warning("openvpn server %s: %s (%s) refused by client-connect",
                            self.name, session.common_name, _fmt(session.peer))
        if session.closed:
            return
        now = self._now()
        self.server.client_connect_result(session, ok, now, config)
        self._after({session: None}, now)

    # ------------------------------------------------------------------ files
    def _load_pool(self) -> None:
        path = self.sc.pool_persist
        if not path:
            return
        try:
            text = Path(path).read_text()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("openvpn server %s: ifconfig-pool-persist %s: %s", self.name,
                        path, exc)
            return
        n = self.server.load_pool(text, time.monotonic(),
                                  fixed=self.sc.pool_persist_seconds == 0)
        log.info("openvpn server %s: %d address(es) from %s", self.name, n, path)

    def _save_pool(self) -> None:
        path = self.sc.pool_persist
        if not path or self.sc.pool_persist_seconds == 0:
            return
        tmp = f"{path}.tmp"
        try:
            Path(tmp).write_text(self.server.pool_file())
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("openvpn server %s: cannot write %s: %s", self.name, path, exc)
        self._pool_dirty = False

    def _crl_stamp(self) -> tuple[float, int] | None:
        path = self.sc.crl_verify
        if not path:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_mtime, st.st_size

    def _check_crl(self) -> None:
        """``crl-verify FILE`` changed: new handshakes check the new list and clients
        it revokes are ended (openvpn reads the file for each handshake; a bad file
        keeps the list in force, with an error)."""
        stamp = self._crl_stamp()
        if stamp is None or stamp == self._crl_seen:
            return
        self._crl_seen = stamp
        assert self.sc.crl_verify is not None
        try:
            pem = Path(self.sc.crl_verify).read_bytes()
            now = self._now()
            ended = self.server.set_crl(pem, now)
        except (OSError, ConfigError) as exc:
            log.error("openvpn server %s: crl-verify %s: %s (the previous list stays)",
                      self.name, self.sc.crl_verify, exc)
            return
        self._drain_events()
        self._flush_all(now)
        self._arm()
        log.info("openvpn server %s: crl-verify %s read again, %d client(s) ended",
                 self.name, self.sc.crl_verify, len(ended))

    def snapshot(self) -> ServerSnapshot:
        clients, routes = [], []
        wall = int(time.time())
        for s in self.server.sessions.values():
            if s.state != "connected":
                continue
            host, port = _host_port(s.peer)
            real = real_address(host, port)
            cn = s.common_name or s.username or "UNDEF"
            clients.append(ClientRow(
                common_name=cn, real_address=real, virtual_address=s.address or "",
                virtual_ipv6=s.address6 or "", bytes_received=s.link_bytes_in,
                bytes_sent=s.link_bytes_out, connected_since=s.created_wall,
                username=s.username or "UNDEF", client_id=s.peer_id,
                peer_id=s.peer_id if s.peer_id is not None else NO_PEER_ID,
                cipher=s.cipher or ""))
            for net in s.prefixes():
                text = str(net.network_address) if net.prefixlen == net.max_prefixlen \
                    else str(net)
                routes.append(RouteRow(route_address(text), cn, real, wall))
        return ServerSnapshot(wall, tuple(clients), tuple(routes),
                              bytes_in=self.bytes_in, bytes_out=self.bytes_out)

    def _write_status(self) -> None:
        path = self.sc.status
        if not path:
            return
        tmp = f"{path}.tmp"
        try:
            Path(tmp).write_text(status_text(self.snapshot(), self.sc.status_version))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("openvpn server %s: cannot write %s: %s", self.name, path, exc)

    async def _periodic(self) -> None:
        """The status file every ``status`` N seconds, the pool file within a second
        of a change (openvpn: every SECONDS; a restart then keeps every address), the
        crl-verify file checked every second."""
        status_every = max(1, self.sc.status_interval or 60)
        pool_every = max(1, self.sc.pool_persist_seconds or 600)
        last_pool = time.monotonic()
        last_status = last_pool
        self._write_status()
        while True:
            await asyncio.sleep(1.0)
            self._check_crl()
            expired = self._unproven.expired(self._now())
            for session in expired:
                self._drop("tcp_unproven_timeout")
                self.server.close_session(session, self._now())
            if expired:
                self._drain_events()
            if time.monotonic() - last_status >= status_every:
                self._write_status()
                last_status = time.monotonic()
            if self._pool_dirty and time.monotonic() - last_pool >= min(pool_every, 1):
                self._save_pool()
                last_pool = time.monotonic()

    # ------------------------------------------------------------------ status, peers
    def peer_status(self, s: OpenVPNServerSession, now: float) -> dict[str, Any]:
        """A client as the hub shows a peer (``name`` is its common name), plus
        openvpn's facts (virtual addresses, peer-id, cipher, iroutes)."""
        st = s.status(now)
        last = s.last_heard
        drops = {k: v for k, v in sorted(s.drops.items()) if v}
        return {
            "name": s.common_name or s.username or f"peer-{s.peer_id}",
            "common_name": s.common_name, "username": s.username,
            "endpoint": _fmt(s.peer) if s.peer is not None else None,
            "address": s.address, "address6": s.address6, "iroutes": st.get("iroutes", []),
            "allowed_ips": st.get("iroutes", []), "key": f"peer-id {s.peer_id}",
            "peer_id": s.peer_id, "cipher": s.cipher,
            "state": "up" if s.state == "connected" else s.state,
            "last_rx_age": None if last is None else round(now - last, 3),
            "rx_bytes": s.bytes_in, "tx_bytes": s.bytes_out,
            "rx_packets": s.packets_in, "tx_packets": s.packets_out,
            "link_rx_bytes": s.link_bytes_in, "link_tx_bytes": s.link_bytes_out,
            "renegotiations": s.renegotiations, "error": s.last_error,
            "connected_since": s.created_wall, "drops": drops,
        }

    def peers_status(self) -> list[dict[str, Any]]:
        now = self._now() if self._loop is not None else time.monotonic()
        return [self.peer_status(s, now) for s in self.server.sessions.values()
                if not s.closed]

    def all_drops(self) -> dict[str, int]:
        drops: collections.Counter[str] = collections.Counter(self.drops)
        drops.update(self.udp_drops)
        drops.update(self.server.drops)
        drops.update({f"gate_{k}": v for k, v in self.server.gate.drops.items()})
        return {k: v for k, v in sorted(drops.items()) if v}

    def status(self) -> dict[str, Any]:
        cfg = self.config
        peers = self.peers_status()
        up = sum(1 for p in peers if p["state"] == "up")
        net = self.net
        rx = sum(s.bytes_in for s in self.server.sessions.values())
        tx = sum(s.bytes_out for s in self.server.sessions.values())
        return {
            "name": self.name, "mode": "server", "hub": True, "openvpn_server": True,
            "proto": self.sc.proto, "framing": "openvpn",
            "transport": f"{self.sc.proto}/openvpn", "dev_type": self.sc.dev_type,
            "device": self.device_name, "netns": cfg.netns,
            "addresses": [a for a in (str(net.local4) if net.local4 else None,
                                      str(net.local6) if net.local6 else None) if a],
            "mtu": self.sc.options.tun_mtu, "local": f"{self.sc.local or '*'}:{self.sc.port}",
            "peer": None, "state": self.state.value, "error": self.error,
            "encrypted": True, "since": self.since,
            "rx_bytes": rx, "tx_bytes": tx,
            "rx_packets": sum(s.packets_in for s in self.server.sessions.values()),
            "tx_packets": sum(s.packets_out for s in self.server.sessions.values()),
            "last_rx_age": None, "connects": self.connects, "link_rx_bytes": self.bytes_in,
            "link_tx_bytes": self.bytes_out, "drops": self.all_drops(),
            "peers_up": up, "client_to_client": self.sc.options.client_to_client,
            "gate": {"replies": self.server.gate.replies,
                     "accepted": self.server.gate.accepted},
            "crypto": {"established": up > 0, "mode": "openvpn-tls",
                       "cipher": ",".join(sorted({p["cipher"] for p in peers
                                                   if p.get("cipher")})) or None,
                       "handshakes": self.connects,
                       "rekeys": sum(p.get("renegotiations") or 0 for p in peers)},
            "peers": peers,
        }

    async def delete_peer(self, name: str) -> bool:
        """End the clients named ``name`` (common name, or user name): openvpn's
        management ``kill``; they are told to reconnect."""
        now = self._now()
        found = [s for s in self.server.sessions.values() if not s.closed and
                 name in (s.common_name, s.username)]
        for s in found:
            self.server.close_session(s, now)
        self._drain_events()
        self._flush_all(now)
        self._arm()
        return bool(found)

    # ------------------------------------------------------------------ management
    #: the ``management`` interface, while :meth:`start_management` has it open
    management: ServerManagementListener | None = None

    async def start_management(self) -> None:
        """Open the config's ``management`` socket (:mod:`.ovpnserver_mgmt`); nothing
        without one. Raises TransportError when it cannot listen."""
        spec = self.sc.management
        if spec is None or self.management is not None:
            return

        def settle(now: float) -> None:  # a client ended by kill/client-kill
            self._drain_events()
            self._flush_all(now)
            self._arm()

        mgmt = ServerManagementListener(
            spec, self, settle=settle, status_version=self.sc.status_version,
            local_ip=str(self.net.local4) if self.net.local4 else "")
        await mgmt.start()
        self.management = mgmt

    async def stop_management(self) -> None:
        mgmt, self.management = self.management, None
        if mgmt is not None:
            await mgmt.close()

    #: why ``PUT /v1/tunnels/{name}/peers/{peer}`` does not apply here (the API says so)
    peer_table_refusal = ("an OpenVPN server's clients are its CA's certificates: issue one "
                          "to add a client; per-client settings go in client-config-dir")

    async def put_peer(self, cfg: Any) -> str:
        raise ConfigError(self.peer_table_refusal)

    async def apply_peers(self, table: Any) -> dict[str, Any]:
        """``tunconnector reload`` / SIGHUP: the client-config-dir is read again."""
        return {"reconnected": self.reload_client_configs()}

    def reload_client_configs(self) -> list[str]:
        """Re-read the config's client-config-dir; clients whose file changed (or whom
        ``ccd-exclusive`` now refuses) reconnect to get it, the others stay up."""
        from .ovpnserverconf import load

        try:
            fresh = load(self.sc.path)
        except TunconnectorError as exc:
            log.error("openvpn server %s: reload: %s (the running config stays)",
                      self.name, exc)
            raise
        self._check_crl()
        now = self._now()
        ended = self.server.set_client_configs(fresh.options.client_configs, now)
        self._drain_events()
        self._flush_all(now)
        self._arm()
        names = [s.common_name or s.username or "?" for s in ended]
        log.info("openvpn server %s: client-config-dir read again, %d client(s) "
                 "reconnected", self.name, len(ended))
        return names


def _program(name: str) -> str:
    """openvpn runs a script by ``execve``: a name without a slash is a file in the
    working directory, not a PATH lookup (a PATH name is still found when no such file
    exists)."""
    if "/" not in name and os.path.exists(name):
        return os.path.join(os.getcwd(), name)
    return name


def _host_port(addr: Addr) -> tuple[str, int]:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        if host.startswith("::ffff:") and "." in host:
            host = host[len("::ffff:"):]
        return host, int(addr[1])
    return "?", 0


def _fmt(addr: Addr) -> str:
    host, port = _host_port(addr)
    return f"{host}:{port}"


async def serve(path: str, *, name: str = "openvpn", control_dir: str | None = None,
                log_level: str = "info", nice: int = 0) -> int:
    """Run the server config at ``path`` as the one tunnel of a Node (so ``tunconnector
    status``, the control socket and metrics see it) until SIGTERM/SIGINT; SIGHUP reads
    the client-config-dir again."""
    import signal

    from .config import Config
    from .node import Node

    mapping: dict[str, Any] = {"tunnel": [{"name": name, "openvpn_config": path}],
                               "log_level": log_level, "nice": nice}
    if control_dir:
        mapping["control_dir"] = control_dir
    node = Node(Config.from_mapping(mapping), strict=True, control_socket=True)
    tunnel = node.tunnels[name]
    assert isinstance(tunnel, OpenVPNServerTunnel)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(tunnel))
    try:
        await node.start()
    except TunconnectorError as exc:
        log.error("openvpn server %s: %s", name, exc)
        await node.stop()
        return 1
    try:
        await tunnel.start_management()
    except TunconnectorError as exc:
        log.error("openvpn server %s: %s", name, exc)
        await node.stop()
        return 1
    log.info("Initialization Sequence Completed")
    await stop.wait()
    log.info("openvpn server %s: stopping", name)
    await tunnel.stop_management()
    await node.stop()
    return 0


def _reload(tunnel: OpenVPNServerTunnel) -> None:
    """SIGHUP: re-read the client-config-dir; clients whose file changed reconnect."""
    with contextlib.suppress(TunconnectorError):
        tunnel.reload_client_configs()


__all__ = ["OpenVPNServerTunnel", "serve"]
