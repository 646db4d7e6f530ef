"""Reading openvpn 2.6 server configs (ovpnserverconf.py) from real files in tmp_path."""

from __future__ import annotations

import base64
import datetime
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from tunconnector.cli import main
from tunconnector.errors import TunconnectorError
from tunconnector.ovpnserverconf import (
    IGNORED,
    ServerConfig,
    ServerConfigError,
    auth_token_secret,
    load,
    looks_like_server,
)
from tunconnector.proto.openvpn.authtoken import AuthTokenKey
from tunconnector.proto.openvpn.servernet import ifconfig_push

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.openvpn_pki import cert as make_cert  # noqa: E402
from tests.openvpn_pki import pem  # noqa: E402

DEBIAN_SAMPLE = Path("/usr/share/doc/openvpn/examples/sample-config-files/server.conf")

CA_KEY = ec.generate_private_key(ec.SECP256R1())
CA = make_cert("ca", CA_KEY, None, CA_KEY, ca=True)
SRV_KEY = ec.generate_private_key(ec.SECP256R1())
SRV = make_cert("server", SRV_KEY, CA, CA_KEY, eku=ExtendedKeyUsageOID.SERVER_AUTH,
                key_usage=True)
STATIC_KEY = bytes(range(256))
TA_KEY = ("# 2048 bit OpenVPN static key\n-----BEGIN OpenVPN Static key V1-----\n"
          + "\n".join(STATIC_KEY[i:i + 16].hex() for i in range(0, 256, 16))
          + "\n-----END OpenVPN Static key V1-----\n")
#: 512-bit DH parameters (openssl dhparam): only read and checked, never used
DH_PEM = """-----BEGIN DH PARAMETERS-----
MEYCQQDe5ulMYYOJGJIPDjmqIP0CgMehsF8mg6t36Op2TevlyHvQy2VU5dZ6u/nY
K9bq7s5xQmqSu7v3yAUnKtQFOvRzAgEC
-----END DH PARAMETERS-----
"""
#: openvpn's own test vector (tests/unit_tests/openvpn/test_auth_token.c): this key
#: made this token for "test user name" at 0x5c331e9c
TOKEN_KEY_PEM = """-----BEGIN OpenVPN auth-token server key-----
+mmmf7IQ5cymtMVjKYTWk8IOcYanRlpQmV9Tb3EjkHYxueBVDg3yqRgzeBlVGzNLD//rAPiOVhau
3NDBjNOQB8951bfs7Cc2mYfay92Bh2gRJ5XEM/DMfzCWN+7uU6NWoTTHr4FuojnIQtjtqVAj/JS9
w+dTSp/vYHl+c7uHd19uVRu/qLqV85+rm4tUGIjO7FfYuwyPqwmhuIsi3hs9QkSimh888FmBpoKY
/tbKVTJZmSERKti9KEwtV2eVAR0znN5KW7lCB3mHVAhN7bUpcoDjfCzYIFARxwswTFu9gFkwqUMY
I1KUOgIsVNs4llACioeXplYekWETR+YkJwDc/A==
-----END OpenVPN auth-token server key-----
"""
OPENVPN_TOKEN = ("SESS_ID_AT_ThhRItzOKNKrh3dfAAAAAFwzHpwAAAAAXDMenDdrq0RoH3dkA1f7O3wO+7kZ"
                 "cx2DusVZrRmFlWQM9HOb")

PKI = "ca ca.crt\ncert server.crt\nkey server.key\ndh none\n"
BASE = "port 1194\nproto udp\ndev tun\n" + PKI


def _crl(ca: x509.Certificate, ca_key: Any) -> x509.CertificateRevocationList:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
            .last_update(now - datetime.timedelta(hours=1))
            .next_update(now + datetime.timedelta(days=1)).sign(ca_key, hashes.SHA256()))


def write_pki(folder: Path) -> None:
    (folder / "ca.crt").write_bytes(pem(CA))
    (folder / "server.crt").write_bytes(pem(SRV))
    (folder / "server.key").write_bytes(pem(SRV_KEY))
    (folder / "dh2048.pem").write_text(DH_PEM)
    (folder / "ta.key").write_text(TA_KEY)


