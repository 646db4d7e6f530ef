"""Kernel bonding parameters: enabler bodies in, typed values out, sysfs-style text back.

The Multi-link enabler sends every value as a string (``"bonding_mode": "1"``,
``"arp_validate": "5"``); its GET answer is the bond's sysfs files verbatim
(``"mode": "active-backup 1"``). This module is the single place that understands both
spellings, checks values against the ranges and per-mode rules of the Linux 6.1 bonding
driver, and refuses combinations the kernel would silently rewrite (miimon together with
arp_interval, delays that are not multiples of miimon) so nothing is ever quietly ignored.

Pure data: no netlink and no sysfs here; :mod:`tunconnector.io.bond` does the I/O.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import reprlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ConfigError

INT_MAX = 2**31 - 1
MAX_ARP_TARGETS = 16  # BOND_MAX_ARP_TARGETS

# Bonding modes (BOND_MODE_*).
BALANCE_RR, ACTIVE_BACKUP, BALANCE_XOR, BROADCAST, MODE_8023AD, BALANCE_TLB, BALANCE_ALB = range(7)
ALL_MODES = frozenset(range(7))
_AB_TLB_ALB = frozenset({ACTIVE_BACKUP, BALANCE_TLB, BALANCE_ALB})

MODE_NAMES = {
    "balance-rr": 0,
    "active-backup": 1,
    "balance-xor": 2,
    "broadcast": 3,
    "802.3ad": 4,
    "balance-tlb": 5,
    "balance-alb": 6,
}
REFUSED_MODES = {
    MODE_8023AD: (
        "802.3ad (LACP) needs a partner speaking LACPDUs at the far end of every link; "
        "here each link ends in a TAP tunnel endpoint on the server's bridge, which never "
        "answers LACP, so the aggregator would never form: use active-backup (1)"
    ),
}

ParamKind = Literal["enum", "int", "ifname", "targets"]


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """How one bonding option is spelled, bounded and applied in the 6.1 driver."""

    name: str
    kind: ParamKind
    names: Mapping[str, int] | None = None
    lo: int = 0
    hi: int = INT_MAX
    modes: frozenset[int] = ALL_MODES  # modes in which the kernel accepts the option
    no_slaves: bool = False  # BOND_OPTFLAG_NOSLAVES: only while the bond has no slaves
    if_down: bool = False  # BOND_OPTFLAG_IFDOWN: only while the bond is down
    sysfs: str = ""  # sysfs file name, when it differs from ``name``
    bare_number: bool = False  # sysfs prints just the number although names exist

    @property
    def sysfs_name(self) -> str:
        return self.sysfs or self.name


SPECS: dict[str, ParamSpec] = {
    s.name: s
    for s in (
        ParamSpec("mode", "enum", MODE_NAMES, 0, 6, no_slaves=True, if_down=True),
        ParamSpec("primary", "ifname", modes=_AB_TLB_ALB),
        ParamSpec(
            "primary_reselect",
            "enum",
            {"always": 0, "better": 1, "failure": 2},
            0,
            2,
            modes=_AB_TLB_ALB,
        ),
        ParamSpec("active_slave", "ifname", modes=_AB_TLB_ALB),
        ParamSpec("miimon", "int"),
        ParamSpec("updelay", "int"),
        ParamSpec("downdelay", "int"),
        ParamSpec("use_carrier", "enum", {"off": 0, "on": 1}, 0, 1, bare_number=True),
        ParamSpec(
            "arp_interval",
            "int",
            modes=ALL_MODES - {MODE_8023AD, BALANCE_TLB, BALANCE_ALB},
        ),
        ParamSpec(
            "arp_ip_target",
            "targets",
            modes=ALL_MODES - {MODE_8023AD, BALANCE_TLB, BALANCE_ALB},
        ),
        ParamSpec(
            "arp_validate",
            "enum",
            {
                "none": 0,
                "active": 1,
                "backup": 2,
                "all": 3,
                "filter": 4,
                "filter_active": 5,
                "filter_backup": 6,
            },
            0,
            6,
            modes=ALL_MODES - {MODE_8023AD, BALANCE_TLB, BALANCE_ALB},
        ),
        ParamSpec("arp_all_targets", "enum", {"any": 0, "all": 1}, 0, 1),
        ParamSpec(
            "fail_over_mac",
            "enum",
            {"none": 0, "active": 1, "follow": 2},
            0,
            2,
            no_slaves=True,
        ),
        ParamSpec(
            "xmit_hash_policy",
            "enum",
            {
                "layer2": 0,
                "layer3+4": 1,
                "layer2+3": 2,
                "encap2+3": 3,
                "encap3+4": 4,
                "vlan+srcmac": 5,
            },
            0,
            5,
        ),
        ParamSpec("num_peer_notif", "int", lo=0, hi=255, sysfs="num_grat_arp"),
        ParamSpec("resend_igmp", "int", lo=0, hi=255),
        ParamSpec("all_slaves_active", "enum", {"off": 0, "on": 1}, 0, 1, bare_number=True),
        ParamSpec("min_links", "int"),
        ParamSpec("lp_interval", "int", lo=1),
        ParamSpec("packets_per_slave", "int", lo=0, hi=65535, modes=frozenset({BALANCE_RR})),
        ParamSpec(
            "tlb_dynamic_lb",
            "enum",
            {"off": 0, "on": 1},
            0,
            1,
            modes=frozenset({BALANCE_TLB, BALANCE_ALB}),
            if_down=True,
            bare_number=True,
        ),
    )
}

#: Other spellings accepted on input (the enabler's body key, sysfs twins, iproute2 names).
ALIASES = {
    "bonding_mode": "mode",
    "bond_mode": "mode",
    "num_grat_arp": "num_peer_notif",
    "num_unsol_na": "num_peer_notif",
}

#: sysfs files that only report state; PUTting them back is refused with this reason.
READ_ONLY = {
    "slaves": "slaves are the daemon's tap1..tapN; start/stop the client to change them",
    "mii_status": "reports the bond's link state",
    "queue_id": "per-slave queue ids are not managed by the daemon",
    "ad_aggregator": "802.3ad is not supported",
    "ad_num_ports": "802.3ad is not supported",
    "ad_actor_key": "802.3ad is not supported",
    "ad_partner_key": "802.3ad is not supported",
    "ad_partner_mac": "802.3ad is not supported",
    "ad_actor_sys_prio": "802.3ad is not supported",
    "ad_actor_system": "802.3ad is not supported",
    "ad_user_port_key": "802.3ad is not supported",
    "ad_select": "802.3ad is not supported",
    "lacp_rate": "802.3ad is not supported",
    "lacp_active": "802.3ad is not supported",
    "arp_missed_max": "not settable through this pyroute2 version's netlink map",
    "peer_notif_delay": "not settable through this pyroute2 version's netlink map",
}


@dataclass(frozen=True, slots=True)
class BondParams:
    """Typed bonding options; ``None`` means "not asked for" (keep the kernel's value)."""

    mode: int | None = None
    primary: str | None = None
    primary_reselect: int | None = None
    active_slave: str | None = None
    miimon: int | None = None
    updelay: int | None = None
    downdelay: int | None = None
    use_carrier: int | None = None
    arp_interval: int | None = None
    arp_ip_target: tuple[str, ...] | None = None
    arp_validate: int | None = None
    arp_all_targets: int | None = None
    fail_over_mac: int | None = None
    xmit_hash_policy: int | None = None
    num_peer_notif: int | None = None
    resend_igmp: int | None = None
    all_slaves_active: int | None = None
    min_links: int | None = None
    lp_interval: int | None = None
    packets_per_slave: int | None = None
    tlb_dynamic_lb: int | None = None

    def items(self) -> Iterator[tuple[str, Any]]:
        """(name, value) for every option that was set, in kernel application order."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                yield f.name, value

    def as_dict(self) -> dict[str, Any]:
        return dict(self.items())

    def merged(self, other: BondParams) -> BondParams:
        """``self`` with every option ``other`` sets replacing ours."""
        return dataclasses.replace(self, **other.as_dict())

    def effective(self) -> BondParams:
        """Our options on top of the kernel's defaults: what the bond will really run."""
        return KERNEL_DEFAULTS.merged(self)

    def to_strings(self) -> dict[str, str]:
        """Enabler-style body (every value a string), parseable back by :func:`parse_params`."""
        out: dict[str, str] = {}
        for name, value in self.items():
            out[name] = ",".join(value) if isinstance(value, tuple) else str(value)
        return out


#: What a freshly created 6.1 bond runs with (modprobe defaults).
KERNEL_DEFAULTS = BondParams(
    mode=BALANCE_RR,
    primary="",
    primary_reselect=0,
    active_slave="",
    miimon=0,
    updelay=0,
    downdelay=0,
    use_carrier=1,
    arp_interval=0,
    arp_ip_target=(),
    arp_validate=0,
    arp_all_targets=0,
    fail_over_mac=0,
    xmit_hash_policy=0,
    num_peer_notif=1,
    resend_igmp=1,
    all_slaves_active=0,
    min_links=0,
    lp_interval=1,
    packets_per_slave=1,
    tlb_dynamic_lb=1,
)


def _join(where: str, key: str) -> str:
    """``where.key``; an odd key (any bytes a config file held) is quoted, cut short."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key):
        key = reprlib.repr(key)[:40]
    return f"{where}.{key}" if where else key


def canonical_name(key: str) -> str | None:
    key = key.strip()
    key = ALIASES.get(key, key)
    return key if key in SPECS else None


def parse_value(spec: ParamSpec, value: Any, where: str) -> Any:
    """One option's value, from an int, a numeric string, a name or sysfs' "name N"."""
    if spec.kind == "targets":
        return _parse_targets(value, where)
    if spec.kind == "ifname":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected an interface name, got {reprlib.repr(value)}")
        name = value.strip()
        if name and (
            len(name.encode()) > 15 or not all(c.isalnum() or c in "_.-@+:" for c in name)
        ):
            raise ConfigError(f"{where}: {reprlib.repr(value)} is not a valid interface name")
        return name
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number{_choices(spec)}, got {reprlib.repr(value)}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        text = value.strip()
        number_opt = _parse_text(spec, text)
        if number_opt is None:
            raise ConfigError(
                f"{where}: {reprlib.repr(value)} is not a valid value{_choices(spec)}")
        number = number_opt
    else:
        raise ConfigError(f"{where}: expected a string or number, got {type(value).__name__}")
    if not spec.lo <= number <= spec.hi:
        raise ConfigError(f"{where}: {number} outside {spec.lo}..{spec.hi}{_choices(spec)}")
    return number


def _parse_text(spec: ParamSpec, text: str) -> int | None:
    if text.isdigit():
        return int(text)
    if spec.names is None:
        return None
    parts = text.split()
    if len(parts) == 2 and parts[1].isdigit():  # sysfs echo: "active-backup 1"
        named = spec.names.get(parts[0].lower())
        if named is None or named != int(parts[1]):
            return None
        return named
    if len(parts) == 1:
        return spec.names.get(parts[0].lower())
    return None


def _choices(spec: ParamSpec) -> str:
    if spec.names is None:
        return ""
    return " (one of " + ", ".join(f"{n}={v}" for n, v in spec.names.items()) + ")"


def _parse_targets(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [v for v in value.replace(",", " ").split() if v]
    elif isinstance(value, list | tuple):
        items = []
        for i, v in enumerate(value):
            if not isinstance(v, str):
                raise ConfigError(
                    f"{where}[{i}]: expected an IPv4 address string, got {reprlib.repr(v)}")
            items.append(v.strip())
    else:
        raise ConfigError(f"{where}: expected an IPv4 address or a list of them")
    if len(items) > MAX_ARP_TARGETS:
        raise ConfigError(f"{where}: at most {MAX_ARP_TARGETS} ARP targets, got {len(items)}")
    out: list[str] = []
    for item in items:
        try:
            addr = ipaddress.IPv4Address(item)
        except ValueError as exc:
            raise ConfigError(f"{where}: {reprlib.repr(item)} is not an IPv4 address") from exc
        if addr.is_unspecified or addr == ipaddress.IPv4Address("255.255.255.255"):
            raise ConfigError(f"{where}: {item} cannot be an ARP target")
        if addr.is_multicast:
            raise ConfigError(f"{where}: {item} is multicast, not an ARP target")
        if str(addr) in out:
            raise ConfigError(f"{where}: {item} listed twice")
        out.append(str(addr))
    return tuple(out)


def parse_params(body: Mapping[str, Any], where: str = "bonding") -> BondParams:
    """Typed options from an enabler body or a TOML table; unknown keys are errors.

    Read-only sysfs names (``slaves``, ``mii_status``...) are refused with the reason, so
    a client PUTting back a GET answer learns exactly which keys to drop.
    """
    if not isinstance(body, Mapping):
        raise ConfigError(f"{where}: expected an object")
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, raw in body.items():
        if not isinstance(key, str):
            raise ConfigError(f"{where}: keys must be strings")
        name = canonical_name(key)
        if name is None:
            if key in READ_ONLY:
                raise ConfigError(f"{_join(where, key)}: read-only here: {READ_ONLY[key]}")
            raise ConfigError(
                f"{_join(where, key)}: unknown bonding option (known: "
                + ", ".join(sorted([*SPECS, *ALIASES]))
                + ")"
            )
        if name in values:
            raise ConfigError(f"{_join(where, key)}: same option as {sources[name]!r} given twice")
        values[name] = parse_value(SPECS[name], raw, _join(where, key))
        sources[name] = key
    params = BondParams(**values)
    if params.mode in REFUSED_MODES:
        raise ConfigError(f"{_join(where, sources['mode'])}: {REFUSED_MODES[params.mode]}")
    return params


def check_params(
    params: BondParams,
    where: str = "bonding",
    *,
    slaves: Sequence[str] | None = None,
) -> None:
    """Refuse a desired state the kernel would reject or silently rewrite.

    ``params`` is the full desired state (use ``current.merged(change)`` for a partial
    update); unset options count with the kernel's defaults.
    """
    eff = params.effective()
    mode = eff.mode
    assert mode is not None  # effective() fills every field
    if mode in REFUSED_MODES:
        raise ConfigError(f"{_join(where, 'mode')}: {REFUSED_MODES[mode]}")
    mode_name = mode_to_name(mode)
    for name, value in params.items():
        spec = SPECS[name]
        if mode in spec.modes:
            continue
        if value in ("", ()) or value == getattr(KERNEL_DEFAULTS, name):
            continue  # the kernel's own default is harmless in any mode; it is not sent
        supported = ", ".join(mode_to_name(m) for m in sorted(spec.modes))
        raise ConfigError(
            f"{_join(where, name)}: not supported in mode {mode_name} (only in {supported})"
        )
    miimon, arp_interval = eff.miimon or 0, eff.arp_interval or 0
    if miimon and arp_interval:
        raise ConfigError(
            f"{_join(where, 'miimon')}: miimon={miimon} and arp_interval={arp_interval} are "
            "exclusive in the bonding driver (it would silently turn one off); set one to 0"
        )
    if arp_interval and not eff.arp_ip_target:
        raise ConfigError(
            f"{_join(where, 'arp_ip_target')}: arp_interval={arp_interval} needs at least one "
            "arp_ip_target, or the ARP monitor never sees a reply and every slave goes down"
        )
    if eff.arp_validate and not arp_interval:
        raise ConfigError(
            f"{_join(where, 'arp_validate')}: ARP validation only works with the ARP monitor "
            "(arp_interval > 0)"
        )
    for delay in ("updelay", "downdelay"):
        value = getattr(eff, delay) or 0
        if not value:
            continue
        if not miimon:
            raise ConfigError(
                f"{_join(where, delay)}: {delay} needs MII monitoring (miimon > 0); the kernel "
                "refuses it otherwise"
            )
        if value % miimon:
            raise ConfigError(
                f"{_join(where, delay)}: {value} is not a multiple of miimon={miimon} "
                f"(the kernel would round it down to {value - value % miimon})"
            )
    if slaves is not None:
        for name in ("primary", "active_slave"):
            value = getattr(params, name)
            if value and value not in slaves:
                raise ConfigError(
                    f"{_join(where, name)}: {reprlib.repr(value)} is not one of the bond's slaves "
                    f"({', '.join(slaves) or 'none'})"
                )


def mode_to_name(mode: int) -> str:
    for name, value in MODE_NAMES.items():
        if value == mode:
            return name
    return str(mode)


def format_value(name: str, value: Any) -> str:
    """One option as the 6.1 bonding sysfs file prints it."""
    spec = SPECS[name]
    if spec.kind == "targets":
        return " ".join(value)
    if spec.kind == "ifname":
        return str(value)
    if spec.kind == "enum" and spec.names is not None and not spec.bare_number:
        for n, v in spec.names.items():
            if v == value:
                return f"{n} {v}"
    return str(value)


def sysfs_view(
    params: BondParams,
    *,
    slaves: Sequence[str] = (),
    mii_status: str | None = None,
) -> dict[str, str]:
    """The enabler's GET bond_params answer, derived from typed values.

    Used where the bond's sysfs directory is not visible (another network namespace) and
    to cross-check the real sysfs files against what netlink reports.
    """
    eff = params.effective()
    out: dict[str, str] = {}
    for name, value in eff.items():
        spec = SPECS[name]
        out[spec.sysfs_name] = format_value(name, value)
        if name == "num_peer_notif":
            out["num_unsol_na"] = out[spec.sysfs_name]
    out["slaves"] = " ".join(slaves)
    if mii_status is not None:
        out["mii_status"] = mii_status
    return dict(sorted(out.items()))


def parse_sysfs(files: Mapping[str, str]) -> BondParams:
    """Typed options back from sysfs file contents (unknown or empty files skipped)."""
    values: dict[str, Any] = {}
    for fname, text in files.items():
        name = canonical_name(fname)
        if name is None or name in values:
            continue
        spec = SPECS[name]
        text = text.strip()
        if spec.kind == "targets":
            values[name] = tuple(text.split())
        elif spec.kind == "ifname":
            values[name] = text
        else:
            if not text:
                continue
            number = _parse_text(spec, text)
            if number is None:
                raise ConfigError(f"sysfs {fname}: cannot parse {text!r}")
            values[name] = number
    return BondParams(**values)


def kernel_options(params: BondParams, within: BondParams | None = None) -> dict[str, Any]:
    """The options to send for ``params``: those the effective mode accepts.

    ``within`` is the full desired state when ``params`` is only a change (its mode and
    miimon decide). :func:`check_params` already refused every unsupported option that
    asks for something; what is dropped here are defaults (``primary=""``) the kernel
    would reject merely for being mentioned in a mode that lacks the option.
    """
    eff = (within if within is not None else params).effective()
    out = {n: v for n, v in params.items() if eff.mode in SPECS[n].modes}
    if not eff.miimon:
        # The driver answers EPERM to any up/downdelay, even 0, while miimon is off.
        out.pop("updelay", None)
        out.pop("downdelay", None)
    return out
