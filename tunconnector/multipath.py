"""Asyncio adapter for userspace multi-path: one UDP socket per ``[[tunnel.path]]``.

The decisions live in :class:`tunconnector.proto.failover.MultiPath` (probes, RTT, loss,
up/down, which path carries data); this module only opens the sockets (bound to the
path's ``local`` address and/or ``bind_interface``), answers and forwards probes, drops
duplicate copies, hands everything else to the tunnel's connection (a
:class:`~.proto.native_conn.NativeConnection` whose peer is ``PATHS``: liveness,
crypto and events are the connection's, as over one socket), and re-arms one timer for
the probes. The tunnel's flush calls :meth:`MultiPathLink.flush` to send what the
connection made: data on the path(s) the policy picks, control on every path in use.

Peer addresses: a client knows each path's ``remote``; a server learns a path's peer
from the first probe (or authenticated message) arriving on that path's socket. In
plaintext a later probe from a new source moves the path (NAT rebinding, like the
tunnel's own float); with encryption only an authenticated message moves it, so an
unauthenticated probe can at most get an answer.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .config import DEFAULT_PORT, PathConfig, TunnelConfig
from .errors import RemoteProtocolError, TransportError
from .io.udp import Addr, UdpEndpoint, family_for, normalize, open_udp
from .proto.dedup import DuplicateFilter
from .proto.failover import (
    ActivePathChanged,
    MultiPath,
    MultiPathEvent,
    PathDown,
    PathSpec,
    PathUp,
    PeerRestarted,
)
from .proto.framing import HEADER_LEN, TAG_LEN, MsgType, parse_header
from .proto.native_conn import NativeConnection
from .proto.reorder import ReorderBuffer

log = logging.getLogger("tunconnector.multipath")

_PROBE = int(MsgType.PROBE)
_PROBE_ACK = int(MsgType.PROBE_ACK)
_DATA = int(MsgType.DATA)
_KEEPALIVE = int(MsgType.KEEPALIVE)
MAX_EVENTS = 32
REORDER_MIN = 0.002
REORDER_MAX = 0.05
#: sendto() errors that mean "this path cannot work now" (interface down, no route)
LINK_ERRNOS = frozenset({errno.ENETDOWN, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENODEV,
                         errno.EADDRNOTAVAIL})


@dataclass(slots=True)
class _PathIO:
    index: int
    cfg: PathConfig
    endpoint: UdpEndpoint | None = None
    sock: socket.socket | None = None
    v4mapped: bool = False
    remote: Addr | None = None
    dest: Addr | None = None  # remote as passed to sendto()
    fixed: bool = False  # client: the remote comes from the config and never moves


class MultiPathLink:
    """The sockets of one multi-path tunnel, driven by a :class:`MultiPath` core."""

    def __init__(
        self,
        cfg: TunnelConfig,
        conn: NativeConnection,
        *,
        deliver: Callable[[list[bytes], float], None],
        after_receive: Callable[[float], None],
        drops: collections.Counter[str],
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.conn = conn
        self.encrypted = conn.endpoint.secure is not None
        self.drops = drops
        self.log = logger or log
        self._deliver = deliver
        self._after_receive = after_receive
        self.client = cfg.mode == "client"
        self.paths = [_PathIO(i, p, fixed=self.client) for i, p in enumerate(cfg.path)]
        self.core = MultiPath(
            [PathSpec(p.name, p.priority, p.weight, remote_known=self.client)
             for p in cfg.path],
            cfg.policy, cfg.probe_interval, cfg.down_after, cfg.up_after,
            cfg.failback_delay, cfg.loss_threshold,
        )
        # plaintext: drop copies by counter here; encrypted: the session's replay
        # window does it on authenticated counters (an unauthenticated counter must not
        # be able to poison a window)
        self.dedup: DuplicateFilter | None = None if self.encrypted else DuplicateFilter()
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_EVENTS)
        # balance spreads one flow over paths of different delay: put it back in order
        self.reorder: ReorderBuffer | None = (
            ReorderBuffer(timeout=REORDER_MIN) if cfg.policy == "balance" else None
        )
        self._reorder_session = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False
        self._dirty = False  # a send error changed the path states

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.core = MultiPath(
            self.core.paths, self.cfg.policy, self.cfg.probe_interval, self.cfg.down_after,
            self.cfg.up_after, self.cfg.failback_delay, self.cfg.loss_threshold,
            now=loop.time(),
        )
        try:
            for p in self.paths:
                await self._open(p)
        except BaseException:
            self.close()
            raise
        self._on_timer()

    async def _open(self, p: _PathIO) -> None:
        assert self._loop is not None
        pc = p.cfg
        if self.client:
            host = pc.remote or ""
            try:
                infos = await self._loop.getaddrinfo(host, pc.remote_port or DEFAULT_PORT,
                                                     type=socket.SOCK_DGRAM)
            except socket.gaierror as exc:
                raise TransportError(
                    f"path {pc.name}: cannot resolve remote {host!r}: {exc.strerror}"
                ) from exc
            remote = normalize(infos[0][4])
            family = family_for(pc.local or remote[0])
            port = pc.port
        else:
            family = family_for(pc.local) if pc.local else socket.AF_INET6
            port = pc.port or self.cfg.port
        sock = open_udp(bind=pc.local, port=port, family=family,
                        bind_interface=pc.bind_interface)
        ep = UdpEndpoint(sock, self.drops)
        p.endpoint = ep
        p.sock = sock
        p.v4mapped = sock.family == socket.AF_INET6
        if self.client:
            self._set_remote(p, remote)
        ep.start(functools.partial(self._on_batch, p))

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        for p in self.paths:
            if p.endpoint is not None:
                p.endpoint.close()
                p.endpoint = None
                p.sock = None

    # ------------------------------------------------------------------ sending
    def _send(self, p: _PathIO, data: bytes, now: float, addr: Addr | None = None) -> bool:
        """One datagram on one path. The kernel saying the interface is down or has no
        route is a certain failure: the core takes the path down at once."""
        sock = p.sock
        dest = p.dest if addr is None else self._dest(p, addr)
        if sock is None or dest is None:
            return False
        try:
            sock.sendto(data, dest)
            return True
        except (BlockingIOError, InterruptedError):
            self.drops["tx_busy"] += 1
        except OSError as exc:
            code = errno.errorcode.get(exc.errno or 0, "error").lower()
            self.drops["tx_" + code] += 1
            if exc.errno in LINK_ERRNOS and self.core.note_send_error(
                p.index, now, f"send failed: {exc.strerror}"
            ):
                self._dirty = True
        return False

    def flush(self, now: float) -> None:
        """Send what the connection made: each data message on the path(s) the policy
        picks, control messages (keepalives, handshake) on every path data would use."""
        conn = self.conn
        for batch, _paths in conn.batches_to_send(now):
            assert isinstance(batch, list)  # a plain device: whole messages, no runs
            self._send_data(batch, now)
        control = [d for d, _paths in conn.datagrams_to_send(now)]
        if not control:
            return
        targets = self.core.paths_for_data(now)
        if self.core.policy == "balance":
            targets = [p.index for p in self.paths if p.remote is not None]
        for i in list(targets):
            for m in control:
                self._send(self.paths[i], m, now)
        if self._dirty:
            self._dirty = False
            self._process_events(now)

    def _send_data(self, msgs: list[bytes], now: float) -> None:
        """DATA messages, each on the path(s) the policy picks; the path counters take
        the frames' bytes (a message less its header and tag)."""
        core = self.core
        paths = self.paths
        targets = core.paths_for_data(now)
        if not targets:
            self.drops["no_path"] += len(msgs)
            return
        send = self._send
        over = HEADER_LEN + (TAG_LEN if self.encrypted else 0)
        balance = core.policy == "balance" and len(targets) > 1
        sent = 0
        nbytes = 0
        for msg in msgs:
            if balance:
                targets = core.paths_for_data(now)
            ok = False
            for i in targets:
                ok = send(paths[i], msg, now) or ok
            if self._dirty:  # a path just failed under us: re-pick, resend this one
                self._dirty = False
                self._process_events(now)
                targets = core.paths_for_data(now)
                if not ok:
                    for i in targets:
                        ok = send(paths[i], msg, now) or ok
            if ok:
                sent += 1
                nbytes += len(msg) - over
                if balance:
                    core.note_data_sent(targets[0], 1, len(msg) - over)
        if not balance:
            for i in targets:
                core.note_data_sent(i, sent, nbytes)

    @staticmethod
    def _dest(p: _PathIO, addr: Addr) -> Addr:
        """The address as this path's socket wants it (IPv4-mapped on a dual-stack one)."""
        if p.v4mapped and len(addr) == 2 and ":" not in addr[0]:
            return ("::ffff:" + addr[0], addr[1])
        return addr

    def _set_remote(self, p: _PathIO, addr: Addr) -> None:
        p.remote = addr
        p.dest = self._dest(p, addr)

    # ------------------------------------------------------------------ receiving
    def _on_batch(self, p: _PathIO, batch: list[tuple[bytes, Addr]]) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        now = loop.time()
        core = self.core
        conn = self.conn
        encrypted = self.encrypted
        dedup = self.dedup
        drops = self.drops
        index = p.index
        frames: list[bytes] = []
        for data, raw in batch:
            if len(data) < HEADER_LEN:
                drops["truncated"] += 1
                continue
            mtype = data[1]
            if mtype == _PROBE or mtype == _PROBE_ACK:
                self._on_probe(p, data, normalize(raw), now)
                continue
            addr = normalize(raw)
            known = addr == p.remote
            if not known:
                if p.fixed or (not encrypted and mtype != _KEEPALIVE):
                    drops["unknown_peer"] += 1
                    continue
            if mtype == _DATA:
                core.note_data_received(index, now, len(data))
                if dedup is not None and not dedup.accept(
                    int.from_bytes(data[8:16], "big")
                ):
                    continue
            decoded = conn.receive_path(data, addr, now)
            if decoded.authentic and not known:
                self._learn(p, addr, now, "authenticated" if encrypted else "keepalive")
            reorder = self.reorder
            if reorder is not None and (decoded.frames or decoded.authentic) and (
                mtype == _DATA or mtype == _KEEPALIVE
            ):
                session = int.from_bytes(data[4:8], "big")
                if session != self._reorder_session:  # new keys restart the counter
                    self._reorder_session = session
                    reorder.reset()
                frames.extend(reorder.push(int.from_bytes(data[8:16], "big"),
                                           decoded.frames, now))
            else:
                frames.extend(decoded.frames)
        if frames:
            self._deliver(frames, now)
        self._after_receive(now)
        self._process_events(now)

    def _on_probe(self, p: _PathIO, data: bytes, addr: Addr, now: float) -> None:
        try:
            header = parse_header(data)
            if header.type == _PROBE:
                if addr != p.remote:
                    if p.fixed:
                        self.drops["unknown_peer"] += 1
                        return
                    if p.remote is None or not self.encrypted:
                        self._learn(p, addr, now, "probe")
                restarts = self.core.peer_restarts
                ack = self.core.receive_probe(p.index, header, data[HEADER_LEN:], now)
                if self.core.peer_restarts != restarts:
                    self._process_events(now)  # reset the filters before its data
                self._send(p, ack, now, addr)
            else:
                if addr != p.remote:
                    self.drops["unknown_peer"] += 1
                    return
                self.core.receive_ack(p.index, header, data[HEADER_LEN:], now)
        except RemoteProtocolError as exc:
            self.drops[exc.reason] += 1

    def _learn(self, p: _PathIO, addr: Addr, now: float, why: str) -> None:
        old = p.remote
        self._set_remote(p, addr)
        if old is None:
            self.log.info("path %s: peer is %s (%s)", p.cfg.name, _fmt(addr), why)
        else:
            self.log.info("path %s: peer moved %s -> %s (%s)", p.cfg.name, _fmt(old),
                          _fmt(addr), why)
        self.core.set_remote_known(p.index, True, now)

    # ------------------------------------------------------------------ timer and events
    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._loop is None or self._closed:
            return
        now = self._loop.time()
        core = self.core
        core.handle_timer(now)
        for i, frame in core.probes_to_send(now):
            self._send(self.paths[i], frame, now)
        self._dirty = False
        if self.reorder is not None:
            self.reorder.timeout = self._reorder_timeout()
            frames = self.reorder.handle_timer(now)
            if frames:
                self._deliver(frames, now)
        self._process_events(now)

    def _reorder_timeout(self) -> float:
        """How long a gap may stay open: the RTT spread of the live paths (one-way delay
        differs by about half of it) plus their jitter, within [2 ms, 50 ms]."""
        rtts = [(st.rtt, st.rttvar or 0.0) for st in self.core.path_stats()
                if st.state == "up" and st.rtt is not None]
        if len(rtts) < 2:
            return REORDER_MIN
        spread = max(r for r, _ in rtts) - min(r for r, _ in rtts)
        jitter = max(v for _, v in rtts)
        return min(max(spread / 2 + 2 * jitter + REORDER_MIN, REORDER_MIN), REORDER_MAX)

    def _arm(self) -> None:
        loop = self._loop
        if loop is None or self._closed:
            return
        t = self.core.get_timer()
        if self.reorder is not None:
            rt = self.reorder.get_timer()
            if rt is not None and (t is None or rt < t):
                t = rt
        if t is None:
            return
        if self._timer is not None:
            if self._timer_at is not None and self._timer_at <= t:
                return
            self._timer.cancel()
        self._timer_at = t
        self._timer = loop.call_at(max(t, loop.time()), self._on_timer)

    def _process_events(self, now: float) -> None:
        while (ev := self.core.next_event()) is not None:
            self._log_event(ev)
        self._arm()

    def _log_event(self, ev: MultiPathEvent) -> None:
        """One log line per path change; kept (bounded) for status and the API."""
        rec: dict[str, Any] = {"time": time.time()}
        if isinstance(ev, PathUp):
            rtt = f"{ev.rtt * 1000:.1f} ms" if ev.rtt is not None else "?"
            self.log.info("path %s up (rtt %s)", ev.name, rtt)
            rec.update(event="path_up", path=ev.name, rtt=ev.rtt)
        elif isinstance(ev, PathDown):
            self.log.warning("path %s down: %s", ev.name, ev.reason)
            rec.update(event="path_down", path=ev.name, reason=ev.reason)
        elif isinstance(ev, PeerRestarted):
            self.log.warning("peer restarted (probe sequence started over on path %s)",
                             ev.name)
            rec.update(event="peer_restarted", path=ev.name)
            if self.dedup is not None:
                self.dedup.reset()
            if self.reorder is not None:
                self.reorder.reset()
        elif isinstance(ev, ActivePathChanged):
            level = logging.INFO if ev.reason in ("initial", "failback") else logging.WARNING
            self.log.log(level, "active path %s -> %s (%s)", ev.old_name or "-",
                         ev.new_name or "-", ev.reason)
            rec.update(event="active_path", old=ev.old_name, new=ev.new_name,
                       reason=ev.reason)
        self.events.append(rec)

    # ------------------------------------------------------------------ status
    @property
    def active_path(self) -> str | None:
        a = self.core.active
        return None if a is None else self.paths[a].cfg.name

    def status_fields(self) -> dict[str, Any]:
        """Keys merged into the tunnel's status (read by ``status``, the API, metrics)."""
        st = self.status()
        a = self.core.active
        peer = self.paths[a].remote if a is not None else None
        return {
            "multipath": st,
            "paths": st["paths"],
            "active_path": st["active_path"],
            "failovers": st["failovers"],
            "peer": _fmt(peer) if peer is not None else None,
        }

    def status(self) -> dict[str, Any]:
        """``paths`` (per-path stats), ``active_path``, counters and recent events."""
        now = self._loop.time() if self._loop is not None else None
        data_paths = set(self.core.paths_for_data(now) if now is not None else [])
        paths = []
        for st, p in zip(self.core.path_stats(), self.paths, strict=True):
            local = None
            if p.endpoint is not None:
                try:
                    local = _fmt(p.endpoint.local_address)
                except OSError:
                    local = None
            paths.append({
                "name": st.name,
                "state": st.state,
                "active": st.index in data_paths if self.core.policy != "balance"
                else st.state == "up",
                "preferred": self.core.active == st.index,
                "degraded": st.degraded,
                "priority": st.priority,
                "weight": p.cfg.weight,
                "bind_interface": p.cfg.bind_interface,
                "local": local,
                "remote": _fmt(p.remote) if p.remote else None,
                "rtt": None if st.rtt is None else round(st.rtt, 6),
                "rttvar": None if st.rttvar is None else round(st.rttvar, 6),
                "min_rtt": None if st.min_rtt is None else round(st.min_rtt, 6),
                "loss": round(st.loss, 4),
                "probes_sent": st.probes_sent,
                "probes_acked": st.probes_acked,
                "probes_missed": st.probes_missed,
                "probes_late": st.probes_late,
                "probes_received": st.probes_received,
                "tx_packets": st.tx_packets,
                "tx_bytes": st.tx_bytes,
                "rx_packets": st.rx_packets,
                "rx_bytes": st.rx_bytes,
                "last_rx_age": None if (st.last_rx is None or now is None)
                else round(now - st.last_rx, 3),
                "transitions": st.transitions,
            })
        counters = self.core.counters()
        out: dict[str, Any] = {
            "policy": self.core.policy,
            "active_path": self.active_path,
            "paths": paths,
            **counters,
            "events": list(self.events),
        }
        if self.reorder is not None:
            r = self.reorder.stats
            out["reorder"] = {"in_order": r.in_order, "held": r.held, "late": r.late,
                              "gaps_skipped": r.gaps_skipped, "overflows": r.overflows,
                              "timeout": round(self.reorder.timeout, 4)}
        if self.dedup is not None:
            s = self.dedup.stats
            out["dedup"] = {"delivered": s.delivered, "duplicates": s.duplicates,
                            "too_old": s.too_old, "resets": s.resets}
        return out


def _fmt(addr: Addr | None) -> str:
    if addr is None:
        return "-"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
