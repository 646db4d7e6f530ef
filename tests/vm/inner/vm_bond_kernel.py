"""Runs INSIDE the VM guest (Debian 6.1 kernel with bonding): the bond manager for real.

Not collected on the host (the name does not match ``test_*.py``); ``tests/vm/
test_bond_kernel.py`` boots a guest and runs this file there. Every device is created
in a fresh network namespace per test, so tests cannot see each other's leftovers.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute, NetNS, netns

from tunconnector.errors import BondError
from tunconnector.io.bond import BondManager
from tunconnector.proto.bondparams import (
    SPECS,
    BondParams,
    parse_params,
    parse_sysfs,
    sysfs_view,
)

pytestmark = [
    pytest.mark.skipif(os.environ.get("TUNCONNECTOR_IN_VM") != "1", reason="guest only"),
]

TUNSETIFF = 0x400454CA
TUNSETCARRIER = 0x400454E2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000

ENABLER_BONDING = {
    "bonding_mode": "1",
    "primary": "tap1",
    "arp_ip_target": "10.8.0.254",
    "arp_interval": "100",
    "fail_over_mac": "1",
    "arp_validate": "5",
}


@dataclass
class Ns:
    """A throw-away network namespace, entered by this process for the test's duration."""

    name: str
    ipr: IPRoute
    bonds: BondManager


@pytest.fixture
def ns() -> Iterator[Ns]:
    """Enter a fresh netns (setns) so sysfs, /dev/net/tun and netlink all agree."""
    name = f"tcb-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    netns.setns(name)
    # sysfs shows the netns it was mounted from: mount one for this namespace.
    sysfs = Path(f"/tmp/sys-{name}")
    sysfs.mkdir()
    _mount("sysfs", str(sysfs), "sysfs")
    ipr = IPRoute()
    try:
        yield Ns(name, ipr, BondManager(ipr, sysfs_root=sysfs / "class" / "net"))
    finally:
        ipr.close()
        _umount(str(sysfs))
        sysfs.rmdir()
        netns.setns(own)
        os.close(own)
        netns.remove(name)


_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def _umount(target: str) -> None:
    if _libc.umount2(target.encode(), 2) != 0:  # MNT_DETACH
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def _sysfs(bonds: BondManager, name: str) -> dict[str, str]:
    files = bonds.read_sysfs(name)
    assert files is not None, "bond not visible in sysfs"
    return files


