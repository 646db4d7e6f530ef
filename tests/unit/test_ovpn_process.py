"""The openvpn drop-in's pieces without a tunnel: script contract, command line, and the
management interface driven over a real unix socket by a small client."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tunconnector.errors import ConfigError
from tunconnector.ovpn_mgmt import GREETING, Backend, Management
from tunconnector.ovpn_process import split_argv
from tunconnector.ovpn_scripts import ScriptFacts, command, script_env
from tunconnector.ovpnconfig import Management as Spec
from tunconnector.proto.connection import ConfigAssigned


def _tap_facts() -> ScriptFacts:
    ev = ConfigAssigned(
        0.0, ("100.64.0.2/24", "2804:269c:ff00:5::2/64"),
        (("184.164.224.0/19", "100.64.0.1"), ("2804:269c::/32", None)),
        None,
        {"ifconfig": ("100.64.0.2", "255.255.255.0"),
         "ifconfig_ipv6": ("2804:269c:ff00:5::2/64", "2804:269c:ff00:5::1"),
         "route_gateway": "100.64.0.1", "dhcp_option": ["DNS 192.0.2.53"]})
    return ScriptFacts(dev="tap5", dev_type="tap", tun_mtu=1500, assigned=ev,
                       remote=("192.0.2.1", 1194), setenv={"daemon_name": "amsterdam01"},
                       config="configs/openvpn/amsterdam01.conf", daemon=True)


def test_up_script_arguments_and_environment() -> None:
    facts = _tap_facts()
    assert command(["scripts/openvpn/up.sh"], facts, "up") == [
        "scripts/openvpn/up.sh", "tap5", "1500", "1549", "100.64.0.2", "255.255.255.0",
        "init"]
    assert command(["/bin/down", "-x"], facts, "down", context="restart")[-1] == "restart"
    assert command(["r"], facts, "route-up") == ["r"]
    env = script_env(facts, "up", now=0)
    want = {
        "script_type": "up", "script_context": "init", "dev": "tap5", "dev_type": "tap",
        "tun_mtu": "1500", "link_mtu": "1549", "daemon_name": "amsterdam01",
        "ifconfig_local": "100.64.0.2", "ifconfig_netmask": "255.255.255.0",
        "ifconfig_broadcast": "100.64.0.255",
        "ifconfig_ipv6_local": "2804:269c:ff00:5::2", "ifconfig_ipv6_netbits": "64",
        "ifconfig_ipv6_remote": "2804:269c:ff00:5::1",
        "route_vpn_gateway": "100.64.0.1", "route_network_1": "184.164.224.0",
        "route_netmask_1": "255.255.224.0", "route_gateway_1": "100.64.0.1",
        "route_ipv6_network_1": "2804:269c::/32", "trusted_ip": "192.0.2.1",
        "trusted_port": "1194", "remote_1": "192.0.2.1", "daemon": "1",
        "foreign_option_1": "dhcp-option DNS 192.0.2.53", "time_unix": "0",
        "config": "configs/openvpn/amsterdam01.conf",
    }
    assert {k: env.get(k) for k in want} == want
    assert "ifconfig_remote" not in env
    assert script_env(facts, "down", signal="SIGTERM")["signal"] == "SIGTERM"


def test_tun_net30_gives_ifconfig_remote() -> None:
    ev = ConfigAssigned(0.0, ("10.8.0.6/30",), (), None,
                        {"ifconfig": ("10.8.0.6", "10.8.0.5"), "topology": "net30"})
    facts = ScriptFacts(dev="tun0", assigned=ev)
    env = script_env(facts, "up")
    assert (env["ifconfig_local"], env["ifconfig_remote"]) == ("10.8.0.6", "10.8.0.5")
    assert "ifconfig_netmask" not in env and "ifconfig_ipv6_local" not in env
    assert command(["u"], facts, "up")[4:6] == ["10.8.0.6", "10.8.0.5"]


def test_before_assignment_the_addresses_are_empty() -> None:
    facts = ScriptFacts(dev="tap0", dev_type="tap")
    assert command(["d"], facts, "down") == ["d", "tap0", "1500", "1549", "", "", "init"]


def test_own_flags_apart_from_openvpns() -> None:
    own, rest = split_argv(["--cd", "/x", "-c", "a.conf", "--name", "n", "--verb", "3",
                            "--netns=ns1", "--allow-redirect-gateway", "--log", "l"])
    assert rest == ["--cd", "/x", "--config", "a.conf", "--verb", "3", "--log", "l"]
    assert (own.name, own.netns, own.allow_redirect_gateway) == ("n", "ns1", True)
    with pytest.raises(ConfigError, match="--log-level"):
        split_argv(["--log-level", "loud"])


def test_cli_check_and_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_ovpnconfig import _pki  # type: ignore[import-not-found]

    from tunconnector.cli import main
    from tunconnector.ovpn_process import main as console_main

    (tmp_path / "c.conf").write_text("client\nremote 192.0.2.1 # mux\ndev tap5\n" + _pki())
    assert main(["openvpn", "--cd", str(tmp_path), "--config", "c.conf", "--check"]) == 0
    assert "c.conf: valid" in capsys.readouterr().out
    assert console_main(["--cd", str(tmp_path), "--config", "c.conf", "--fragment",
                         "1300"]) == 2
    assert "[CMD-LINE]: unsupported directive 'fragment'" in capsys.readouterr().err
    (tmp_path / "bad.conf").write_text("client\nremote a\nsocks-proxy s 1080\n")
    assert console_main(["--cd", str(tmp_path), "--config", "bad.conf"]) == 2
    assert "bad.conf:3: unsupported directive 'socks-proxy'" in capsys.readouterr().err


# ---------------------------------------------------------------- management interface
class MgmtClient:
    """A management client as GUIs write them: lines in, lines out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    async def line(self) -> str:
        raw = await asyncio.wait_for(self.r.readline(), 5)
        assert raw.endswith(b"\r\n"), raw
        return raw.decode()[:-2]

    async def cmd(self, text: str, *, until: str | None = None) -> list[str]:
        self.w.write(text.encode() + b"\n")
        await self.w.drain()
        out = [await self.line()]
        while until is not None and out[-1] != until:
            out.append(await self.line())
        return out


