"""Kernel bond management over netlink (pyroute2 only: no ip, no ifenslave, no shell).

Options are applied through ``IFLA_INFO_DATA`` (``IFLA_BOND_*``) and read back the same
way; :meth:`BondManager.read_sysfs` reads ``/sys/class/net/<bond>/bonding/*`` so callers
can check that the driver really runs what was asked. Options the driver accepts only on
a bond without slaves (``mode``, ``fail_over_mac``) or while it is down are applied by
releasing the slaves, changing the option and enslaving them again, never dropped.

Calls are synchronous (pyroute2 sockets do not open on uvloop): the daemon runs them in
an executor thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BondError, ConfigError
from ..proto.bondparams import (
    SPECS,
    BondParams,
    check_params,
    kernel_options,
    sysfs_view,
)

try:  # pyroute2 is a hard dependency, but keep import errors readable
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError
except ImportError as exc:  # pragma: no cover
    raise BondError(f"pyroute2 is required for bonds: {exc}") from exc

IFF_UP = 0x1


class BondConfigError(BondError, ConfigError):
    """The asked options are inconsistent (nothing was changed): a 422, not a kernel fault."""


# Netlink attribute of every option (pyroute2 spells IFLA_BOND_X as bond_x).
_NLA = {name: f"bond_{name}" for name in SPECS}
_IFINDEX_OPTIONS = ("primary", "active_slave")


@dataclass(slots=True)
class BondState:
    """A bond as the kernel reports it over netlink."""

    name: str
    index: int
    params: BondParams
    slaves: list[str] = field(default_factory=list)
    active_slave: str = ""  # state, not configuration: kept out of ``params``
    up: bool = False
    carrier: bool = False
    operstate: str = ""

    @property
    def mii_status(self) -> str:
        return "up" if self.carrier else "down"

    def sysfs_view(self) -> dict[str, str]:
        view = sysfs_view(self.params, slaves=self.slaves, mii_status=self.mii_status)
        view["active_slave"] = self.active_slave
        return view


def _describe(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if isinstance(code, int) and code > 0:
        detail = str(exc.args[1]) if len(exc.args) > 1 else ""
        name = errno.errorcode.get(code, str(code))
        text = os.strerror(code)
        return f"{name} ({text})" + (f": {detail}" if detail and detail != text else "")
    return str(exc)


class BondManager:
    """Create, configure, inspect and delete kernel bonds in the current netns.

    ``ipr`` may be passed in (tests, a shared socket); otherwise one is opened lazily and
    closed by :meth:`close`.
    """

    def __init__(
        self, ipr: Any | None = None, *, sysfs_root: Path = Path("/sys/class/net")
    ) -> None:
        self._ipr = ipr
        self._own = ipr is None
        self.sysfs_root = sysfs_root

    # -- plumbing ---------------------------------------------------------------------
    @property
    def ipr(self) -> Any:
        if self._ipr is None:
            try:
                self._ipr = IPRoute()
            except OSError as exc:
                raise BondError(f"cannot open a netlink socket: {exc.strerror}") from exc
        return self._ipr

    def close(self) -> None:
        if self._own and self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def __enter__(self) -> BondManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _netlink(self, what: str) -> Iterator[None]:
        try:
            yield
        except NetlinkError as exc:
            raise BondError(f"{what}: {_describe(exc)}") from exc
        except OSError as exc:
            raise BondError(f"{what}: {exc.strerror or exc}") from exc

    def index(self, ifname: str) -> int:
        with self._netlink(f"look up {ifname}"):
            found = self.ipr.link_lookup(ifname=ifname)
        if not found:
            raise BondError(f"interface {ifname} not found")
        return int(found[0])

    def exists(self, ifname: str) -> bool:
        with self._netlink(f"look up {ifname}"):
            return bool(self.ipr.link_lookup(ifname=ifname))

    def _name_of(self, index: int) -> str | None:
        if not index:
            return None
        with self._netlink(f"look up ifindex {index}"):
            links = self.ipr.get_links(index)
        return links[0].get_attr("IFLA_IFNAME") if links else None

    def _to_netlink(self, options: dict[str, Any]) -> dict[str, Any]:
        """Typed options -> pyroute2 keyword arguments (interface names become ifindexes)."""
        out: dict[str, Any] = {}
        for name, value in options.items():
            if name in _IFINDEX_OPTIONS:
                value = self.index(value) if value else 0
            elif name == "arp_ip_target":
                value = list(value)
            out[_NLA[name]] = value
        return out

    # -- life cycle ---------------------------------------------------------------------
    def create(
        self,
        name: str,
        params: BondParams,
        slaves: Sequence[str] = (),
        *,
        address: str | None = None,
        prefixlen: int = 24,
        up: bool = True,
    ) -> BondState:
        """Create bond ``name`` with ``params``, enslave ``slaves`` in order, bring it up.

        Slave-dependent options (``primary``, ``active_slave``) are set after enslaving.
        On any failure the half-made bond is deleted and :class:`BondError` raised.
        """
        try:
            check_params(params, name, slaves=list(slaves))
        except ConfigError as exc:
            raise BondConfigError(str(exc)) from exc
        if self.exists(name):
            raise BondError(f"interface {name} already exists")
        options = kernel_options(params)
        later = {k: options.pop(k) for k in _IFINDEX_OPTIONS if k in options}
        with self._netlink(f"create bond {name}"):
            self.ipr.link("add", ifname=name, kind="bond", **self._to_netlink(options))
        try:
            for slave in slaves:
                self.enslave(name, slave)
            if later:
                self._set(name, later)
            if up:
                self.set_up(name)
            if address is not None:
                self.set_address(name, address, prefixlen)
        except BondError:
            self.delete(name, missing_ok=True)
            raise
        return self.read(name)

    def delete(self, name: str, *, missing_ok: bool = False) -> None:
        if not self.exists(name):
            if missing_ok:
                return
            raise BondError(f"interface {name} not found")
        idx = self.index(name)
        with self._netlink(f"delete {name}"):
            self.ipr.link("del", index=idx)

    def set_up(self, name: str, up: bool = True) -> None:
        idx = self.index(name)
        with self._netlink(f"set {name} {'up' if up else 'down'}"):
            self.ipr.link("set", index=idx, state="up" if up else "down")

    def set_address(self, name: str, address: str, prefixlen: int = 24) -> None:
        idx = self.index(name)
        with self._netlink(f"address {address}/{prefixlen} on {name}"):
            self.ipr.addr("replace", index=idx, address=address, prefixlen=prefixlen)

    def enslave(self, bond: str, slave: str) -> None:
        """Enslave ``slave``; the driver refuses an up device, so it is set down first."""
        bidx, sidx = self.index(bond), self.index(slave)
        with self._netlink(f"enslave {slave} to {bond}"):
            self.ipr.link("set", index=sidx, state="down")
            self.ipr.link("set", index=sidx, master=bidx)

    def release(self, slave: str) -> None:
        sidx = self.index(slave)
        with self._netlink(f"release {slave}"):
            self.ipr.link("set", index=sidx, master=0)

    def _set(self, name: str, options: dict[str, Any]) -> None:
        if not options:
            return
        idx = self.index(name)
        with self._netlink(f"set {', '.join(options)} on {name}"):
            self.ipr.link("set", index=idx, kind="bond", **self._to_netlink(options))

    # -- reconfiguration ---------------------------------------------------------------
    def apply(self, name: str, change: BondParams) -> BondState:
        """Change options of a live bond; returns what the kernel then reports.

        Options the driver takes only without slaves or while down trigger a release /
        set / re-enslave cycle (slaves keep their order; ``primary`` is restored).
        """
        state = self.read(name)
        # Options the (new) mode does not use stay in the kernel, inert: not our business.
        mode = change.mode if change.mode is not None else state.params.mode
        base = BondParams(**{k: v for k, v in state.params.items() if mode in SPECS[k].modes})
        desired = base.merged(change)
        try:
            check_params(desired, name, slaves=state.slaves)
        except ConfigError as exc:
            raise BondConfigError(str(exc)) from exc
        options = kernel_options(desired)
        changed = kernel_options(change, desired)
        # Re-send what the mode accepts only when it differs from the kernel's value.
        changed = {k: v for k, v in changed.items() if getattr(state.params, k) != v}
        if not changed:
            return state
        need_release = any(SPECS[k].no_slaves for k in changed) and bool(state.slaves)
        need_down = any(SPECS[k].if_down for k in changed) and state.up
        later = {k: changed.pop(k) for k in _IFINDEX_OPTIONS if k in changed}
        slaves = list(state.slaves)
        if need_release:
            for slave in slaves:
                self.release(slave)
        try:
            if need_down:
                self.set_up(name, False)
            self._set(name, changed)
        finally:
            if need_release:
                for slave in slaves:
                    self.enslave(name, slave)
            if need_down:
                self.set_up(name, True)
        if need_release:
            for k in _IFINDEX_OPTIONS:
                value = options.get(k)
                if value and k not in later:
                    later[k] = value
        self._set(name, later)
        return self.read(name)

    def set_active_slave(self, name: str, slave: str) -> None:
        """Make ``slave`` the active one now (active-backup, tlb, alb); it must be up."""
        self._set(name, {"active_slave": slave})

    def slave_link_up(self, slave: str) -> bool:
        """The bond's own view of a slave (its monitor's verdict), from sysfs; False if unseen."""
        try:
            text = (self.sysfs_root / slave / "bonding_slave" / "mii_status").read_text()
        except OSError:
            return False
        return text.strip() == "up"

    # -- read back ---------------------------------------------------------------------------
    def read(self, name: str) -> BondState:
        """Every IFLA_BOND_* option, the slaves and the link state, from netlink."""
        idx = self.index(name)
        with self._netlink(f"read {name}"):
            msg = self.ipr.get_links(idx)[0]
            slaves = [
                link.get_attr("IFLA_IFNAME")
                for link in self.ipr.get_links()
                if link.get_attr("IFLA_MASTER") == idx
            ]
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        if kind != "bond":
            raise BondError(f"{name} is not a bond (kind {kind!r})")
        data = info.get_attr("IFLA_INFO_DATA")
        values: dict[str, Any] = {}
        for opt, nla in _NLA.items():
            raw = data.get_attr(f"IFLA_{nla.upper()}") if data is not None else None
            if opt in _IFINDEX_OPTIONS:
                values[opt] = (self._name_of(int(raw)) if raw else None) or ""
            elif opt == "arp_ip_target":
                values[opt] = tuple(str(a) for a in (raw or ()))
            elif raw is not None:
                values[opt] = int(raw)
        active = values.pop("active_slave", "")
        return BondState(
            name=name,
            index=idx,
            params=BondParams(**values),
            slaves=slaves,
            active_slave=active,
            up=bool(msg["flags"] & IFF_UP),
            carrier=bool(msg.get_attr("IFLA_CARRIER")),
            operstate=str(msg.get_attr("IFLA_OPERSTATE") or ""),
        )

    def read_sysfs(self, name: str) -> dict[str, str] | None:
        """``/sys/class/net/<name>/bonding/*`` as a flat dict, or None if not visible here.

        sysfs shows the network namespace it was mounted in; the ifindex is compared so a
        same-named bond elsewhere is never reported.
        """
        base = self.sysfs_root / name
        bonding = base / "bonding"
        try:
            if int((base / "ifindex").read_text()) != self.index(name):
                return None
            files = sorted(p for p in bonding.iterdir() if p.is_file())
        except (OSError, ValueError):
            return None
        out: dict[str, str] = {}
        for path in files:
            try:
                out[path.name] = path.read_text().strip()
            except OSError:
                out[path.name] = ""  # e.g. 802.3ad-only files in other modes
        return out

    def view(self, name: str) -> dict[str, str]:
        """The enabler's GET bond_params answer: sysfs when visible, else from netlink."""
        files = self.read_sysfs(name)
        if files is not None:
            return files
        return self.read(name).sysfs_view()


def list_bonds(ipr: Any) -> list[str]:
    """Names of every bond in the current netns."""
    out = []
    for link in ipr.get_links():
        info = link.get_attr("IFLA_LINKINFO")
        if info is not None and info.get_attr("IFLA_INFO_KIND") == "bond":
            out.append(link.get_attr("IFLA_IFNAME"))
    return out


# -- lean active-backup control for the liveness assist ------------------------------------


@dataclass(slots=True)
class AbState:
    """Just what the liveness assist needs, from ONE RTM_GETLINK (no dump, no lookups):
    Python netlink parsing under load would otherwise stall the daemon's data path."""

    mode: int
    active: int  # ifindex, 0 = none
    primary: int
    primary_reselect: int


def ab_state(ipr: Any, bond_index: int) -> AbState:
    try:
        msg = ipr.get_links(bond_index)[0]
    except NetlinkError as exc:
        raise BondError(f"read bond ifindex {bond_index}: {_describe(exc)}") from exc
    info = msg.get_attr("IFLA_LINKINFO")
    data = info.get_attr("IFLA_INFO_DATA") if info is not None else None
    if data is None:
        raise BondError(f"ifindex {bond_index} is not a bond")
    return AbState(
        mode=int(data.get_attr("IFLA_BOND_MODE") or 0),
        active=int(data.get_attr("IFLA_BOND_ACTIVE_SLAVE") or 0),
        primary=int(data.get_attr("IFLA_BOND_PRIMARY") or 0),
        primary_reselect=int(data.get_attr("IFLA_BOND_PRIMARY_RESELECT") or 0),
    )


def set_active_index(ipr: Any, bond_index: int, slave_index: int) -> None:
    try:
        ipr.link("set", index=bond_index, kind="bond", bond_active_slave=slave_index)
    except NetlinkError as exc:
        raise BondError(f"set active slave {slave_index}: {_describe(exc)}") from exc


def slave_mii_up(sysfs_root: Path, slave: str) -> bool:
    """The bond's own verdict on a slave (its monitor), from sysfs; False if unseen."""
    try:
        text = (sysfs_root / slave / "bonding_slave" / "mii_status").read_text()
    except OSError:
        return False
    return text.strip() == "up"


# -- server side: a plain bridge over the TAP endpoints ------------------------------------


def create_bridge(ipr: Any, name: str, address: str | None, prefixlen: int = 24) -> None:
    """A bridge without STP or forward delay (ports forward at once), up, with ``address``."""
    try:
        if ipr.link_lookup(ifname=name):
            raise BondError(f"interface {name} already exists")
        ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0)
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=idx, state="up")
        if address is not None:
            ipr.addr("replace", index=idx, address=address, prefixlen=prefixlen)
    except NetlinkError as exc:
        raise BondError(f"bridge {name}: {_describe(exc)}") from exc


def set_master(ipr: Any, port: str, master: str | None) -> None:
    """Attach ``port`` to bridge/bond ``master`` (None: detach)."""
    try:
        pidx = ipr.link_lookup(ifname=port)
        if not pidx:
            raise BondError(f"interface {port} not found")
        midx = 0
        if master is not None:
            found = ipr.link_lookup(ifname=master)
            if not found:
                raise BondError(f"interface {master} not found")
            midx = found[0]
        ipr.link("set", index=pidx[0], master=midx)
        if master is not None:
            ipr.link("set", index=pidx[0], state="up")
    except NetlinkError as exc:
        raise BondError(f"{port} -> {master}: {_describe(exc)}") from exc


def delete_link(ipr: Any, name: str) -> bool:
    """Delete ``name`` if present; True when something was deleted."""
    try:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return False
        ipr.link("del", index=found[0])
        return True
    except NetlinkError as exc:
        raise BondError(f"delete {name}: {_describe(exc)}") from exc


def set_link_up(ipr: Any, name: str, up: bool) -> None:
    try:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise BondError(f"interface {name} not found")
        ipr.link("set", index=found[0], state="up" if up else "down")
    except NetlinkError as exc:
        raise BondError(f"set {name} {'up' if up else 'down'}: {_describe(exc)}") from exc