def server_conf(tmp_path: Path, text: str, name: str = "server.conf") -> ServerConfig:
    write_pki(tmp_path)
    path = tmp_path / name
    path.write_text(text)
    return load(path, cwd=tmp_path)


def refused(tmp_path: Path, text: str, line: int | None, *words: str) -> str:
    """The error of a config openvpn refuses too: a ServerConfigError naming the file,
    the line when given, and each of ``words``."""
    with pytest.raises(ServerConfigError) as info:
        server_conf(tmp_path, text).check()
    msg = str(info.value)
    where = f"{tmp_path / 'server.conf'}:{line}:" if line else str(tmp_path / "server.conf")
    assert msg.startswith(where), msg
    for w in words:
        assert w in msg, msg
    return msg


def line_of(text: str, start: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start))


# -- Debian's sample -----------------------------------------------------------------------
@pytest.mark.skipif(not DEBIAN_SAMPLE.exists(), reason=f"needs {DEBIAN_SAMPLE}")
def test_debians_sample_server_conf(tmp_path: Path) -> None:
    text = DEBIAN_SAMPLE.read_text()
    sc = server_conf(tmp_path, text)
    sc.check()
    o = sc.options
    assert (sc.proto, sc.port, sc.dev_type, sc.family) == ("udp", 1194, "tun", None)
    assert o.network == "10.8.0.0/24" and o.topology == "subnet" and not o.tap
    assert o.keepalive == (10, 120)
    assert sc.pool_persist == "/var/log/openvpn/ipp.txt" and sc.pool_persist_seconds == 600
    assert sc.status == "/var/log/openvpn/openvpn-status.log"
    assert sc.explicit_exit_notify == 1
    assert o.ca_pem == pem(CA) and o.cert_pem == pem(SRV) and o.key_pem == pem(SRV_KEY)
    assert o.push == [] and o.client_configs is None and o.tls_auth is None
    net = sc.expansion()
    assert net.pool4 == ("10.8.0.2", "10.8.0.254")
    assert net.push == ("route-gateway 10.8.0.1", "topology subnet")
    assert sc.warnings == []
    assert "dh2048.pem" in text  # the sample's DH file was read (and found)


@pytest.mark.skipif(not DEBIAN_SAMPLE.exists(), reason=f"needs {DEBIAN_SAMPLE}")
def test_debians_sample_without_its_certificate(tmp_path: Path) -> None:
    text = DEBIAN_SAMPLE.read_text()
    write_pki(tmp_path)
    (tmp_path / "server.crt").unlink()
    (tmp_path / "server.conf").write_text(text)
    with pytest.raises(TunconnectorError) as info:
        load(tmp_path / "server.conf", cwd=tmp_path)
    assert f"server.conf:{line_of(text, 'cert ')}: cert server.crt:" in str(info.value)


# -- server NETWORK NETMASK under each topology ---------------------------------------------
def test_server_without_topology_is_net30_as_openvpn_26(tmp_path: Path) -> None:
    sc = server_conf(tmp_path, BASE + "server 10.8.0.0 255.255.255.0\n")
    sc.check()
    assert sc.options.topology == "net30"
    net = sc.expansion()
    assert (str(net.local4), str(net.remote_netmask4)) == ("10.8.0.1", "10.8.0.2")
    assert net.pool4 == ("10.8.0.4", "10.8.0.251")
    assert net.push == ("route 10.8.0.1", "topology net30")
    assert net.routes == ("10.8.0.0/24",)
    pool = net.make_pool()
    assert pool is not None
    first = pool.acquire("alice")
    assert first is not None and ifconfig_push(net, first) == ["ifconfig 10.8.0.6 10.8.0.5"]
    assert any("net30" in w and "topology subnet" in w for w in sc.warnings)


