"""Keeps a tunnel's TUN/TAP device alive: notices when it is deleted, brings it back.

Why: ``ip link del`` of a device a daemon holds open leaves the daemon with an fd whose
every read and write fails (EBADFD); before this, a tunnel went on saying ``up`` while
nothing was delivered. The supervisor learns of the loss from two sources, whichever
comes first: netlink (a :class:`~tunconnector.io.netlink.LinkWatch` sees the link go)
and the data path (a failed read or write makes the owner call :meth:`check`, which
asks the fd itself). Then:

- the owner is told (state ``down``, the reason in its ``error``) and stops using the fd;
- a device the daemon created is created again at once (same name; the owner applies
  its addresses and MTU as at start; the supervisor adds back the MAC, addresses, routes
  and bridge or bond the link had, recorded by the watch), retried with backoff if the
  kernel refuses;
- a persistent device it only attached to (``tunconnector mktun``) is not recreated
  (someone else owns it): it is waited for, with backoff and woken early by netlink
  when a link of that name appears, and attached again;
- when the device is back the owner resumes and its state is whatever the transport
  said meanwhile (a peer still alive: ``up`` at once).

The owner is anything with a device: the native tunnel, or another adapter. It passes
callables, so this module knows nothing of its internals.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import DeviceError
from .io import netlink as nl
from .lifecycle import State, StateFace
from .proto.backoff import Backoff

if TYPE_CHECKING:
    from .config import TunnelConfig
    from .io.device import Device
    from .tunnel import TunnelStats

log = logging.getLogger("tunconnector.device")


@dataclass(frozen=True, slots=True)
class DeviceOwner:
    """What the owner lends a :class:`DeviceSupervisor`: callables, so this module knows
    nothing of the owner's internals."""

    #: whether the owner's fd lost its device
    gone: Callable[[], bool]
    #: stop reading the device and close it
    detach: Callable[[], None]
    #: open and configure the device again (raising :class:`DeviceError` when it cannot yet)
    reopen: Callable[[], Awaitable[None]]
    #: start reading the device
    resume: Callable[[], None]
    #: report the loss (a reason) or the return (``None``)
    on_change: Callable[[str | None], None]


