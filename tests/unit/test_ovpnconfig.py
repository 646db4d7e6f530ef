"""Reading standard OpenVPN client configs (.ovpn)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tunconnector.errors import ConfigError
from tunconnector.ovpnconfig import IGNORED, load, parse

KEY_BLOCK = (
    "-----BEGIN OpenVPN Static key V1-----\n"
    + "\n".join(bytes([i]) .hex() * 16 for i in range(16))
    + "\n-----END OpenVPN Static key V1-----\n"
)
PEERING = f"""\
client
dev tap
proto udp
remote 198.51.100.7 1194
remote-cert-tls server
cipher AES-128-GCM
persist-key
persist-tun
verb 3
<ca>
-----BEGIN CERTIFICATE-----
CA
-----END CERTIFICATE-----
</ca>
<cert>
CERT
</cert>
<key>
KEY
</key>
<tls-auth>
{KEY_BLOCK}</tls-auth>
key-direction 1
"""


def test_peering_style_config() -> None:
    cfg = parse(PEERING, "peering.ovpn")
    o = cfg.options
    assert cfg.dev_type == "tap" and o.tap and cfg.device is None
    assert [(r.host, r.port, r.proto) for r in cfg.remote_list()] == [
        ("198.51.100.7", 1194, "udp")]
    assert o.remote_cert_tls == "server"
    assert o.cipher_fallback == "AES-128-GCM"
    assert "AES-128-GCM" in o.data_ciphers
    assert b"CA" in o.ca_pem and o.cert_pem == b"CERT\n" and o.key_pem == b"KEY\n"
    assert o.tls_auth is not None and len(o.tls_auth) == 256 and o.key_direction == 1


def test_files_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("CA\n")
    (tmp_path / "c.crt").write_text("C\n")
    (tmp_path / "c.key").write_text("K\n")
    (tmp_path / "tc.key").write_text(KEY_BLOCK)
    (tmp_path / "up.txt").write_text("alice\nsecret\n")
    (tmp_path / "x.ovpn").write_text(
        "client\ndev tun3\nproto tcp-client\nremote vpn.example 443\nremote b.example\n"
        "port 1195\nremote-random\nnobind\nca ca.crt\ncert c.crt\nkey c.key\n"
        "tls-crypt tc.key\nverify-x509-name server name\ndata-ciphers AES-256-GCM:BF-CBC\n"
        "keepalive 10 60\nreneg-sec 10\nauth-user-pass up.txt\nexplicit-exit-notify 2\n"
        "auth SHA256\n")
    cfg = load(tmp_path / "x.ovpn")
    o = cfg.options
    assert cfg.device == "tun3" and cfg.proto == "tcp" and o.proto == "tcp"
    assert [(r.host, r.port) for r in cfg.remote_list()] == [("vpn.example", 443),
                                                              ("b.example", 1195)]
    assert cfg.remote_random and cfg.nobind
    assert o.tls_crypt is not None and o.verify_x509_name == ("server", "name")
    assert o.data_ciphers == ("AES-256-GCM",)
    assert (o.ping, o.ping_restart, o.reneg_sec) == (10, 60, 10)
    assert (o.username, o.password, o.explicit_exit_notify) == ("alice", "secret", 2)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("client\nremote a\n<ca>\nx\n</ca>\nfragment 1300\n",
         r":6: unsupported directive 'fragment'"),
        ("client\nremote a\n<ca>\nx\n</ca>\ncompress lz4\n", r":6: compress lz4: real"),
        ("client\nremote a\n<ca>\nx\n</ca>\nallow-compression yes\n",
         r":6: allow-compression yes"),
        ("remote a\n<ca>\nx\n</ca>\n", "not a client config"),
        ("client\n<ca>\nx\n</ca>\n", "no 'remote'"),
        ("client\nremote a\n", "no 'ca'"),
        ("client\nremote a\n<ca>\nx\n", r":3: <ca> block without"),
        ("client\nremote a\n<ca>\nx\n</ca>\nauth-user-pass\n", "does not prompt"),
        ("client\nremote a\n<ca>\nx\n</ca>\ncipher BF-CBC\ndata-ciphers BF-CBC\n",
         "none of the data ciphers"),
        ("client\nremote a\nproto udp\nproto tcp-server\n<ca>\nx\n</ca>\n",
         r":4: proto 'tcp-server'"),
        ("client\nremote a\nca /nonexistent/ca.crt\n", r":3: ca /nonexistent"),
    ],
)
def test_refused_with_line(text: str, match: str) -> None:
    if "no 'ca'" not in match and "auth-user-pass" not in text and "cert" not in text:
        text += "<cert>\nc\n</cert>\n<key>\nk\n</key>\n"
    with pytest.raises(ConfigError, match=match):
        parse(text, "t.ovpn")


def test_ignored_directives_are_accepted() -> None:
    body = "\n".join(sorted(IGNORED))
    cfg = parse(f"client\nremote a\n{body}\n<ca>\nx\n</ca>\n<cert>\nc\n</cert>\n"
                "<key>\nk\n</key>\n", "t.ovpn")
    assert cfg.remotes[0].host == "a"


def _pki() -> str:
    """A real CA/cert/key so the config check can load them into a TLS context."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    kpem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()
    return f"<ca>\n{pem}</ca>\n<cert>\n{pem}</cert>\n<key>\n{kpem}</key>\n"