def test_server_with_topology_subnet(tmp_path: Path) -> None:
    sc = server_conf(tmp_path, BASE + "topology subnet\nserver 10.8.0.0 255.255.255.0\n")
    assert sc.options.topology == "subnet" and sc.warnings == []
    net = sc.expansion()
    assert (str(net.local4), str(net.remote_netmask4)) == ("10.8.0.1", "255.255.255.0")
    assert net.pool4 == ("10.8.0.2", "10.8.0.254")
    assert net.push == ("route-gateway 10.8.0.1", "topology subnet")
    pool = net.make_pool()
    assert pool is not None
    first = pool.acquire("alice")
    assert first is not None
    assert ifconfig_push(net, first) == ["ifconfig 10.8.0.2 255.255.255.0"]


def test_net30_client_to_client_and_ipv6(tmp_path: Path) -> None:
    sc = server_conf(tmp_path, BASE + "server 10.8.0.0 255.255.255.0\nclient-to-client\n"
                     "server-ipv6 fd00:8::/64\n")
    net = sc.expansion()
    assert sc.options.client_to_client and sc.options.network6 == "fd00:8::/64"
    assert net.push == ("tun-ipv6", "route 10.8.0.0 255.255.255.0", "topology net30")
    assert net.pool6 == ("fd00:8::1000", 64) and str(net.local6) == "fd00:8::1"


def test_nopool_with_explicit_pool(tmp_path: Path) -> None:
    sc = server_conf(tmp_path, BASE + "topology subnet\nserver 10.8.0.0 255.255.255.0 "
                     "nopool\nifconfig-pool 10.8.0.100 10.8.0.199\n")
    assert sc.options.nopool and sc.expansion().pool4 == ("10.8.0.100", "10.8.0.199")


# -- server-bridge --------------------------------------------------------------------------
def test_server_bridge_four_arguments(tmp_path: Path) -> None:
    sc = server_conf(tmp_path, BASE.replace("dev tun", "dev tap0")
                     + "server-bridge 10.8.0.4 255.255.255.0 10.8.0.50 10.8.0.100\n")
    sc.check()
    o = sc.options
    assert o.tap and sc.device == "tap0" and o.network is None
    assert o.server_bridge == ("10.8.0.4", "255.255.255.0", "10.8.0.50", "10.8.0.100")
    net = sc.expansion()
    assert net.pool4 == ("10.8.0.50", "10.8.0.100") and net.push == ("route-gateway 10.8.0.4",)
    assert net.topology is None and sc.warnings == []


@pytest.mark.parametrize("form", ["server-bridge", "server-bridge nogw"])
def test_server_bridge_dhcp_forms_are_refused(tmp_path: Path, form: str) -> None:
    text = BASE.replace("dev tun", "dev tap") + form + "\n"
    refused(tmp_path, text, line_of(text, "server-bridge"), "DHCP", "not supported")


def test_server_bridge_needs_tap_and_a_pool_in_its_subnet(tmp_path: Path) -> None:
    text = BASE + "server-bridge 10.8.0.4 255.255.255.0 10.8.0.50 10.8.0.100\n"
    refused(tmp_path, text, line_of(text, "server-bridge"), "dev tap")
    text = BASE.replace("dev tun", "dev tap") + \
        "server-bridge 10.8.0.4 255.255.255.0 10.9.0.50 10.9.0.100\n"
    refused(tmp_path, text, line_of(text, "server-bridge"), "must share the subnet")
    text = BASE.replace("dev tun", "dev tap") + "server-bridge 10.8.0.4 255.255.255.0 x\n"
    refused(tmp_path, text, line_of(text, "server-bridge"), "GATEWAY NETMASK")