async def _with_mgmt(tmp_path: Path, password: str | None = None,
                     ) -> tuple[Management, list[str], MgmtClient]:
    signals: list[str] = []
    spec = Spec(str(tmp_path / "m.sock"), None, password=password)
    backend = Backend(lambda: ["OpenVPN STATISTICS", "Updated,x", "END"],
                      lambda: (123, 456), signals.append, lambda: None)
    mg = Management(spec, backend)
    await mg.start()
    reader, writer = await asyncio.open_unix_connection(spec.address)
    return mg, signals, MgmtClient(reader, writer)


async def test_management_commands(tmp_path: Path) -> None:
    mg, signals, c = await _with_mgmt(tmp_path)
    try:
        assert await c.line() == GREETING
        help_ = await c.cmd("help", until="END")
        assert help_[0].startswith("Management Interface for OpenVPN 2.6")
        assert any(h.startswith("signal s ") for h in help_)
        ver = await c.cmd("version", until="END")
        assert ver[0].startswith("OpenVPN Version: OpenVPN 2.6") and ver[1] == \
            "Management Version: 5"
        import os

        assert await c.cmd("pid") == [f"SUCCESS: pid={os.getpid()}"]
        mg.set_state("CONNECTING")
        mg.set_state("CONNECTED", "SUCCESS", local_ip="10.8.0.2", remote="192.0.2.1",
                     remote_port="1194", local_ip6="fd00::2")
        st = await c.cmd("state", until="END")
        assert len(st) == 2 and st[0].split(",", 1)[1] == \
            "CONNECTED,SUCCESS,10.8.0.2,192.0.2.1,1194,,,fd00::2"
        allst = await c.cmd("state all", until="END")
        assert [s.split(",")[1] for s in allst[:-1]] == ["CONNECTING", "CONNECTED"]
        assert await c.cmd("state on") == ["SUCCESS: real-time state notification set to ON"]
        mg.set_state("RECONNECTING", "ping-restart")
        note = await c.line()
        assert note.startswith(">STATE:") and note.endswith(",RECONNECTING,ping-restart,,,,,")
        assert await c.cmd("status", until="END") == ["OpenVPN STATISTICS", "Updated,x", "END"]
        assert (await c.cmd("status 2", until="END"))[-1] == "END"
        assert await c.cmd("bytecount 1") == ["SUCCESS: bytecount interval changed"]
        assert await c.line() == ">BYTECOUNT:123,456"
        assert await c.cmd("bytecount 0") == ["SUCCESS: bytecount interval changed"]
        assert await c.cmd("hold") == ["SUCCESS: hold=0"]
        assert await c.cmd("hold release") == ["SUCCESS: hold release succeeded"]
        assert await c.cmd("log") == ["ERROR: The 'log' command needs 1 parameter(s)"]
        import logging

        # a logger of this test's own, made usable whatever earlier tests did to logging
        # (a dictConfig disables the loggers that exist when it runs)
        tlog = logging.getLogger("tunconnector.test_mgmt")
        tlog.disabled, tlog.propagate = False, True
        tlog.setLevel(logging.INFO)
        tlog.warning("something odd")
        assert (await c.cmd("log all", until="END"))[-2].endswith(",W,something odd")
        assert await c.cmd("log on") == ["SUCCESS: real-time log notification set to ON"]
        tlog.info("live line")
        assert (await c.line()).endswith(",I,live line")
        assert await c.cmd("log off") == ["SUCCESS: real-time log notification set to OFF"]
        assert await c.cmd("echo all", until="END") == ["END"]
        assert await c.cmd("echo on") == ["SUCCESS: real-time echo notification set to ON"]
        assert await c.cmd("forget-passwords") == ["SUCCESS: Passwords were forgotten"]
        assert await c.cmd("signal SIGBOGUS") == [
            "ERROR: signal 'SIGBOGUS' is not a known signal type"]
        assert await c.cmd("frobnicate") == [
            "ERROR: unknown command, enter 'help' for more options"]
        assert await c.cmd("signal SIGTERM") == ["SUCCESS: signal SIGTERM thrown"]
        assert signals == ["SIGTERM"]
        c.w.write(b"quit\n")
        assert await asyncio.wait_for(c.r.read(), 5) == b""
    finally:
        c.w.close()
        await mg.close()
    assert not (tmp_path / "m.sock").exists()