class Tap:
    """A TAP device held open by this process (so it has carrier, like a live tunnel)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))

    def carrier(self, on: bool) -> None:
        fcntl.ioctl(self.fd, TUNSETCARRIER, struct.pack("i", 1 if on else 0))

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def taps(ns: Ns) -> Iterator[list[Tap]]:
    made = [Tap("tap1"), Tap("tap2")]
    try:
        yield made
    finally:
        for t in made:
            t.close()


def _assert_readback(bonds: BondManager, name: str, asked: BondParams, slaves: list[str]) -> None:
    """Every asked option equal in netlink AND sysfs; netlink and sysfs agree on all."""
    state = bonds.read(name)
    for key, value in asked.items():
        assert getattr(state.params, key) == value, f"netlink {key}"
    files = _sysfs(bonds, name)
    for key in asked.as_dict():
        fname = SPECS[key].sysfs_name
        assert files[fname] == sysfs_view(asked)[fname], f"sysfs {fname}={files[fname]!r}"
    # the sysfs files and the netlink answer describe the same bond, option by option
    from_sysfs = parse_sysfs(files)
    for key, value in state.params.items():
        if key == "active_slave" or (key in ("updelay", "downdelay") and not state.params.miimon):
            continue
        assert getattr(from_sysfs, key) == value, f"sysfs vs netlink {key}"
    assert files["slaves"].split() == slaves
    assert state.slaves == slaves or sorted(state.slaves) == sorted(slaves)
    derived = state.sysfs_view()
    for key, value in derived.items():
        if key in files and key not in ("slaves", "active_slave", "mii_status"):
            assert files[key] == value, f"derived view {key}"


def test_enabler_example_over_taps(ns: Ns, taps: list[Tap]) -> None:
    asked = parse_params(ENABLER_BONDING)
    ns.bonds.create("bond0", asked, ["tap1", "tap2"], address="10.8.0.253")
    _assert_readback(ns.bonds, "bond0", asked, ["tap1", "tap2"])
    files = _sysfs(ns.bonds, "bond0")
    assert files["mode"] == "active-backup 1"
    assert files["arp_validate"] == "filter_active 5"
    assert files["fail_over_mac"] == "active 1"
    assert files["primary"] == "tap1"
    addrs = [a.get_attr("IFA_ADDRESS") for a in ns.ipr.get_addr(label="bond0")]
    assert "10.8.0.253" in addrs
    dynamic = ("active_slave", "mii_status")  # the ARP monitor may act between reads
    view = {k: v for k, v in ns.bonds.view("bond0").items() if k not in dynamic}
    assert view == {k: v for k, v in files.items() if k not in dynamic}


@pytest.mark.parametrize(
    "body",
    [
        {
            "mode": "balance-rr",
            "miimon": "100",
            "updelay": "200",
            "downdelay": "100",
            "packets_per_slave": "3",
        },
        {
            "mode": "active-backup",
            "miimon": "50",
            "updelay": "100",
            "downdelay": "50",
            "primary": "tap2",
            "primary_reselect": "better",
            "fail_over_mac": "follow",
            "num_grat_arp": "3",
        },
        {
            "mode": "balance-xor",
            "xmit_hash_policy": "layer3+4",
            "arp_interval": "200",
            "arp_ip_target": "10.9.0.1,10.9.0.2",
            "arp_all_targets": "all",
            "min_links": "1",
        },
        {
            "mode": "broadcast",
            "arp_interval": "100",
            "arp_ip_target": "10.9.0.1",
            "arp_validate": "all",
        },
        {
            "mode": "balance-tlb",
            "miimon": "100",
            "tlb_dynamic_lb": "0",
            "primary": "tap1",
            "lp_interval": "2",
        },
        {
            "mode": "balance-alb",
            "miimon": "100",
            "resend_igmp": "3",
            "use_carrier": "1",
            "all_slaves_active": "1",
        },
    ],
    ids=[
        "balance-rr",
        "active-backup-mii",
        "balance-xor",
        "broadcast",
        "balance-tlb",
        "balance-alb",
    ],
)
def test_modes_and_parameters(ns: Ns, taps: list[Tap], body: dict[str, str]) -> None:
    asked = parse_params(body)
    ns.bonds.create("bond0", asked, ["tap1", "tap2"])
    _assert_readback(ns.bonds, "bond0", asked, ["tap1", "tap2"])


def test_8023ad_refused_before_touching_the_kernel(ns: Ns) -> None:
    with pytest.raises(BondError, match="802.3ad"):
        ns.bonds.create("bond0", BondParams(mode=4), [])
    assert not ns.bonds.exists("bond0")


def test_inconsistent_options_refused(ns: Ns, taps: list[Tap]) -> None:
    with pytest.raises(BondError, match="exclusive"):
        ns.bonds.create(
            "bond0",
            BondParams(mode=1, miimon=100, arp_interval=100, arp_ip_target=("10.0.0.1",)),
            ["tap1"],
        )
    assert not ns.bonds.exists("bond0")


def test_live_changes_primary_and_arp_interval(ns: Ns, taps: list[Tap]) -> None:
    asked = parse_params(ENABLER_BONDING)
    ns.bonds.create("bond0", asked, ["tap1", "tap2"])
    change = parse_params({"primary": "tap2", "arp_interval": "50"})
    state = ns.bonds.apply("bond0", change)
    assert state.params.primary == "tap2"
    assert state.params.arp_interval == 50
    assert state.slaves == ["tap1", "tap2"]
    _assert_readback(ns.bonds, "bond0", asked.merged(change), ["tap1", "tap2"])


def test_no_slave_options_reenslave(ns: Ns, taps: list[Tap]) -> None:
    """fail_over_mac and mode are refused by the driver with slaves: release, set, re-add."""
    asked = parse_params(ENABLER_BONDING)
    ns.bonds.create("bond0", asked, ["tap1", "tap2"])
    state = ns.bonds.apply("bond0", parse_params({"fail_over_mac": "follow"}))
    assert state.params.fail_over_mac == 2
    assert state.params.primary == "tap1"
    assert _sysfs(ns.bonds, "bond0")["slaves"] == "tap1 tap2"
    change = parse_params(
        {"mode": "balance-rr", "primary": "", "arp_validate": "0", "packets_per_slave": "2"}
    )
    state = ns.bonds.apply("bond0", change)
    assert state.params.mode == 0
    assert state.params.packets_per_slave == 2
    assert _sysfs(ns.bonds, "bond0")["mode"] == "balance-rr 0"
    assert _sysfs(ns.bonds, "bond0")["slaves"] == "tap1 tap2"
    state = ns.bonds.apply("bond0", parse_params({"mode": "1", "primary": "tap2"}))
    assert state.params.mode == 1 and state.params.primary == "tap2"


def test_primary_must_be_a_slave(ns: Ns, taps: list[Tap]) -> None:
    ns.bonds.create("bond0", parse_params(ENABLER_BONDING), ["tap1", "tap2"])
    with pytest.raises(BondError, match="not one of the bond's slaves"):
        ns.bonds.apply("bond0", parse_params({"primary": "eth9"}))


def test_netlink_errors_are_bond_errors(ns: Ns) -> None:
    with pytest.raises(BondError, match="not found"):
        ns.bonds.read("nosuchbond")
    ns.ipr.link("add", ifname="dummyish", kind="bridge")
    with pytest.raises(BondError, match="not a bond"):
        ns.bonds.read("dummyish")


def _operstate(ipr: IPRoute, name: str) -> str:
    return str(ipr.get_links(ipr.link_lookup(ifname=name)[0])[0].get_attr("IFLA_OPERSTATE"))


def _wait(pred: object, timeout: float = 5.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if pred():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.005)
    raise AssertionError("condition not met in time")


def _watch(conditions: dict[str, Callable[[], bool]], timeout: float = 5.0) -> dict[str, float]:
    """Poll every condition together from now on; seconds until each first held."""
    start = time.monotonic()
    seen: dict[str, float] = {}
    while len(seen) < len(conditions) and time.monotonic() - start < timeout:
        for name, pred in conditions.items():
            if name not in seen and pred():
                seen[name] = time.monotonic() - start
        time.sleep(0.005)
    missing = set(conditions) - set(seen)
    assert not missing, f"not within {timeout}s: {sorted(missing)} (seen: {seen})"
    return seen


def test_tunsetcarrier_drives_operstate_and_miimon_failover(ns: Ns, taps: list[Tap]) -> None:
    """TUNSETCARRIER 0 makes a TAP's operstate DOWN; a miimon bond then fails over.

    Both timed from the carrier change itself (not one after the other: the bond moves
    within a miimon period, long before a sequential wait would start its clock), each
    poll one sysfs file and one netlink dump, cheap enough on a slow TCG guest."""
    asked = parse_params(
        {"mode": "1", "miimon": "20", "primary": "tap1", "primary_reselect": "always"}
    )
    ns.bonds.create("bond0", asked, ["tap1", "tap2"])
    active = ns.bonds.sysfs_root / "bond0" / "bonding" / "active_slave"
    _wait(lambda: active.read_text().strip() == "tap1")
    taps[0].carrier(False)
    took = _watch({"operstate": lambda: _operstate(ns.ipr, "tap1") == "DOWN",
                   "failover": lambda: active.read_text().strip() == "tap2"})
    print(f"carrier off: operstate DOWN after {took['operstate']:.3f}s, "
          f"failover after {took['failover']:.3f}s")
    assert took["operstate"] < 1.0 and took["failover"] < 1.0, took
    taps[0].carrier(True)
    back = _watch({"operstate": lambda: _operstate(ns.ipr, "tap1") in ("UP", "UNKNOWN"),
                   "failback": lambda: active.read_text().strip() == "tap1"})
    print(f"carrier on: operstate after {back['operstate']:.3f}s, "
          f"failback after {back['failback']:.3f}s")
    assert back["operstate"] < 1.0 and back["failback"] < 1.0, back


def test_pyroute2_netns_handle_sees_the_bond(ns: Ns, taps: list[Tap]) -> None:
    """A NetNS handle from outside reads the same bond (how a daemon in another ns would)."""
    ns.bonds.create("bond0", parse_params(ENABLER_BONDING), ["tap1", "tap2"])
    with NetNS(ns.name) as other:
        mgr = BondManager(other)
        st = mgr.read("bond0")
        assert st.params.mode == 1 and st.slaves == ["tap1", "tap2"]