# -- client-config-dir ----------------------------------------------------------------------
def test_client_config_dir_is_read_with_ccds_parser(tmp_path: Path) -> None:
    ccd = tmp_path / "ccd"
    ccd.mkdir()
    (ccd / "alice").write_text("ifconfig-push 10.8.0.50 255.255.255.0\n"
                               "iroute 192.168.40.0 255.255.255.0\n")
    (ccd / "DEFAULT").write_text("push-reset\nbogus-option 1\n")
    (ccd / "subdir").mkdir()
    text = BASE + ("topology subnet\nserver 10.8.0.0 255.255.255.0\nclient-config-dir ccd\n"
                   "ccd-exclusive\nroute 192.168.40.0 255.255.255.0\n")
    sc = server_conf(tmp_path, text)
    sc.check()
    configs = sc.options.client_configs
    assert configs is not None and sorted(configs) == ["DEFAULT", "alice"]
    assert str(configs["alice"].ifconfig_push[0]) == "10.8.0.50"  # type: ignore[index]
    assert [str(n) for n in configs["alice"].iroutes] == ["192.168.40.0/24"]
    assert configs["DEFAULT"].push_ops == [("push-reset", "")]
    assert sc.options.ccd_exclusive and sc.client_config_dir == str(ccd)
    assert sc.routes == ["192.168.40.0/24"]
    assert any("DEFAULT:2: bogus-option" in w for w in sc.warnings)
    assert "2 client config(s)" in sc.summary()


def test_client_config_dir_errors(tmp_path: Path) -> None:
    text = BASE + "server 10.8.0.0 255.255.255.0\nclient-config-dir nowhere\n"
    refused(tmp_path, text, line_of(text, "client-config-dir"), "no such directory")
    text = BASE + "server 10.8.0.0 255.255.255.0\nccd-exclusive\n"
    refused(tmp_path, text, line_of(text, "ccd-exclusive"), "client-config-dir")


# -- the rest of the directives -------------------------------------------------------------
FULL = """\
mode server
tls-server
proto tcp6-server
local 2001:db8::1
port 443
dev tun
topology subnet
server 10.8.0.0 255.255.255.0
ifconfig-pool-persist ipp.txt 0
push "route 192.168.10.0 255.255.255.0"
push "dhcp-option DNS 10.8.0.1"
push "redirect-gateway def1 bypass-dhcp"
duplicate-cn
max-clients 50
keepalive 10 120
<ca>
{ca}</ca>
cert server.crt
key server.key
dh dh2048.pem
tls-auth ta.key 0
data-ciphers AES-128-GCM:CHACHA20-POLY1305
data-ciphers-fallback AES-256-CBC
auth SHA256
reneg-sec 600
hand-window 30
tran-window 20
crl-verify crl.pem
verify-client-cert optional
auth-user-pass-verify "/etc/openvpn/check user" via-file
client-connect /etc/openvpn/connect.sh
client-disconnect "'/etc/openvpn/disconnect.sh' arg"
username-as-common-name
auth-gen-token 86400 300
auth-gen-token-secret token.key
script-security 2
status status.log 10
status-version 2
management 127.0.0.1 7505
explicit-exit-notify 2
user nobody
group nogroup
persist-key
persist-tun
verb 4
log-append server.log
"""