class DeviceSupervisor:
    """One per running device. ``lost`` is the reason while the device is missing."""

    def __init__(
        self,
        name: str,
        *,
        netlink: nl.Netlink,
        created: bool,
        owner: DeviceOwner,
        netns: str | None = None,
        logger: logging.Logger | logging.LoggerAdapter[Any] | None = None,
    ) -> None:
        self.name = name
        self.netns = netns
        self.created = created
        self.lost: str | None = None
        self.losses = 0
        self.last_outage: float | None = None
        self._since = 0.0
        self._saved: nl.LinkState | None = None
        self.netlink = netlink
        self._owner = owner
        self._log = logger or log
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch: nl.LinkWatch | None = None
        self._task: asyncio.Task[None] | None = None
        self._back = asyncio.Event()
        self._closed = False
        self._forcing = False
        self._want_up = False

    async def start(self) -> None:
        """Start watching (after the device was opened and configured)."""
        self._loop = asyncio.get_running_loop()
        watch = nl.LinkWatch(self.name, self._from_thread, self.netns)
        try:
            await self.netlink.call(watch.start)
        except DeviceError as exc:  # no netlink: the data path still notices
            self._log.warning("%s; a deleted device is noticed on I/O errors only", exc)
            return
        self._watch = watch

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    # ------------------------------------------------------------------ state gate
    def admit(self, up: bool) -> bool:
        """Called by the owner on each transport state change (up or down); False when
        the change must not show (``up`` while the device is missing). Remembers it, so
        the state on return is what the transport says."""
        if self._forcing:
            return True
        self._want_up = up
        return self.lost is None or not up

    # ------------------------------------------------------------------ detection
    def check(self) -> None:
        """The data path saw a device read or write fail: is the device gone?"""
        if self.lost is None and not self._closed and self._owner.gone():
            self._device_lost(f"device {self.name} is gone (reads and writes fail)")

    def _from_thread(self, present: bool, why: str) -> None:
        loop = self._loop
        if loop is not None and not self._closed:
            try:
                loop.call_soon_threadsafe(self._on_link, present, why)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def _on_link(self, present: bool, why: str) -> None:
        if self._closed:
            return
        if self.lost is not None:
            self._back.set()  # the name appeared or was freed: retry now, not on backoff
        elif not present and self._owner.gone():
            self._device_lost(why)
        # else: a stale event (our fd still works, e.g. the link of an older device)

    def _device_lost(self, why: str) -> None:
        self.losses += 1
        self._since = time.monotonic()
        what = "recreating it" if self.created else "waiting for it to come back"
        self.lost = f"{why}; {what}"
        # what it carried, now: the new link's own events would overwrite it (its MAC)
        self._saved = self._watch.snapshot() if self._watch is not None else None
        self._log.warning("%s", self.lost)
        self._forcing = True
        try:
            self._owner.detach()
            self._owner.on_change(self.lost)
        finally:
            self._forcing = False
        self._back.clear()
        self._task = asyncio.get_running_loop().create_task(self._recover())

    # ------------------------------------------------------------------ recovery
    async def _recover(self) -> None:
        backoff = Backoff(base=0.05 if self.created else 0.2, cap=5.0)
        said: str | None = None
        while not self._closed:
            why = ""
            if not self.created and not await self.netlink.call(
                nl.link_exists, self.name, self.netns
            ):
                why = f"device {self.name} is gone; waiting for it to come back"
            else:
                try:
                    await self._owner.reopen()
                    await self._restore()
                except DeviceError as exc:
                    why = f"device {self.name} is gone and cannot be reopened yet: {exc}"
                    self._owner.detach()  # a half-opened device is retried whole
                else:
                    break
            if why != said:  # one log line per distinct reason, not per attempt
                self._log.warning("%s", why)
                said = why
            self.lost = why
            self._forcing = True
            try:
                self._owner.on_change(why)
            finally:
                self._forcing = False
            self._back.clear()
            try:
                await asyncio.wait_for(self._back.wait(), backoff.next_delay())
            except TimeoutError:
                pass
        if self._closed:
            return
        self.last_outage = time.monotonic() - self._since
        self.lost = None
        self._task = None
        self._owner.resume()
        self._forcing = True
        try:
            self._owner.on_change(None)
        finally:
            self._forcing = False
        self._log.info("device %s %s after %.2fs", self.name,
                       "recreated" if self.created else "re-attached", self.last_outage)

    async def _restore(self) -> None:
        """MAC, addresses, routes and bridge/bond membership the old link had beyond what
        the owner configures (a TAP's new random MAC would leave the peer's ARP cache
        pointing nowhere)."""
        if self._saved is None:
            return
        routes, addrs, lladdr = self._saved.routes, self._saved.addresses, self._saved.lladdr
        if lladdr is not None:
            await self.netlink.call(nl.set_lladdr, self.name, lladdr, self.netns)
        if self._saved.master is not None:
            try:
                await self.netlink.call(nl.set_master, self.name, self._saved.master,
                                        self.netns)
            except DeviceError as exc:  # its bridge may be gone too: the tunnel still runs
                self._log.warning("%s", exc)
        if addrs:
            ifaces = [ipaddress.ip_interface(f"{a}/{n}") for a, n in addrs]
            await self.netlink.call(nl.configure, self.name, addresses=ifaces, mtu=None,
                                    netns=self.netns)
        if routes:
            failed = await self.netlink.call(nl.restore_routes, self.name, routes,
                                             self.netns)
            if failed:
                self._log.warning("device %s: %d of %d routes could not be restored",
                                  self.name, failed, len(routes))

    @property
    def want_up(self) -> bool:
        return self._want_up

    def describe(self) -> dict[str, Any]:
        """Status fields: the reason while missing, how often it was lost, the last outage."""
        return {"device_lost": self.lost, "device_losses": self.losses,
                "device_last_outage": (None if self.last_outage is None
                                       else round(self.last_outage, 3))}