def test_tunnel_key_openvpn_config(tmp_path: Path) -> None:
    from tunconnector.config import Config

    ovpn = tmp_path / "site.ovpn"
    ovpn.write_text("client\ndev tap\nproto tcp-client\nremote 192.0.2.9 443\n" + _pki())
    cfg = Config.from_mapping({"tunnel": [{"name": "site", "openvpn_config": str(ovpn),
                                           "netns": "x"}]})
    t = cfg.tunnel[0]
    assert (t.mode, t.framing, t.proto, t.dev_type) == ("client", "openvpn", "tcp", "tap")
    assert (t.remote, t.remote_port, t.netns) == ("192.0.2.9", 443, "x")
    with pytest.raises(ConfigError, match=r"tunnel\[0\]\.openvpn_config: .*:2: unsupported"):
        ovpn.write_text("client\nfragment 1300\n")
        Config.from_mapping({"tunnel": [{"name": "site", "openvpn_config": str(ovpn)}]})
    ovpn.write_text("client\nremote a\n<ca>\nnot pem\n</ca>\n"
                    "<cert>\nx\n</cert>\n<key>\nk\n</key>\n")
    with pytest.raises(ConfigError, match=r"tunnel\[0\]\.openvpn_config: ca: not a PEM"):
        Config.from_mapping({"tunnel": [{"name": "site", "openvpn_config": str(ovpn)}]})
    with pytest.raises(ConfigError, match=r"tunnel\[0\]\.openvpn_config: .*cannot read"):
        Config.from_mapping({"tunnel": [{"name": "s", "openvpn_config": "/nonexistent.ovpn"}]})


def test_cli_openvpn_bad_config_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tunconnector.cli import main

    ovpn = tmp_path / "bad.ovpn"
    ovpn.write_text("client\nremote a\nhttp-proxy p 8080\n")
    assert main(["openvpn", "-c", str(ovpn)]) == 2
    err = capsys.readouterr().err
    assert "bad.ovpn:3: unsupported directive 'http-proxy'" in err


# ---------------------------------------------------------------- openvpn's grammar
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.peering import peering_client_config  # noqa: E402

PEERING_CONF = peering_client_config("amsterdam01", "192.0.2.1")


def _peering_tree(root: Path) -> None:
    (root / "certs").mkdir()
    (root / "configs" / "openvpn").mkdir(parents=True)
    (root / "certs" / "ca.crt").write_text("CA\n")
    (root / "certs" / "client.crt").write_text("CERT\n")
    (root / "certs" / "client.key").write_text("KEY\n")
    (root / "configs" / "openvpn" / "amsterdam01.conf").write_text(PEERING_CONF)


def test_peering_generated_config_from_its_directory(tmp_path: Path) -> None:
    from tunconnector.ovpnconfig import parse_argv

    _peering_tree(tmp_path)
    elsewhere = tmp_path / "configs"  # not the directory the files are relative to
    cfg = parse_argv(["--cd", str(tmp_path), "--config", "configs/openvpn/amsterdam01.conf"],
                     cwd=elsewhere)
    o = cfg.options
    assert cfg.cd == str(tmp_path.resolve())
    assert cfg.path == "configs/openvpn/amsterdam01.conf"
    assert (cfg.dev_type, cfg.device, cfg.nobind) == ("tap", "tap5", True)
    assert (o.ca_pem, o.cert_pem, o.key_pem) == (b"CA\n", b"CERT\n", b"KEY\n")
    assert o.explicit_exit_notify == 1 and o.remote_cert_tls == "server"
    assert o.data_ciphers == ("AES-128-GCM",) and o.cipher_fallback == "AES-128-GCM"
    assert cfg.daemon and cfg.daemon_name == "amsterdam01"
    assert cfg.setenv == {"daemon_name": "amsterdam01"}
    assert cfg.script_security == 2
    assert cfg.scripts == {"up": ["scripts/openvpn/up.sh"], "down": ["scripts/openvpn/down.sh"]}
    root = tmp_path.resolve()
    assert cfg.management is not None and cfg.management.unix
    assert cfg.management.address == str(root / "var/amsterdam01.sock")
    assert cfg.log == str(root / "var/amsterdam01.log") and not cfg.log_append
    assert cfg.writepid == str(root / "var/amsterdam01.pid")
    assert (cfg.replay_window, cfg.sndbuf, cfg.rcvbuf) == (4096, 0, 0)
    assert cfg.warnings == []