def test_every_directive_of_a_full_config(tmp_path: Path) -> None:
    (tmp_path / "crl.pem").write_bytes(pem(_crl(CA, CA_KEY)))
    (tmp_path / "token.key").write_text(TOKEN_KEY_PEM)
    sc = server_conf(tmp_path, FULL.format(ca=pem(CA).decode()))
    sc.check()
    o = sc.options
    assert (sc.proto, sc.family, sc.local, sc.port) == ("tcp", 6, "2001:db8::1", 443)
    assert o.proto == "tcp" and o.topology == "subnet"
    assert sc.pool_persist == str(tmp_path / "ipp.txt") and sc.pool_persist_seconds == 0
    assert o.push == ["route 192.168.10.0 255.255.255.0", "dhcp-option DNS 10.8.0.1",
                      "redirect-gateway def1 bypass-dhcp"]
    assert o.duplicate_cn and o.max_clients == 50 and o.keepalive == (10, 120)
    assert o.ca_pem == pem(CA)
    assert o.tls_auth == STATIC_KEY and o.key_direction == 0 and o.tls_crypt is None
    assert o.data_ciphers == ("AES-128-GCM", "CHACHA20-POLY1305")
    assert o.data_ciphers_fallback == "AES-256-CBC" and o.auth == "SHA256"
    assert (o.reneg_sec, o.hand_window, o.tran_window) == (600, 30, 20)
    assert o.crl_pem == (tmp_path / "crl.pem").read_bytes()
    assert o.verify_client_cert == "optional" and o.auth_user_pass_verify
    assert o.username_as_common_name
    # the command line splits as openvpn's argv_parse_cmd: quotes group, spaces part
    assert sc.scripts["auth-user-pass-verify"] == ["/etc/openvpn/check", "user"]
    assert sc.auth_user_pass_verify_via == "via-file"
    assert sc.scripts["client-connect"] == ["/etc/openvpn/connect.sh"]
    assert sc.scripts["client-disconnect"] == ["/etc/openvpn/disconnect.sh", "arg"]
    assert o.auth_gen_token and (o.auth_token_lifetime, o.auth_token_renewal) == (86400, 300)
    assert o.auth_token_secret is not None
    assert AuthTokenKey(o.auth_token_secret).verify(
        "test user name", OPENVPN_TOKEN, 0x5C331E9C, renewal=300).hmac_ok
    assert sc.script_security == 2
    assert (sc.status, sc.status_interval, sc.status_version) == (
        str(tmp_path / "status.log"), 10, 2)
    assert sc.management is not None and (sc.management.address, sc.management.port) == (
        "127.0.0.1", 7505)
    assert sc.explicit_exit_notify == 2 and (sc.user, sc.group) == ("nobody", "nogroup")
    assert sc.log == str(tmp_path / "server.log") and sc.log_append
    assert sc.warnings == []


def test_defaults_openvpn_has_and_serveroptions_does_not(tmp_path: Path) -> None:
    sc = server_conf(tmp_path, BASE + "server 10.8.0.0 255.255.255.0\n")
    o = sc.options
    assert o.keepalive is None  # no keepalive line: openvpn sends no pings
    assert o.topology == "net30"
    assert o.tls_auth is None and o.verify_client_cert == "require"
    assert o.data_ciphers == ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")


def test_tls_crypt_inline_and_exclusive_with_tls_auth(tmp_path: Path) -> None:
    text = BASE + f"server 10.8.0.0 255.255.255.0\n<tls-crypt>\n{TA_KEY}</tls-crypt>\n"
    sc = server_conf(tmp_path, text)
    assert sc.options.tls_crypt == STATIC_KEY and sc.options.tls_auth is None
    text += "tls-auth ta.key\n"
    refused(tmp_path, text, line_of(text, "<tls-crypt>"), "exclude each other")


def test_tls_auth_key_direction_line(tmp_path: Path) -> None:
    sc = server_conf(tmp_path, BASE + "server 10.8.0.0 255.255.255.0\ntls-auth ta.key\n"
                     "key-direction 1\n")
    assert sc.options.tls_auth == STATIC_KEY and sc.options.key_direction == 1
    sc = server_conf(tmp_path, BASE + "server 10.8.0.0 255.255.255.0\ntls-auth ta.key\n")
    assert sc.options.key_direction is None  # no direction: one key both ways


def test_compression_framing(tmp_path: Path) -> None:
    text = BASE + "server 10.8.0.0 255.255.255.0\ncompress migrate\n"
    assert server_conf(tmp_path, text).options.compress == "migrate"
    sc = server_conf(tmp_path, BASE + "server 10.8.0.0 255.255.255.0\ncomp-lzo\n")
    assert sc.options.compress == "lzo" and any("comp-lzo" in w for w in sc.warnings)
    text = BASE + "server 10.8.0.0 255.255.255.0\ncompress lz4-v2\n"
    refused(tmp_path, text, line_of(text, "compress"), "real compression")