class SupervisedDevice(StateFace):
    """What a tunnel adapter with one device (the :class:`Tunnel` of every
    point-to-point framing, the ``Hub``) needs to lend its device to a
    :class:`DeviceSupervisor`.

    The adapter calls :meth:`_supervise_device` once its device is configured,
    :meth:`_device_check` when a device read or write fails (:meth:`_read_device` reads
    a batch and does that) and :meth:`_unsupervise_device` first thing on close (its
    state is held back through :meth:`_admits` while the device is missing); it provides
    ``_open_device`` (idempotent: opens and configures the device named in the config,
    setting ``device``, ``device_name`` and ``_created_device``) and
    ``_on_device_readable``, or its own ``_device_reader(on)``.
    """

    device: Device | None
    device_name: str | None
    config: TunnelConfig
    error: str | None
    log: logging.LoggerAdapter[logging.Logger]
    netlink: nl.Netlink
    stats: TunnelStats
    _loop: asyncio.AbstractEventLoop | None
    _reading_device: bool
    _created_device: bool
    _devsup: DeviceSupervisor | None = None
    #: False when another component owns the device's life (a bond's TAPs: the bond
    #: creates, enslaves and deletes them and drives their carrier)
    supervise: bool = True

    async def _open_device(self) -> None:
        raise NotImplementedError

    def _on_device_readable(self) -> Any:
        raise NotImplementedError

    def _device_reader(self, on: bool) -> None:
        """Read the device when it is readable (on) or not at all (off)."""
        if self.device is None or self._loop is None or on == self._reading_device:
            return
        if on:
            self._loop.add_reader(self.device.fd, self._on_device_readable)
        else:
            self._loop.remove_reader(self.device.fd)
        self._reading_device = on

    def _admits(self, new: State) -> bool:
        return self._device_admits(new)

    async def _supervise_device(self) -> None:
        assert self.device_name is not None
        if not self.supervise:
            return
        sup = DeviceSupervisor(
            self.device_name, netlink=self.netlink, created=self._created_device,
            owner=DeviceOwner(
                gone=lambda: self.device is None or self.device.detached(),
                detach=self._detach_device, reopen=self._open_device,
                resume=lambda: self._device_reader(True), on_change=self._device_changed,
            ),
            netns=self.config.netns, logger=self.log,
        )
        await sup.start()
        self._devsup = sup

    def _unsupervise_device(self) -> None:
        if self._devsup is not None:
            self._devsup.close()
            self._devsup = None

    def _read_device(self, dev: Device) -> list[bytes]:
        """A batch of frames from the device; none when the read fails (counted, logged,
        and the supervisor asked whether the device is gone)."""
        try:
            return dev.read_batch(64)
        except DeviceError as exc:
            self.stats.drops["device_read_error"] += 1
            self.log.warning("%s", exc)
            self._device_check()
            return []

    def _device_check(self) -> None:
        """A device read or write failed: the supervisor asks whether it is gone."""
        if self._devsup is not None:
            self._devsup.check()

    def _device_admits(self, new: State) -> bool:
        """False for ``up`` while the device is missing (remembered for its return)."""
        sup = self._devsup
        if sup is None or new.value not in ("up", "down"):
            return True
        return sup.admit(new.value == "up")

    def _device_changed(self, lost: str | None) -> None:
        self.error = lost
        if lost is not None:
            self._set_state(State.DOWN)
        elif self._devsup is not None and self._devsup.want_up:
            self._set_state(State.UP)

    def _device_status(self) -> dict[str, Any]:
        return self._devsup.describe() if self._devsup is not None else {}

    def _detach_device(self) -> None:
        if self.device is not None:
            try:
                self._device_reader(False)
            except (ValueError, OSError):
                pass
            self._reading_device = False
            self.device.close()  # a non-persistent device vanishes with its last fd
            self.device = None