def test_paths_follow_the_working_directory_first(tmp_path: Path) -> None:
    """openvpn resolves against the working directory; a file only found beside the
    config is still taken (configs written for tunconnector's earlier rule)."""
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    (conf_dir / "ca.crt").write_text("BESIDE\n")
    (tmp_path / "ca.crt").write_text("CWD\n")
    text = "client\nremote a\nca ca.crt\nauth-user-pass up.txt\n"
    (conf_dir / "up.txt").write_text("u\np\n")
    cfg = parse(text, "x.conf", base=conf_dir, cwd=tmp_path)
    assert cfg.options.ca_pem == b"CWD\n"
    assert cfg.options.username == "u"
    cfg = parse(text, "x.conf", base=conf_dir, cwd=tmp_path / "nowhere")
    assert cfg.options.ca_pem == b"BESIDE\n"


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("explicit-exit-notify # notify server on exit", ["explicit-exit-notify"]),
        ("pull ; comment", ["pull"]),
        ("  # whole line", []),
        ("remote a#b 1194", ["remote", "a#b", "1194"]),
        ('up "/path with space/up.sh arg"', ["up", "/path with space/up.sh arg"]),
        ("up '/it''s'", ["up", "/it", "s"]),
        ("ca 'c:\\dir\\ca.crt'", ["ca", "c:\\dir\\ca.crt"]),
        ('setenv X "a \\"quoted\\" \\\\ word"', ["setenv", "X", 'a "quoted" \\ word']),
        ("ca my\\ file.crt", ["ca", "my file.crt"]),
        ('setenv E ""', ["setenv", "E", ""]),
        ("\tdev\ttap5  ", ["dev", "tap5"]),
    ],
)
def test_split_line_as_openvpn(line: str, words: list[str]) -> None:
    from tunconnector.ovpnconfig import split_line

    assert split_line(line) == words


@pytest.mark.parametrize(("line", "match"), [
    ('up "open', "no closing quotation"),
    ("up 'open", "no closing single quotation"),
    ("ca c:\\dir\\ca.crt", "bad backslash"),
])
def test_split_line_errors(line: str, match: str) -> None:
    from tunconnector.ovpnconfig import split_line

    with pytest.raises(ValueError, match=match):
        split_line(line)


CREDS = "<cert>\nc\n</cert>\n<key>\nk\n</key>\n<ca>\nx\n</ca>\n"


def test_inline_blocks_and_setenv() -> None:
    text = ("client\nremote a\n--dev tap\n"
            "<tls-auth>\n" + KEY_BLOCK + "  </tls-auth>\nkey-direction 1\n"
            "<auth-user-pass>\nalice\nsecret\n</auth-user-pass>\n"
            "setenv PEER_NAME 'site one'\nsetenv-safe X y\n"
            "setenv opt block-outside-dns\nsetenv opt tls-exit-on-a-whim 1\n"
            "ignore-unknown-option foo bar\nfoo 1 2\n" + CREDS)
    cfg = parse(text, "t.ovpn", cwd=Path("/nonexistent"))
    assert cfg.options.tls_auth is not None and cfg.options.key_direction == 1
    assert (cfg.options.username, cfg.options.password) == ("alice", "secret")
    assert cfg.setenv == {"PEER_NAME": "site one", "OPENVPN_X": "y"}
    assert cfg.dev_type == "tap"
    assert [w.split(": ", 1)[0] for w in cfg.warnings] == ["t.ovpn:31", "t.ovpn:32",
                                                            "t.ovpn:34"]
    assert "Windows only" in cfg.warnings[0]
    assert "tls-exit-on-a-whim" in cfg.warnings[1] and "'foo'" in cfg.warnings[2]