def test_ignored_directives_are_accepted_and_listed(tmp_path: Path) -> None:
    text = BASE + "server 10.8.0.0 255.255.255.0\n" + "".join(f"{d}\n" for d in IGNORED)
    sc = server_conf(tmp_path, text)
    assert sc.warnings and all("net30" in w for w in sc.warnings)
    # the list is a decision: a directive joins it only with its reason
    assert set(IGNORED) == {"persist-key", "persist-tun", "verb", "mute",
                            "mute-replay-warnings", "suppress-timestamps",
                            "machine-readable-output", "fast-io", "tun-ipv6",
                            "ping-timer-rem", "float"}
    assert all(reason for reason in IGNORED.values())


def test_setenv_opt_and_ignore_unknown_option_warn(tmp_path: Path) -> None:
    text = BASE + ("topology subnet\nserver 10.8.0.0 255.255.255.0\nsetenv opt "
                   "block-ipv6\nignore-unknown-option bind-dev\nbind-dev vrf0\n")
    sc = server_conf(tmp_path, text)
    assert [w.split(": ", 1)[1] for w in sc.warnings] == [
        "unsupported directive 'block-ipv6' ignored",
        "unsupported directive 'bind-dev' ignored"]


def test_scripts_without_script_security_warn(tmp_path: Path) -> None:
    sc = server_conf(tmp_path, BASE + "topology subnet\nserver 10.8.0.0 255.255.255.0\n"
                     "client-connect /bin/true\n")
    assert any("client-connect not run" in w for w in sc.warnings)


