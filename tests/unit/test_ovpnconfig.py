"""Reading standard OpenVPN client configs (.ovpn)."""

from __future__ import annotations

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
        ("client\nremote a\n<ca>\nx\n</ca>\ncomp-lzo\n", r":6: unsupported directive 'comp-lzo'"),
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
