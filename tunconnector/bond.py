"""Multi-link over a kernel bond: the Multi-link enabler's stack on tunconnector tunnels.

Client: slave *i* (1-based, in order) becomes TAP tunnel ``tap<i>`` whose UDP socket is
bound to that slave's ``hw_int`` (SO_BINDTODEVICE) and talks to its ``ip_server`` on port
``base_port + i``; the TAPs are enslaved to a kernel bond configured with every bonding
option asked (read back from the kernel). Server: ``links`` TAP tunnel endpoints on ports
``base_port + 1..links``, bridged into a bridge carrying ``bridge_ip``.

Carrier follows liveness: a TAP's carrier is on only while its tunnel is ``up`` (the peer
answered within ``dead_after``), so a bond using miimon, and the server's bridge, drop a
dead link by themselves; ``tap_down`` forces a TAP down for tests and maintenance.

:class:`MultiLink` is the per-node manager behind the REST API and ``[[bond]]`` sections;
what the API started is persisted to ``[api] state_file`` and restored at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import socket
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from .adapter import make_tunnel
from .config import BondConfig, TunnelConfig, build
from .errors import BondError, ConfigError, DeviceError, TunconnectorError
from .io import bond as bondio
from .io.bond import BondManager, BondState
from .proto.bondparams import ACTIVE_BACKUP, BondParams, check_params, parse_params
from .proto.linkevents import RTMGRP_LINK, parse_link_events
from .proto.silencewatch import SilenceWatch
from .tunnel import State, Tunnel

log = logging.getLogger("tunconnector.bond")
T = TypeVar("T")
SYSFS_NET = Path("/sys/class/net")

Role = Literal["client", "server"]
STATE_VERSION = 1


def tap_names(cfg: BondConfig) -> list[str]:
    count = len(cfg.slaves) if cfg.role == "client" else cfg.links
    return [f"{cfg.tap_prefix}{i}" for i in range(1, count + 1)]


def tunnel_configs(cfg: BondConfig) -> list[TunnelConfig]:
    """The TAP tunnels of a bond, validated like any ``[[tunnel]]``."""
    out = []
    keepalive, dead_after = cfg.liveness()
    for i, tap in enumerate(tap_names(cfg), start=1):
        common: dict[str, Any] = dict(
            name=f"{cfg.name}-{tap}",
            dev_type="tap",
            device=tap,
            proto="udp",
            framing="native",
            keepalive=keepalive,
            dead_after=dead_after,
            key_file=cfg.key_file,
            offload="off",
        )
        if cfg.wire == "openvpn":  # the enabler's openvpn: cipher none, HMAC-SHA1, no keydir
            common.update(framing="openvpn", key_file=None, openvpn_secret=cfg.openvpn_secret,
                          openvpn_cipher="none", openvpn_auth="SHA1")
        if cfg.role == "client":
            slave = cfg.slaves[i - 1]
            t = TunnelConfig(
                mode="client",
                remote=slave.ip_server,
                remote_port=cfg.base_port + i,
                bind_interface=slave.hw_int,
                **common,
            )
        else:
            t = TunnelConfig(mode="server", port=cfg.base_port + i, bind=cfg.bind, **common)
        t.validate(f"bond {cfg.name}.{tap}")
        out.append(t)
    return out


class BondLink:
    """One running multi-link: the client's bond or the server's bridge, and its tunnels."""

    def __init__(self, cfg: BondConfig, node: Any) -> None:
        self.cfg = cfg
        self.node = node
        self.role: Role = cfg.role
        self.taps = tap_names(cfg)
        self.tunnels = [make_tunnel(t, netlink=node.netlink) for t in tunnel_configs(cfg)]
        for t in self.tunnels:
            # the bond owns its TAPs (made, enslaved, carrier, deleted here): no device
            # supervisor; measured under the VM, a link watch per TAP made failovers
            # several times slower, and a deleted slave is the bond's business
            t.supervise = False
        self.down_taps: set[str] = set()
        self.started = False
        self.assisted = 0  # active-slave moves made on tunnel liveness
        self.underlay_down: set[str] = set()
        self._hw_index: dict[int, str] = {}
        self._link_sock: socket.socket | None = None
        self._ipr: Any = None  # netlink-thread only (the assist's persistent socket)
        self._index: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._assists: set[asyncio.Task[None]] = set()
        self._watch: SilenceWatch | None = None
        self._watch_timer: asyncio.TimerHandle | None = None
        self._moving: asyncio.Task[None] | None = None
        self._active: str | None = None  # last read of the kernel's active slave
        self._move_warned = float("-inf")
        self._active_read = float("-inf")
        for t in self.tunnels:
            t.add_listener(self._on_state)

    @property
    def name(self) -> str:
        return self.cfg.name

    def tunnel_of(self, tap: str) -> Tunnel | None:
        for t in self.tunnels:
            if t.config.device == tap:
                return t
        return None

    # -- carrier follows liveness -------------------------------------------------------
    def _carrier(self, t: Tunnel) -> None:
        dev = t.device
        if dev is None or getattr(dev, "closed", False):
            return
        on = t.config.device in self.live_taps()
        try:
            dev.set_carrier(on)
        except DeviceError as exc:
            log.warning("%s", exc)

    def _on_state(self, t: Tunnel, old: State, new: State) -> None:
        if new in (State.UP, State.DOWN):
            self._carrier(t)
            log.info(
                "%s %s: tunnel %s, carrier %s",
                self.name,
                t.config.device,
                new.value,
                "on" if t.config.device in self.live_taps() else "off",
            )
            if self.role == "client" and self.started and self._loop is not None:
                tap = t.config.device or ""
                task = self._loop.create_task(self._assist(tap, new == State.UP))
                self._assists.add(task)
                task.add_done_callback(self._assists.discard)

    def live_taps(self) -> list[str]:
        """TAPs whose tunnel is up, not forced down, and whose underlay is usable."""
        return [
            t.config.device or ""
            for t in self.tunnels
            if t.state == State.UP
            and t.config.device not in self.down_taps
            and t.config.device not in self.underlay_down
        ]

    # -- underlay watch: a hw_int going down kills its tunnel at once --------------------
    def _watch_underlay(self) -> None:
        if self.role != "client" or self._loop is None:
            return
        self._hw_index = {}
        for tap, slave in zip(self.taps, self.cfg.slaves, strict=True):
            try:
                self._hw_index[socket.if_nametoindex(slave.hw_int)] = tap
                state = Path(f"/sys/class/net/{slave.hw_int}/operstate").read_text().strip()
            except OSError:
                continue
            if state == "down":
                self.underlay_down.add(tap)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            sock.setblocking(False)
            sock.bind((0, RTMGRP_LINK))
        except OSError as exc:
            log.warning("%s: cannot watch underlay links (%s); liveness only", self.name, exc)
            return
        self._link_sock = sock
        self._loop.add_reader(sock.fileno(), self._on_link_events)

    def _unwatch_underlay(self) -> None:
        if self._link_sock is not None:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._link_sock.fileno())
            self._link_sock.close()
            self._link_sock = None

    def _on_link_events(self) -> None:
        assert self._link_sock is not None
        while True:
            try:
                data = self._link_sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ENOBUFS: events lost; state is re-read on next one
                log.debug("%s: link watch: %s", self.name, exc)
                return
            try:
                events = parse_link_events(data)
            except TunconnectorError:
                continue
            for ev in events:
                tap = self._hw_index.get(ev.index)
                if tap is None:
                    continue
                down = not ev.usable
                if down == (tap in self.underlay_down):
                    continue
                if down:
                    self.underlay_down.add(tap)
                else:
                    self.underlay_down.discard(tap)
                t = self.tunnel_of(tap)
                if t is not None:
                    self._carrier(t)
                log.info("%s %s: underlay %s", self.name, tap, "down" if down else "up")
                if self.started and self._loop is not None:
                    task = self._loop.create_task(self._assist(tap, not down))
                    self._assists.add(task)
                    task.add_done_callback(self._assists.discard)

    async def _assist(self, tap: str, up: bool) -> None:
        """Active-backup: act on tunnel liveness before the ARP monitor can.

        The kernel needs (arp_missed_max + 1/2) x arp_interval of silence to declare the
        active slave down; our keepalives see a dead tunnel within ``dead_after``. Then
        the active slave moves to a live one (the primary if live) over netlink. When the
        primary's tunnel answers again while the kernel still counts it up (a short
        outage, never noticed by the ARP monitor), it is made active again if
        ``primary_reselect`` is ``always``; otherwise failback is left to the kernel.
        """
        live = self.live_taps()
        try:
            moved = await self._call(self._assist_sync, tap, up, live)
        except TunconnectorError as exc:
            log.warning("%s: liveness assist for %s failed: %s", self.name, tap, exc)
            return
        if moved:
            self.assisted += 1
            log.info(
                "%s: active slave -> %s (tunnel %s %s)",
                self.name,
                moved,
                tap,
                "up" if up else "dead",
            )

    def _retrying(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the assist's socket; on anything but our own errors (pyroute2's
        socket broken or out of step after a burst of link changes) reopen the socket and
        run it once more. Such a failure used to vanish in the task, and every later move
        failed the same way while the kernel's ARP monitor did the failover, seconds
        late."""
        try:
            return fn()
        except TunconnectorError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported, then retried on a new socket
            log.warning("%s: netlink request failed (%r); reopening its socket", self.name, exc)
            self._close_ipr()
            try:
                return fn()
            except TunconnectorError:
                raise
            except Exception as again:  # noqa: BLE001
                self._close_ipr()
                raise BondError(f"{self.name}: netlink request failed: {again!r}") from again

    def _assist_sync(self, tap: str, up: bool, live: list[str]) -> str | None:
        """Runs on the netlink thread: one RTM_GETLINK, at most one RTM_NEWLINK."""
        return self._retrying(lambda: self._assist_once(tap, up, live))

    def _assist_once(self, tap: str, up: bool, live: list[str]) -> str | None:
        self._warm()
        idx = self._index
        if self.name not in idx or tap not in idx:
            return None
        st = bondio.ab_state(self._ipr, idx[self.name])
        if st.mode != ACTIVE_BACKUP:
            return None
        by_index = {v: k for k, v in idx.items()}
        active = by_index.get(st.active, "")
        primary = by_index.get(st.primary, "")
        target: str | None = None
        if not up and active in (tap, ""):  # "": the ARP monitor left the bond without one
            others = [s for s in live if s != tap and s in idx]
            if primary in others:
                others.remove(primary)
                others.insert(0, primary)
            target = others[0] if others else None
        elif (
            up
            and tap in live
            and tap == primary
            and st.primary_reselect == 0
            and active != tap
            and bondio.slave_mii_up(Path("/sys/class/net"), tap)
        ):
            target = tap
        if target is None:
            if not up:  # why a dead tunnel moved nothing: the figures need the reason
                log.info("%s: %s dead, active slave %s, live %s: nothing to move", self.name,
                         tap, active or "-", ",".join(live) or "-")
            return None
        self._set_active_once(target)
        return target

    # -- silence watch: leave a path that alone went quiet (active-backup clients) --------
    def _start_watch(self) -> None:
        self._stop_watch()
        after = self.cfg.switch_after()
        params = self._params()
        if after is None or params.mode != ACTIVE_BACKUP or self._loop is None:
            self._watch = None
            return
        self._watch = SilenceWatch(switch_after=after, primary=params.primary,
                                   failback=(params.primary_reselect or 0) == 0)
        self._watch_timer = self._loop.call_later(after / 6, self._watch_tick)

    def _stop_watch(self) -> None:
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None

    def _read_active(self, now: float) -> str | None:
        try:
            text = (SYSFS_NET / self.name / "bonding" / "active_slave").read_text().strip()
        except OSError:
            text = ""
        self._active, self._active_read = (text or None), now
        return self._active

    def _watch_tick(self) -> None:
        """Every switch_after/6: silences -> SilenceWatch -> at most one move in flight.

        Runs in the loop's timer phase: after a stall of this process the messages that
        arrived meanwhile are not read yet, every path looks quiet, and nothing moves."""
        self._watch_timer = None
        w, loop = self._watch, self._loop
        if w is None or loop is None or not self.started:
            return
        now = loop.time()
        silence: dict[str, float] = {}
        for t in self.tunnels:
            heard = t.last_heard()
            if heard is not None and t.config.device:
                silence[t.config.device] = now - heard
        quiet = any(v >= w.switch_after for v in silence.values())
        active = self._active
        if quiet or now - self._active_read > 0.5 or (w.failback and active != w.primary):
            active = self._read_active(now)
        primary_up = True
        if w.failback and w.primary is not None and active != w.primary:
            primary_up = bondio.slave_mii_up(SYSFS_NET, w.primary)
        target = w.decide(now, active, silence, self.live_taps(), primary_kernel_up=primary_up)
        if target is not None and target != active and self._moving is None:
            quiet_ms = silence.get(active or "", 0.0) * 1000
            why = ("the bond had no active slave" if active is None
                   else f"{active} silent {quiet_ms:.0f} ms" if quiet_ms >= w.switch_after * 1000
                   else f"{target} fresh again")
            self._moving = loop.create_task(self._move(target, why))
        self._watch_timer = loop.call_later(w.switch_after / 6, self._watch_tick)

    async def _move(self, target: str, why: str) -> None:
        try:
            await self._call(self._set_active_sync, target)
            self.assisted += 1
            self._active = target
            log.info("%s: active slave -> %s (%s)", self.name, target, why)
        except TunconnectorError as exc:
            now = time.monotonic()
            if now - self._move_warned >= 5.0:  # a refused move is retried: say it once
                self._move_warned = now
                log.warning("%s: moving the active slave to %s failed: %s", self.name,
                            target, exc)
        finally:
            self._moving = None

    def _set_active_sync(self, target: str) -> None:
        """Runs on the netlink thread: one RTM_NEWLINK."""
        self._retrying(lambda: self._set_active_once(target))

    def _set_active_once(self, target: str) -> None:
        self._warm()
        idx = self._index
        if self.name in idx and target in idx:
            bondio.set_active_index(self._ipr, idx[self.name], idx[target])

    def _warm(self) -> None:
        """Open the assist's socket and learn ifindexes now, not during a failover."""
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute()
            self._index = {}
            for name in [self.name, *self.taps]:
                found = self._ipr.link_lookup(ifname=name)
                if found:
                    self._index[name] = int(found[0])

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(t.start() for t in self.tunnels), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self._stop_tunnels()
            exc = errors[0]
            if isinstance(exc, TunconnectorError):
                raise BondError(f"{self.name}: {exc}") from exc
            raise exc
        for t in self.tunnels:
            self._carrier(t)  # DOWN until the peer answers
        try:
            if self.role == "client":
                await self._call(self._create_bond)
            else:
                await self._call(self._create_bridge)
        except BaseException:
            await self._stop_tunnels()
            raise
        self.started = True
        if self.role == "client":
            await self._call(self._warm)
        self._watch_underlay()
        self._start_watch()
        for tap in sorted(self.down_taps):
            await self.set_tap(tap, up=False)
        log.info("%s %s started over %s", self.role, self.name, " ".join(self.taps))

    def _close_ipr(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    async def stop(self) -> None:
        self._unwatch_underlay()
        self._stop_watch()
        for task in list(self._assists):
            task.cancel()
        with contextlib.suppress(Exception):
            await self._call(self._close_ipr)
        try:
            await self._call(self._delete)
        finally:
            await self._stop_tunnels()
            self.started = False
        log.info("%s %s stopped", self.role, self.name)

    async def _stop_tunnels(self) -> None:
        await asyncio.gather(*(t.stop() for t in self.tunnels), return_exceptions=True)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await self.node.netlink.call(fn, *args)

    def _params(self) -> BondParams:
        return parse_params(self.cfg.bonding, f"{self.name}.bonding")

    def _create_bond(self) -> BondState:
        with BondManager() as bm:
            return bm.create(
                self.name,
                self._params(),
                self.taps,
                address=self.cfg.ip_address,
                prefixlen=self.cfg.prefixlen,
            )

    def _create_bridge(self) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            bondio.create_bridge(ipr, self.name, self.cfg.bridge_ip, self.cfg.prefixlen)
            try:
                for tap in self.taps:
                    bondio.set_master(ipr, tap, self.name)
            except BondError:
                bondio.delete_link(ipr, self.name)
                raise

    def _delete(self) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            bondio.delete_link(ipr, self.name)

    # -- operations ----------------------------------------------------------------------
    async def set_tap(self, tap: str, up: bool) -> None:
        """Force ``tap`` down (carrier off, link down) or give it back to liveness."""
        t = self.tunnel_of(tap)
        if t is None:
            raise BondError(f"the tap interface {tap} don't exist")
        if up:
            self.down_taps.discard(tap)
        else:
            self.down_taps.add(tap)
        self._carrier(t)

        def _link() -> None:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                bondio.set_link_up(ipr, tap, up)

        await self._call(_link)
        if self.role == "client" and self.started:
            await self._assist(tap, up)

    async def apply(self, change: BondParams) -> BondState:
        if self.role != "client":
            raise BondError(f"{self.name} is a bridge, not a bond")

        def _apply() -> BondState:
            with BondManager() as bm:
                return bm.apply(self.name, change)

        state: BondState = await self._call(_apply)
        # remember the new desired options (canonical names, so they parse back)
        self.cfg.bonding = self._params().merged(change).to_strings()
        if self.started:
            self._start_watch()  # primary / reselect / arp_interval may have changed
        return state

    async def view(self) -> dict[str, str]:
        def _view() -> dict[str, str]:
            with BondManager() as bm:
                return bm.view(self.name)

        result: dict[str, str] = await self._call(_view)
        return result

    def status(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "name": self.name,
            "running": self.started,
            "assisted_failovers": self.assisted,
            "failover_after": self._watch.switch_after if self._watch is not None else None,
            "taps": {
                t.config.device: {
                    "state": t.state.value,
                    "carrier": t.config.device in self.live_taps(),
                    "forced_down": t.config.device in self.down_taps,
                    "underlay_down": t.config.device in self.underlay_down,
                    "peer": t.status().get("peer"),
                    "bind_interface": t.config.bind_interface,
                }
                for t in self.tunnels
            },
        }


class MultiLink:
    """The node's bonds and bridges: at most one of each started through the API (as the
    enabler), plus any ``[[bond]]`` sections; API state persisted to ``state_file``."""

    def __init__(self, node: Any, state_file: str | Path | None = None) -> None:
        self.node = node
        self.state_file = Path(state_file) if state_file else None
        self.links: dict[str, BondLink] = {}
        self.api_owned: dict[Role, str] = {}
        self.lock = asyncio.Lock()

    # -- queries --------------------------------------------------------------------------
    def running(self, role: Role) -> bool:
        return any(link.role == role and link.started for link in self.links.values())

    def link(self, name: str, role: Role | None = None) -> BondLink:
        link = self.links.get(name)
        if link is None or (role is not None and link.role != role):
            raise KeyError(name)
        return link

    def link_of_tap(self, tap: str) -> BondLink:
        for link in self.links.values():
            if tap in link.taps:
                return link
        raise KeyError(tap)

    def status(self) -> dict[str, Any]:
        return {name: link.status() for name, link in self.links.items()}

    # -- start / stop -----------------------------------------------------------------------
    async def start(self, cfg: BondConfig, *, api: bool = False) -> BondLink:
        if cfg.name in self.links:
            raise BondError(f"{cfg.name} is already running")
        if api and self.running(cfg.role):
            raise BondError(f"a {cfg.role} is already running")
        for other in self.links.values():
            clash = set(other.taps) & set(tap_names(cfg))
            if clash:
                raise BondError(f"{', '.join(sorted(clash))} already used by {other.name}")
        link = BondLink(cfg, self.node)
        await link.start()
        self.links[cfg.name] = link
        for t in link.tunnels:
            self.node.tunnels.setdefault(t.name, t)
        if api:
            self.api_owned[cfg.role] = cfg.name
            self.save()
        return link

    async def stop(self, name: str, role: Role | None = None, *, forget: bool = True) -> None:
        link = self.link(name, role)
        try:
            await link.stop()
        finally:
            self.links.pop(name, None)
            for t in link.tunnels:
                if self.node.tunnels.get(t.name) is t:
                    del self.node.tunnels[t.name]
            if forget and self.api_owned.get(link.role) == name:
                del self.api_owned[link.role]
                self.save()

    async def stop_all(self) -> None:
        for name in list(self.links):
            try:
                await self.stop(name, forget=False)
            except TunconnectorError as exc:
                log.warning("stopping %s: %s", name, exc)

    async def set_tap(self, tap: str, up: bool) -> None:
        link = self.link_of_tap(tap)
        await link.set_tap(tap, up)
        if link.name in self.api_owned.values():
            self.save()

    async def apply(self, bond: str, change: BondParams) -> BondState:
        link = self.link(bond, "client")
        state = await link.apply(change)
        if bond in self.api_owned.values():
            self.save()
        return state

    # -- persistence ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": STATE_VERSION}
        for role, name in sorted(self.api_owned.items()):
            link = self.links.get(name)
            if link is None:
                continue
            out[role] = {
                "config": dataclasses.asdict(link.cfg),
                "down_taps": sorted(link.down_taps),
            }
        return out

    def save(self) -> None:
        """Write the desired state atomically (0600: it names interfaces and addresses)."""
        if self.state_file is None:
            return
        data = json.dumps(self.snapshot(), indent=2, sort_keys=True)
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_file.parent, prefix=".bond-state-")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(data + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.state_file)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def load(self) -> list[tuple[BondConfig, list[str]]]:
        """The state file's client/server, validated; a broken file is a ConfigError."""
        if self.state_file is None or not self.state_file.exists():
            return []
        where = str(self.state_file)
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{where}: unreadable bond state: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            raise ConfigError(f"{where}: unknown bond state version")
        out = []
        for role in ("server", "client"):
            entry = data.get(role)
            if entry is None:
                continue
            cfg = build(BondConfig, entry.get("config"), f"{where}:{role}")
            down = [str(x) for x in entry.get("down_taps", [])]
            out.append((cfg, down))
        return out

    async def restore(self) -> None:
        try:
            entries = self.load()
        except ConfigError as exc:
            log.error("%s; nothing restored", exc)
            return
        for cfg, down in entries:
            try:
                link = BondLink(cfg, self.node)
                link.down_taps = set(down) & set(link.taps)
                await link.start()
            except TunconnectorError as exc:
                log.error("restoring %s %s failed: %s", cfg.role, cfg.name, exc)
                continue
            self.links[cfg.name] = link
            for t in link.tunnels:
                self.node.tunnels.setdefault(t.name, t)
            self.api_owned[cfg.role] = cfg.name
            log.info("restored %s %s from %s", cfg.role, cfg.name, self.state_file)


def get_multilink(node: Any) -> MultiLink:
    """The node's MultiLink, created on first use."""
    ml = getattr(node, "multilink", None)
    if ml is None:
        api = node.config.api
        ml = MultiLink(node, api.state_file if api is not None else None)
        node.multilink = ml
    return ml


async def multilink_service(node: Any) -> Callable[[], Awaitable[None]] | None:
    """Node service: start the ``[[bond]]`` sections, restore the API's bonds."""
    ml = get_multilink(node)
    for cfg in node.config.bond:
        try:
            await ml.start(cfg)
        except TunconnectorError as exc:
            if getattr(node, "strict", False):
                raise
            log.error("bond %s failed to start: %s", cfg.name, exc)
    await ml.restore()
    return ml.stop_all


def validate_params_for(cfg: BondConfig) -> BondParams:
    """Parse and check a client's bonding options against its own TAP names."""
    params = parse_params(cfg.bonding, f"{cfg.name}.bonding")
    check_params(params, f"{cfg.name}.bonding", slaves=tap_names(cfg))
    return params