async def test_management_password(tmp_path: Path) -> None:
    mg, _, c = await _with_mgmt(tmp_path, password="s3cret")
    try:
        c.w.write(b"wrong\n")
        assert await c.line() == "ENTER PASSWORD:ERROR: bad password"
        assert await c.cmd("s3cret", until=GREETING) == [
            "ENTER PASSWORD:SUCCESS: password is correct", GREETING]
        assert await c.cmd("hold on") == ["SUCCESS: hold flag set to ON"]
    finally:
        c.w.close()
        await mg.close()


async def test_management_hold_waits_for_release(tmp_path: Path) -> None:
    signals: list[str] = []
    spec = Spec(str(tmp_path / "h.sock"), None, hold=True)
    mg = Management(spec, Backend(lambda: ["END"], lambda: (0, 0), signals.append,
                                  lambda: None))
    await mg.start()
    try:
        waiting = asyncio.get_running_loop().create_task(mg.wait_hold_release())
        reader, writer = await asyncio.open_unix_connection(spec.address)
        c = MgmtClient(reader, writer)
        assert await c.line() == GREETING
        assert await c.line() == ">HOLD:Waiting for hold release:0"
        assert not waiting.done()
        lines = await c.cmd("hold release", until="SUCCESS: hold release succeeded")
        assert lines[-1] == "SUCCESS: hold release succeeded"
        await asyncio.wait_for(waiting, 5)
        writer.close()
    finally:
        await mg.close()


