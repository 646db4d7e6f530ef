"""The bonding-option normaliser: enabler strings in, typed values out, sysfs text back."""

from __future__ import annotations

import pytest

from tunconnector.errors import ConfigError
from tunconnector.proto.bondparams import (
    ACTIVE_BACKUP,
    BALANCE_RR,
    KERNEL_DEFAULTS,
    SPECS,
    BondParams,
    check_params,
    format_value,
    kernel_options,
    parse_params,
    parse_sysfs,
    sysfs_view,
)

# The enabler's example body, as published (every value a string).
ENABLER_BONDING = {
    "bonding_mode": "1",
    "primary": "tap1",
    "arp_ip_target": "10.8.0.254",
    "arp_interval": "100",
    "fail_over_mac": "1",
    "arp_validate": "5",
}

# The enabler's GET bond_params example answer (a 6.1 sysfs dump).
ENABLER_GET = {
    "active_slave": "tap1",
    "ad_actor_key": "",
    "ad_select": "stable 0",
    "all_slaves_active": "0",
    "arp_all_targets": "any 0",
    "arp_interval": "50",
    "arp_ip_target": "10.8.0.254",
    "arp_missed_max": "2",
    "arp_validate": "none 0",
    "downdelay": "0",
    "fail_over_mac": "active 1",
    "lacp_rate": "slow 0",
    "lp_interval": "1",
    "mii_status": "up",
    "miimon": "0",
    "min_links": "0",
    "mode": "active-backup 1",
    "num_grat_arp": "1",
    "num_unsol_na": "1",
    "packets_per_slave": "1",
    "primary": "tap1",
    "primary_reselect": "always 0",
    "resend_igmp": "1",
    "slaves": "tap2 tap1",
    "tlb_dynamic_lb": "1",
    "updelay": "0",
    "use_carrier": "1",
    "xmit_hash_policy": "layer2 0",
}