# -- errors, each with its file and line ---------------------------------------------------
ERRORS = [
    ("server 10.8.0.0 255.255.255.0\nfrobnicate 1\n", "frobnicate",
     "unsupported directive 'frobnicate'"),
    ("server 10.8.0.0 255.0.255.0\n", "server", "not a valid netmask"),
    ("server 10.8.0.1 255.255.255.0\n", "server", "host bits set"),
    ("server 10.8.0.0 255.255.255.0 pool\n", "server", "'nopool'"),
    ("server 10.0.0.0 255.0.0.0\n", "server", "too many host addresses"),
    ("server 10.8.0.0 255.255.255.252\n", "server", "/29 or larger"),
    ("topology subnet\nserver 10.8.0.0 255.255.255.0 nopool\n"
     "ifconfig-pool 10.9.0.10 10.9.0.20\n", "ifconfig-pool", "outside the server's network"),
    ("topology subnet\nserver 10.8.0.0 255.255.255.0 nopool\n"
     "ifconfig-pool 10.8.0.1 10.8.0.20\n", "ifconfig-pool", "server's own address"),
    ("server 10.8.0.0 255.255.255.0\nifconfig-pool 10.8.0.10 10.8.0.20\n", "ifconfig-pool",
     "already defines an ifconfig-pool"),
    ("server 10.8.0.0 255.255.255.0 nopool\n", "server", "no address pool"),
    ("server-ipv6 fd00::/48\n", "server-ipv6", "between /64 and /124"),
    ("mode server\ntls-server\nifconfig-ipv6 fd00:1::1/64\n"
     "ifconfig-ipv6-pool fd00:2::1000/64\n", "ifconfig-ipv6-pool", "outside"),
    ("topology star\nserver 10.8.0.0 255.255.255.0\n", "topology", "one of subnet"),
    ("server 10.8.0.0 255.255.255.0\nifconfig 10.8.0.1 10.8.0.2\n", "ifconfig",
     "use 'server NETWORK NETMASK'"),
    ("mode p2p\n", "mode", "server configs only"),
    ("server 10.8.0.0 255.255.255.0\nclient\n", "client", "'client' in a server config"),
    ("server 10.8.0.0 255.255.255.0\nproto tcp-client\n", "proto", "tcp-server"),
    ("server 10.8.0.0 255.255.255.0\nkeepalive 10 15\n", "keepalive", "at least twice"),
    ("server 10.8.0.0 255.255.255.0\nkeepalive 0 10\n", "keepalive", "at least 1"),
    ("server 10.8.0.0 255.255.255.0\nmax-clients 0\n", "max-clients", "at least 1"),
    ("server 10.8.0.0 255.255.255.0\npush \"route 10.1.0.0 255.255.0.0,ping 1\"\n", "push",
     "cannot contain a comma"),
    ("server 10.8.0.0 255.255.255.0\nverify-client-cert none\n", "verify-client-cert",
     "auth-user-pass-verify"),
    ("server 10.8.0.0 255.255.255.0\nverify-client-cert maybe\n", "verify-client-cert",
     "none, optional or require"),
    ("server 10.8.0.0 255.255.255.0\nusername-as-common-name\n", "username-as-common-name",
     "auth-user-pass-verify"),
    ("server 10.8.0.0 255.255.255.0\nauth-user-pass-verify /bin/check\n",
     "auth-user-pass-verify", "via-file or via-env"),
    ("server 10.8.0.0 255.255.255.0\nauth-user-pass-verify /bin/check via-pipe\n",
     "auth-user-pass-verify", "via-file or via-env"),
    ("server 10.8.0.0 255.255.255.0\nauth-gen-token 0 60 external-auth\n", "auth-gen-token",
     "external-auth"),
    ("server 10.8.0.0 255.255.255.0\nreneg-sec 0\nauth-gen-token\n", "auth-gen-token",
     "non-infinite reneg-sec"),
    ("server 10.8.0.0 255.255.255.0\ncrl-verify /etc/crls dir\n", "crl-verify",
     "directory form"),
    ("server 10.8.0.0 255.255.255.0\ncrl-verify ca.crt\n", "crl-verify", "not a PEM CRL"),
    ("server 10.8.0.0 255.255.255.0\ndh ca.crt\n", "dh", "DH PARAMETERS"),
    ("server 10.8.0.0 255.255.255.0\ndh missing.pem\n", "dh", "missing.pem"),
    ("server 10.8.0.0 255.255.255.0\nauth-gen-token\nauth-gen-token-secret ca.crt\n",
     "auth-gen-token-secret", "auth-token server key"),
    ("server 10.8.0.0 255.255.255.0\ntls-auth ca.crt 0\n", "tls-auth", "tls-auth"),
    ("server 10.8.0.0 255.255.255.0\ndata-ciphers BF-CBC\n", "data-ciphers",
     "none of the data ciphers"),
    ("server 10.8.0.0 255.255.255.0\nremote-cert-tls server\n", "remote-cert-tls", "client"),
    ("server 10.8.0.0 255.255.255.0\nstatus-version 4\n", "status-version", "1, 2 or 3"),
    ("server 10.8.0.0 255.255.255.0\nroute 192.168.1.0 255.0.255.0\n", "route", "route:"),
    ("server 10.8.0.0 255.255.255.0\n<secret>\nx\n</secret>\n", "<secret>",
     "inline block <secret>"),
    ("keepalive 10 60\n", None, "not a server config"),
    ("mode server\n", "mode", "tls-server"),
    ("mode server\ntls-server\n", None, "without 'server NETWORK NETMASK'"),
]


@pytest.mark.parametrize(("extra", "blamed", "words"), ERRORS,
                         ids=[f"{i}-{e[1]}" for i, e in enumerate(ERRORS)])
def test_each_error_names_the_file_and_line(tmp_path: Path, extra: str, blamed: str | None,
                                            words: str) -> None:
    text = BASE + extra
    line = len(BASE.splitlines()) + line_of(extra, blamed) if blamed else None
    refused(tmp_path, text, line, words)


def test_missing_files_are_errors_at_their_line(tmp_path: Path) -> None:
    text = BASE + "server 10.8.0.0 255.255.255.0\n"
    for directive, fname in (("ca", "ca.crt"), ("cert", "server.crt"), ("key", "server.key")):
        write_pki(tmp_path)
        (tmp_path / "server.conf").write_text(text)
        (tmp_path / fname).unlink()
        with pytest.raises(ServerConfigError) as info:
            load(tmp_path / "server.conf", cwd=tmp_path)
        assert str(info.value).startswith(
            f"{tmp_path / 'server.conf'}:{line_of(text, directive + ' ')}: {directive} "), \
            info.value