async def test_management_password_query(tmp_path: Path) -> None:
    """management-query-passwords: >PASSWORD: and the username/password commands."""
    mg, _, c = await _with_mgmt(tmp_path)
    try:
        assert await c.line() == GREETING
        assert await c.cmd('password "Auth" x') == [
            "ERROR: no password is currently needed at this time"]
        asking = asyncio.get_running_loop().create_task(mg.query_user_pass("Auth"))
        assert await c.line() == ">PASSWORD:Need 'Auth' username/password"
        assert await c.cmd('username "Private Key" alice') == [
            "ERROR: username of type 'Private Key' entered, but we need one of type 'Auth'"]
        assert await c.cmd('username "Auth" alice') == [
            "SUCCESS: 'Auth' username entered, but not yet verified"]
        assert not asking.done()
        assert await c.cmd('password "Auth" "s3cret word"') == [
            "SUCCESS: 'Auth' password entered, but not yet verified"]
        assert await asyncio.wait_for(asking, 5) == ("alice", "s3cret word")
    finally:
        c.w.close()
        await mg.close()


def test_query_passwords_config() -> None:
    from test_ovpnconfig import _pki

    from tunconnector.ovpnconfig import parse

    ca = _pki().split("<cert>")[0]
    cfg = parse("client\nremote a\nauth-user-pass\nmanagement /tmp/x.sock unix\n"
                "management-query-passwords\n" + ca, "t")
    assert cfg.query_auth and cfg.options.username is None
    with pytest.raises(ConfigError, match="t:3: auth-user-pass needs a file"):
        parse("client\nremote a\nauth-user-pass\n" + ca, "t")


def test_server_certificate_in_the_environment() -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "PEERING"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "mux.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(0x1A2B).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    ev = ConfigAssigned(0.0, ("10.8.0.2/24",), (), None, {"peer_chain": {0: cert, 1: cert}})
    env = script_env(ScriptFacts(dev="tun0", assigned=ev), "up")
    assert env["common_name"] == "mux.example" and env["X509_0_CN"] == "mux.example"
    assert env["X509_1_O"] == "PEERING" and env["tls_id_0"] == "O=PEERING, CN=mux.example"
    assert (env["tls_serial_0"], env["tls_serial_hex_0"]) == ("6699", "1a:2b")
    assert len(env["tls_digest_sha256_0"].split(":")) == 32


def test_ipchange_arguments() -> None:
    facts = ScriptFacts(dev="tun0", remote=("192.0.2.1", 1194))
    assert command(["./ipchange.sh"], facts, "ipchange") == ["./ipchange.sh", "192.0.2.1",
                                                             "1194"]


def test_genkey_as_openvpn(tmp_path: Path) -> None:
    from tunconnector.ovpn_process import main as console_main
    from tunconnector.proto.openvpn.keyfile import parse_static_key

    assert console_main(["--genkey", "secret", str(tmp_path / "ta.key")]) == 0
    assert len(parse_static_key((tmp_path / "ta.key").read_text()).material) == 256
    assert (tmp_path / "ta.key").stat().st_mode & 0o077 == 0
    assert console_main(["--genkey", "--secret", str(tmp_path / "b.key")]) == 0
    assert console_main(["--mktun"]) == 2


def test_sd_notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from tunconnector.ovpn_process import sd_notify

    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        sd_notify("READY=1")
        assert s.recv(100) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    sd_notify("READY=1")  # no systemd: nothing, no error
