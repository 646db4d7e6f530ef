"""Config errors name the key path; CLI flags map to the same config."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunconnector.cli import config_from_legacy, legacy_parser, main
from tunconnector.config import Config
from tunconnector.errors import ConfigError
from tunconnector.tunnel import derive_mtu

GOOD = {"name": "a", "mode": "client", "remote": "192.0.2.1", "address": "10.0.0.2"}


def cfg(**kw: object) -> Config:
    return Config.from_mapping({"tunnel": [{**GOOD, **kw}]})


@pytest.mark.parametrize("kw,where", [
    ({"bogus": 1}, "tunnel[0].bogus: unknown key"),
    ({"mode": "peer"}, "tunnel[0].mode"),
    ({"port": 70000}, "tunnel[0].port"),
    ({"remote_port": "x"}, "tunnel[0].remote_port"),
    ({"device": "a-very-long-device-name"}, "tunnel[0].device"),
    ({"address": ["10.0.0.300/24"]}, "tunnel[0].address[0]"),
    ({"framing": "raw", "proto": "tcp"}, "tunnel[0].framing"),
    ({"framing": "simpletun"}, "tunnel[0].framing"),
    ({"keepalive": 10, "dead_after": 5}, "tunnel[0].dead_after"),
    ({"mtu": 20}, "tunnel[0].mtu"),
    ({"remote": None, "mode": "client"}, "tunnel[0].remote"),
    ({"health": {"interval": -1}}, "tunnel[0].health.interval"),
    ({"path": [{"name": "p", "bogus": 1}]}, "tunnel[0].path[0].bogus"),
    ({"enabled": "yes"}, "tunnel[0].enabled"),
])
def test_bad_values_name_the_key(kw: dict[str, object], where: str) -> None:
    data = {**GOOD, **kw}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ConfigError) as ei:
        Config.from_mapping({"tunnel": [data]})
    assert str(ei.value).startswith(where), str(ei.value)


def test_duplicates_and_top_level() -> None:
    with pytest.raises(ConfigError, match=r"tunnel\[1\].name: duplicate"):
        Config.from_mapping({"tunnel": [GOOD, GOOD]})
    with pytest.raises(ConfigError, match="^tunnels: unknown key"):
        Config.from_mapping({"tunnels": []})
    with pytest.raises(ConfigError, match="api.listen"):
        Config.from_mapping({"api": {"listen": "nohost"}})


def test_toml_errors(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[[tunnel]\nname=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Config.from_toml(p)
    with pytest.raises(ConfigError, match="cannot read"):
        Config.from_toml(tmp_path / "missing.toml")


def test_contract_keys_accepted(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("""
[[tunnel]]
name = "site-b"
mode = "server"
dev_type = "tun"
device = "tun0"
address = "10.0.0.2/24"
port = 55556
remote = "192.168.6.9"
remote_port = 55556
proto = "udp"
framing = "native"
mtu = 1400
keepalive = 10
dead_after = 60
netns = "app1"
""")
    t = Config.from_toml(p).tunnel[0]
    assert (t.name, t.device, t.mtu, t.netns, t.address) == (
        "site-b", "tun0", 1400, "app1", ["10.0.0.2/24"])


def test_bare_address_gets_slash24() -> None:
    assert str(cfg(address="10.0.0.3").tunnel[0].interfaces[0]) == "10.0.0.3/24"
    assert str(cfg(address="fd00::3").tunnel[0].interfaces[0]) == "fd00::3/64"


def test_legacy_cli_maps_to_config() -> None:
    args = legacy_parser().parse_args(
        ["-m", "both", "-p", "tun0", "-s", "10.0.0.2", "-i", "55555",
         "-n", "tun1", "-c", "10.0.1.3/24", "-r", "192.168.6.9", "-o", "55554",
         "--proto", "tcp", "--dev-type", "tap"])
    c = config_from_legacy(args)
    srv, cli = c.tunnel
    assert (srv.mode, srv.device, srv.port, srv.address) == ("server", "tun0", 55555,
                                                             ["10.0.0.2"])
    assert (cli.mode, cli.device, cli.remote, cli.remote_port) == ("client", "tun1",
                                                                   "192.168.6.9", 55554)
    assert srv.proto == cli.proto == "tcp" and srv.dev_type == "tap"
    assert legacy_parser().parse_args([]).inport == 55556


def test_cli_exit_code_2_on_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[[tunnel]]\nname = "x"\nport = 99999\n')
    assert main(["run", "-c", str(p)]) == 2
    err = capsys.readouterr().err
    assert "tunnel[0].port" in err and err.count("\n") == 1
    assert main(["-m", "client", "-c", "10.0.0.1"]) == 2


def test_derived_mtu() -> None:
    assert derive_mtu(cfg().tunnel[0]) == 1500 - 20 - 8 - 16
    assert derive_mtu(cfg(dev_type="tap").tunnel[0]) == 1500 - 20 - 8 - 16 - 14
    assert derive_mtu(cfg(remote="2001:db8::1").tunnel[0]) == 1500 - 40 - 8 - 16
    assert derive_mtu(cfg(mtu=1300).tunnel[0]) == 1300


def test_bond_liveness_and_silence_watch_defaults() -> None:
    from tunconnector.bond import tunnel_configs
    from tunconnector.config import BondConfig, BondSlaveConfig

    def client(**kw: object) -> BondConfig:
        return BondConfig(name="bond0", role="client", ip_address="10.8.0.253",  # type: ignore[arg-type]
                          slaves=[BondSlaveConfig("eth0", "10.1.0.2")], **kw)

    arp = {"bonding_mode": "1", "arp_interval": "100", "arp_ip_target": "10.8.0.254"}
    assert client(bonding=arp).liveness() == (0.2, 1.0)
    assert client(bonding=arp).switch_after() == pytest.approx(0.12)
    assert client(bonding={**arp, "arp_interval": "400"}).switch_after() == pytest.approx(0.48)
    assert client(bonding={"bonding_mode": "1", "miimon": "100"}).switch_after() == 0.3
    assert client(bonding=arp, failover_after=0).switch_after() is None
    assert client(bonding=arp, keepalive=0.5, dead_after=3.0).liveness() == (0.5, 3.0)
    server = BondConfig(name="br0", role="server", bridge_ip="10.8.0.254")  # type: ignore[arg-type]
    assert server.liveness() == (0.05, 1.0) and server.switch_after() is None
    [t] = tunnel_configs(client(bonding=arp))
    assert (t.keepalive, t.dead_after) == (0.2, 1.0)
    with pytest.raises(ConfigError, match="dead_after"):
        client(bonding=arp, keepalive=0.5, dead_after=0.2).validate("bond[0]")
    with pytest.raises(ConfigError, match="failover_after"):
        client(bonding=arp, failover_after=-1).validate("bond[0]")


def test_sched_slice_top_level() -> None:
    assert Config.from_mapping({}).sched_slice_us == 0
    assert Config.from_mapping({"sched_slice_us": 100}).sched_slice_us == 100
    with pytest.raises(ConfigError, match=r"^sched_slice_us: 50 is not 0"):
        Config.from_mapping({"sched_slice_us": 50})
    with pytest.raises(ConfigError, match=r"^sched_slice_us: 200000 is not 0"):
        Config.from_mapping({"sched_slice_us": 200000})


def test_nice_top_level() -> None:
    assert Config.from_mapping({"nice": -10}).nice == -10
    with pytest.raises(ConfigError, match=r"^nice: 20 is not within -20..19"):
        Config.from_mapping({"nice": 20})
    with pytest.raises(ConfigError, match="^nice"):
        Config.from_mapping({"nice": "high"})