def test_no_dev_and_no_cert_are_errors(tmp_path: Path) -> None:
    refused(tmp_path, PKI + "server 10.8.0.0 255.255.255.0\n", None, "no 'dev'")
    text = "dev tun\nca ca.crt\nserver 10.8.0.0 255.255.255.0\n"
    refused(tmp_path, text, None, "no 'cert'")


def test_bad_tls_material_fails_the_check(tmp_path: Path) -> None:
    write_pki(tmp_path)
    (tmp_path / "other.key").write_bytes(pem(ec.generate_private_key(ec.SECP256R1())))
    text = BASE.replace("key server.key", "key other.key") + "server 10.8.0.0 255.255.255.0\n"
    (tmp_path / "server.conf").write_text(text)
    sc = load(tmp_path / "server.conf", cwd=tmp_path)
    with pytest.raises(ServerConfigError, match="TLS material"):
        sc.check()


def test_auth_token_secret_is_openvpns_hmac_half() -> None:
    secret = auth_token_secret(TOKEN_KEY_PEM)
    body = base64.b64decode("".join(TOKEN_KEY_PEM.splitlines()[1:-1]))
    assert secret == body[64:96]
    assert AuthTokenKey(secret).verify("test user name", OPENVPN_TOKEN, 0x5C331E9C,
                                       renewal=100).hmac_ok
    short = TOKEN_KEY_PEM.replace(TOKEN_KEY_PEM.splitlines()[1], "AAAA")
    with pytest.raises(ServerConfigError, match="not enough data"):
        auth_token_secret("\n".join(short.splitlines()[:2] + short.splitlines()[-1:]))


# -- recognising a server config, and `tunconnector check` ----------------------------------
def test_looks_like_server() -> None:
    assert looks_like_server("# x\nmode server\n")
    assert looks_like_server("--server 10.8.0.0 255.255.255.0\n")
    assert looks_like_server("dev tap\nserver-bridge\n")
    assert looks_like_server("tls-server\n")
    assert not looks_like_server('server = "10.8.0.1"\nmode = "server"\n')
    assert not looks_like_server("client\nremote vpn.example 1194\n")
    assert not looks_like_server("# server 10.8.0.0 255.255.255.0\n")


def test_check_subcommand_reports_a_server_config(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    write_pki(tmp_path)
    conf = tmp_path / "server.conf"
    conf.write_text(BASE.replace(PKI, f"ca {tmp_path}/ca.crt\ncert {tmp_path}/server.crt\n"
                                      f"key {tmp_path}/server.key\n")
                    + "server 10.8.0.0 255.255.255.0\n")
    assert main(["check", "-c", str(conf)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == (f"{conf}: valid (openvpn server: udp port 1194, dev tun, "
                               "server 10.8.0.0/24 topology net30, pool 10.8.0.4-10.8.0.251)")
    assert "net30" in out.err
    conf.write_text(conf.read_text() + "topology ring\n")
    assert main(["check", "-c", str(conf)]) == 2
    assert f"{conf}:8: topology 'ring'" in capsys.readouterr().err


@pytest.mark.skipif(not DEBIAN_SAMPLE.exists(), reason=f"needs {DEBIAN_SAMPLE}")
def test_check_subcommand_on_debians_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    write_pki(tmp_path)
    shutil.copy(DEBIAN_SAMPLE, tmp_path / "server.conf")
    monkeypatch.chdir(tmp_path)
    assert main(["check", "-c", "server.conf"]) == 0
    assert "topology subnet, pool 10.8.0.2-10.8.0.254" in capsys.readouterr().out


def test_nice_is_read_for_the_process(tmp_path: Path) -> None:
    sc = server_conf(tmp_path, BASE + "server 10.8.0.0 255.255.255.0\nnice -5\n")
    assert sc.nice == -5
    with pytest.raises(ServerConfigError, match="nice must be within"):
        server_conf(tmp_path, BASE + "server 10.8.0.0 255.255.255.0\nnice 40\n")