def test_forward_compatible_downgrades_unknown_directives() -> None:
    cfg = parse("client\nremote a\nsetenv FORWARD_COMPATIBLE 1\nnew-thing x\n" + CREDS, "t")
    assert cfg.warnings == ["t:4: unsupported directive 'new-thing' ignored"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("client\nremote a\n<connection>\nremote b\n</connection>\n",
         r"t\.ovpn:3: unsupported inline block <connection>"),
        ("client\nremote a\n  fragment 1300 # what\n", r"t\.ovpn:3: unsupported directive "
                                                       r"'fragment'"),
        ("client\nremote a\nlearn-address ./a.sh\n", r"t\.ovpn:3: unsupported directive "
                                                       r"'learn-address'"),
        ('client\nremote a\nup "./up.sh\n', r"t\.ovpn:3: no closing quotation"),
        ("client\nremote a\nignore-unknown-option foo\nbar\n", r"t\.ovpn:4: .*'bar'"),
        ("client\nremote a\nscript-security 4\n", r"t\.ovpn:3: script-security must be"),
        ("client\nremote a\nmanagement 127.0.0.1 http\n", r"t\.ovpn:3: management port"),
        ("client\nremote a\nmanagement-hold\n", r"management-hold without 'management'"),
        ("client\nremote a\ndaemon a b\n", r"t\.ovpn:3: 'daemon' takes at most 1"),
        ("client\nremote a\nreplay-window x\n", r"t\.ovpn:3: replay-window: 'x' is not"),
    ],
)
def test_refused_with_file_line_and_name(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse(text + CREDS, "t.ovpn")


def test_scripts_need_script_security_2() -> None:
    cfg = parse("client\nremote a\nup ./up.sh\n" + CREDS, "t.ovpn")
    assert cfg.scripts == {"up": ["./up.sh"]}
    assert any("script-security 2" in w for w in cfg.warnings)


def test_command_line(tmp_path: Path) -> None:
    from tunconnector.ovpnconfig import parse_argv

    (tmp_path / "ca.crt").write_text("CA\n")
    (tmp_path / "c.conf").write_text("client\nremote a 1195\nca ca.crt\n"
                                     "auth-user-pass creds\n")
    (tmp_path / "creds").write_text("u\np\n")
    cfg = parse_argv(["--cd", str(tmp_path), "--config", "c.conf", "--dev", "tap7",
                      "--verb", "3", "--setenv", "A", "b", "--management", "127.0.0.1",
                      "7505", "--management-hold", "--status", "st.txt", "5"])
    assert (cfg.device, cfg.dev_type, cfg.setenv) == ("tap7", "tap", {"A": "b"})
    assert cfg.management is not None and (cfg.management.port, cfg.management.hold) == (
        7505, True)
    assert cfg.status == str(tmp_path.resolve() / "st.txt") and cfg.status_interval == 5
    # openvpn FILE: one argument without -- is the config
    assert parse_argv(["c.conf"], cwd=tmp_path).remotes[0].port == 1195
    with pytest.raises(ConfigError, match=r"\[CMD-LINE\]: unsupported directive 'frob'"):
        parse_argv(["--cd", str(tmp_path), "--config", "c.conf", "--frob", "1"])
    with pytest.raises(ConfigError, match=r"'c\.conf' is not an option"):
        parse_argv(["c.conf", "--dev", "tap"])
    with pytest.raises(ConfigError, match=r"cd /nonexistent/dir: no such directory"):
        parse_argv(["--cd", "/nonexistent/dir"])


@pytest.mark.parametrize(("line", "kind"), [
    ("comp-lzo no", "lzo"), ("comp-lzo", "lzo"), ("compress", "stub"),
    ("compress stub", "stub"), ("compress stub-v2", "stub-v2"),
])
def test_compression_framing_directives(line: str, kind: str) -> None:
    cfg = parse(f"client\nremote a\n{line}\nallow-compression asym\n" + CREDS, "t")
    assert cfg.options.compress == kind
    assert bool(cfg.warnings) == (line == "comp-lzo")


def test_tls_verify_only_under_the_openvpn_command(tmp_path: Path) -> None:
    from tunconnector.config import Config

    ovpn = tmp_path / "v.ovpn"
    ovpn.write_text("client\nremote 192.0.2.9\nscript-security 2\ntls-verify ./v.sh\n"
                    + _pki())
    with pytest.raises(ConfigError, match=r"tls-verify runs under `tunconnector openvpn`"):
        Config.from_mapping({"tunnel": [{"name": "v", "openvpn_config": str(ovpn)}]})


def test_nice_goes_to_the_daemon() -> None:
    """openvpn's ``nice N``: the daemon's Config.nice (applied once up, see node.py)."""
    base = "client\nremote a\n<ca>\nx\n</ca>\n<cert>\nc\n</cert>\n<key>\nk\n</key>\n"
    assert parse(base + "nice -5\n", "t.ovpn").nice == -5
    assert parse(base, "t.ovpn").nice == 0
    with pytest.raises(ConfigError, match=r":12: nice must be within"):
        parse(base + "nice 20\n", "t.ovpn")