def test_enabler_example_body() -> None:
    p = parse_params(ENABLER_BONDING)
    assert p == BondParams(
        mode=ACTIVE_BACKUP,
        primary="tap1",
        arp_ip_target=("10.8.0.254",),
        arp_interval=100,
        fail_over_mac=1,
        arp_validate=5,
    )
    check_params(p, slaves=["tap1", "tap2"])
    view = sysfs_view(p, slaves=["tap1", "tap2"])
    assert view["mode"] == "active-backup 1"
    assert view["arp_validate"] == "filter_active 5"
    assert view["fail_over_mac"] == "active 1"
    assert view["arp_interval"] == "100"
    assert view["arp_ip_target"] == "10.8.0.254"
    assert view["primary"] == "tap1"
    assert view["primary_reselect"] == "always 0"
    assert view["slaves"] == "tap1 tap2"


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("bonding_mode", "1", 1),
        ("bonding_mode", 1, 1),
        ("mode", "active-backup", 1),
        ("mode", "Active-Backup", 1),
        ("mode", "active-backup 1", 1),
        ("mode", " balance-alb ", 6),
        ("arp_validate", "filter_active", 5),
        ("arp_validate", "6", 6),
        ("fail_over_mac", "follow", 2),
        ("primary_reselect", "failure 2", 2),
        ("xmit_hash_policy", "layer3+4", 1),
        ("arp_all_targets", "all", 1),
        ("use_carrier", "1", 1),
        ("num_grat_arp", "3", 3),
        ("num_unsol_na", "3", 3),
        ("miimon", "100", 100),
        ("arp_ip_target", "10.0.0.1,10.0.0.2", ("10.0.0.1", "10.0.0.2")),
        ("arp_ip_target", "10.0.0.1 10.0.0.2", ("10.0.0.1", "10.0.0.2")),
        ("arp_ip_target", ["10.0.0.1"], ("10.0.0.1",)),
        ("arp_ip_target", "", ()),
        ("primary", "", ""),
    ],
)
def test_spellings(key: str, raw: object, expected: object) -> None:
    p = parse_params({key: raw})
    ((_, value),) = list(p.items())
    assert value == expected


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"bonding_mode": "4"}, "802.3ad (LACP) needs a partner"),
        ({"bonding_mode": "802.3ad"}, "use active-backup"),
        ({"bonding_mode": "7"}, "outside 0..6"),
        ({"bonding_mode": "active-backup 2"}, "not a valid value"),
        ({"bonding_mode": "fast"}, "one of balance-rr=0"),
        ({"arp_validate": "9"}, "outside 0..6"),
        ({"fail_over_mac": True}, "expected a number"),
        ({"arp_interval": "-1"}, "not a valid value"),
        ({"arp_interval": "1.5"}, "not a valid value"),
        ({"arp_interval": None}, "expected a string or number"),
        ({"arp_ip_target": "10.8.0.300"}, "not an IPv4 address"),
        ({"arp_ip_target": "fd00::1"}, "not an IPv4 address"),
        ({"arp_ip_target": "0.0.0.0"}, "cannot be an ARP target"),
        ({"arp_ip_target": "224.0.0.1"}, "multicast"),
        ({"arp_ip_target": "10.0.0.1,10.0.0.1"}, "listed twice"),
        ({"arp_ip_target": ",".join(f"10.0.0.{i}" for i in range(1, 18))}, "at most 16"),
        ({"primary": "tap1;reboot"}, "not a valid interface name"),
        ({"primary": "a" * 16}, "not a valid interface name"),
        ({"num_grat_arp": "256"}, "outside 0..255"),
        ({"lp_interval": "0"}, "outside 1.."),
        ({"bogus": "1"}, "bonding.bogus: unknown bonding option"),
        ({"slaves": "tap1 tap2"}, "read-only here"),
        ({"mii_status": "up"}, "read-only here"),
        ({"mode": "1", "bonding_mode": "1"}, "given twice"),
    ],
)
def test_bad_values_name_the_key(body: dict[str, object], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_params(body)
    assert fragment in str(info.value)
    assert str(info.value).startswith("bonding.")


def test_get_answer_minus_read_only_parses_back() -> None:
    """A client may PUT back what GET returned once the read-only keys are dropped."""
    from tunconnector.proto.bondparams import READ_ONLY

    body = {k: v for k, v in ENABLER_GET.items() if k not in READ_ONLY and k != "num_unsol_na"}
    p = parse_params(body)
    assert p.mode == ACTIVE_BACKUP
    assert p.arp_validate == 0
    assert p.fail_over_mac == 1
    assert p.active_slave == "tap1"
    check_params(p, slaves=["tap1", "tap2"])


def test_parse_sysfs_roundtrip() -> None:
    p = parse_sysfs(ENABLER_GET)
    assert p.mode == ACTIVE_BACKUP
    assert p.primary == "tap1"
    assert p.arp_interval == 50
    assert p.arp_ip_target == ("10.8.0.254",)
    view = sysfs_view(p, slaves=["tap2", "tap1"], mii_status="up")
    for key, value in view.items():
        assert ENABLER_GET[key] == value, key


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        (BondParams(mode=ACTIVE_BACKUP, miimon=100, arp_interval=100), "exclusive"),
        (BondParams(mode=ACTIVE_BACKUP, arp_interval=100), "needs at least one"),
        (BondParams(mode=ACTIVE_BACKUP, miimon=100, arp_validate=1), "only works with the ARP"),
        (BondParams(mode=ACTIVE_BACKUP, updelay=200), "needs MII monitoring"),
        (BondParams(mode=ACTIVE_BACKUP, miimon=100, downdelay=150), "not a multiple"),
        (BondParams(mode=BALANCE_RR, primary="tap1"), "not supported in mode balance-rr"),
        (BondParams(primary="tap1"), "not supported in mode balance-rr"),  # default mode
        (BondParams(mode=5, arp_interval=100, arp_ip_target=("10.0.0.1",)), "balance-tlb"),
        (BondParams(mode=ACTIVE_BACKUP, packets_per_slave=3), "only in balance-rr"),
        (BondParams(mode=ACTIVE_BACKUP, primary="tap9"), "not one of the bond's slaves"),
        (BondParams(mode=4), "802.3ad"),
    ],
)
def test_inconsistent_states_refused(params: BondParams, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_params(params, "bond0", slaves=["tap1", "tap2"])
    assert fragment in str(info.value)


def test_defaults_are_harmless_in_any_mode() -> None:
    """A GET answer carries packets_per_slave=1 etc. in every mode: not an error."""
    state = KERNEL_DEFAULTS.merged(BondParams(mode=ACTIVE_BACKUP))
    check_params(state)
    rr = state.merged(BondParams(mode=BALANCE_RR, primary=""))
    check_params(rr)
    opts = kernel_options(rr)
    assert "primary" not in opts and "primary_reselect" not in opts
    assert opts["mode"] == BALANCE_RR


def test_kernel_options_uses_the_full_state_for_a_change() -> None:
    current = KERNEL_DEFAULTS.merged(parse_params(ENABLER_BONDING))
    change = parse_params({"primary": "tap2", "arp_interval": "50"})
    desired = current.merged(change)
    check_params(desired, slaves=["tap1", "tap2"])
    assert kernel_options(change, desired) == {"primary": "tap2", "arp_interval": 50}
    # without the state, primary would wrongly look unsupported (default mode balance-rr)
    assert "primary" not in kernel_options(change)


def test_delays_not_sent_without_miimon() -> None:
    """The driver answers EPERM to up/downdelay (even 0) while miimon is 0."""
    p = BondParams(mode=ACTIVE_BACKUP, updelay=0, downdelay=0, miimon=0)
    assert "updelay" not in kernel_options(p)
    p2 = BondParams(mode=ACTIVE_BACKUP, miimon=100, updelay=200, downdelay=100)
    check_params(p2)
    assert kernel_options(p2)["updelay"] == 200


def test_every_spec_formats_its_default() -> None:
    for name, value in KERNEL_DEFAULTS.items():
        text = format_value(name, value)
        assert isinstance(text, str)
        assert name in SPECS


def test_to_strings_roundtrip() -> None:
    p = parse_params(ENABLER_BONDING)
    assert parse_params(p.to_strings()) == p
