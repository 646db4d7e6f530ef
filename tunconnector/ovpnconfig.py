"""Read a standard OpenVPN client config (``.ovpn``) into what the TLS client needs.

Pure: it reads the files the config names (relative to the config's directory) and the
inline ``<ca>``/``<cert>``/``<key>``/``<tls-auth>``/``<tls-crypt>`` blocks, and does no
network or device work. Every directive is either understood, listed in :data:`IGNORED`
(accepted without effect, documented in docs/openvpn.md), or refused with one
:class:`ConfigError` naming the directive and its line: a silently dropped option could
change what the user thinks the tunnel does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, CryptoError
from .proto.openvpn.client import ClientOptions
from .proto.openvpn.datav2 import CIPHERS
from .proto.openvpn.tlsauth import digest_name, parse_static_key

DEFAULT_PORT = 1194

#: directives accepted without effect (client-side process or logging settings)
IGNORED = frozenset({
    "persist-key", "persist-tun", "persist-remote-ip", "persist-local-ip", "verb", "mute",
    "resolv-retry", "auth-nocache", "mute-replay-warnings", "connect-retry",
    "connect-retry-max", "server-poll-timeout", "float", "user", "group", "tls-client",
    "remote-cert-ku", "ncp-ciphers-dummy",
})
INLINE = ("ca", "cert", "key", "tls-auth", "tls-crypt")
_PROTOS = {"udp": "udp", "udp4": "udp", "udp6": "udp", "tcp-client": "tcp", "tcp": "tcp",
           "tcp4-client": "tcp", "tcp6-client": "tcp", "tcp4": "tcp", "tcp6": "tcp"}


@dataclass(slots=True)
class Remote:
    host: str
    port: int
    proto: str


@dataclass(slots=True)
class OvpnConfig:
    path: str
    dev_type: str = "tun"
    device: str | None = None
    remotes: list[Remote] = field(default_factory=list)
    remote_random: bool = False
    proto: str = "udp"
    port: int = DEFAULT_PORT
    nobind: bool = False
    options: ClientOptions = field(default_factory=lambda: ClientOptions(ca_pem=b""))

    def check_tls(self) -> None:
        """Load the CA, certificate and key into a TLS context: PEM errors surface now."""
        from .proto.openvpn.tls import TlsContext, TlsSettings

        o = self.options
        TlsContext(TlsSettings(o.ca_pem, o.cert_pem, o.key_pem))

    def remote_list(self) -> list[Remote]:
        """Remotes with the config-wide port/proto filled in, in the order to try."""
        return [Remote(r.host, r.port or self.port, r.proto or self.proto)
                for r in self.remotes]


def _split(line: str) -> list[str]:
    """Words of a config line; double quotes group, as in OpenVPN."""
    return [m.group(1) if m.group(1) is not None else m.group(2)
            for m in re.finditer(r'"([^"]*)"|(\S+)', line)]


def load(path: str | Path) -> OvpnConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read OpenVPN config: {exc.strerror or exc}") from None
    return parse(text, str(p), base=p.parent)


def parse(text: str, name: str = "<ovpn>", base: Path | None = None) -> OvpnConfig:
    base = base or Path(".")
    cfg = OvpnConfig(path=name)
    o = cfg.options
    materials: dict[str, tuple[str, int]] = {}  # directive -> (text, line)
    tls_auth_dir: int | None = None
    key_direction: int | None = None
    saw_client = saw_pull = False
    cipher: str | None = None
    data_ciphers: list[str] | None = None
    fallback: str | None = None
    lines = text.splitlines()
    i = 0

    def err(lineno: int, msg: str) -> ConfigError:
        return ConfigError(f"{name}:{lineno}: {msg}")

    def read_file(fname: str, lineno: int, what: str) -> str:
        fp = Path(fname)
        if not fp.is_absolute():
            fp = base / fp
        try:
            return fp.read_text()
        except OSError as exc:
            raise err(lineno, f"{what} {fname}: {exc.strerror or exc}") from None

    def need(words: list[str], n: int, lineno: int) -> None:
        if len(words) < n + 1:
            raise err(lineno, f"'{words[0]}' needs {n} argument(s)")

    def number(word: str, lineno: int, what: str) -> int:
        try:
            return int(word)
        except ValueError:
            raise err(lineno, f"{what}: {word!r} is not a number") from None

    while i < len(lines):
        lineno = i + 1
        line = lines[i].strip()
        i += 1
        if not line or line[0] in "#;":
            continue
        m = re.fullmatch(r"<([A-Za-z-]+)>", line)
        if m:
            tag = m.group(1)
            if tag not in INLINE:
                raise err(lineno, f"unsupported inline block <{tag}>")
            body: list[str] = []
            while i < len(lines) and lines[i].strip() != f"</{tag}>":
                body.append(lines[i])
                i += 1
            if i >= len(lines):
                raise err(lineno, f"<{tag}> block without </{tag}>")
            i += 1
            materials[tag] = ("\n".join(body) + "\n", lineno)
            continue
        words = _split(line)
        d = words[0].lstrip("-")
        words[0] = d
        args = words[1:]
        if d in IGNORED:
            continue
        if d == "client":
            saw_client = True
        elif d == "pull":
            saw_pull = True
        elif d == "dev":
            need(words, 1, lineno)
            m2 = re.fullmatch(r"(tun|tap)(\d*)", args[0])
            if m2 is None:
                # a named device: its type comes from dev-type
                cfg.device = args[0]
            else:
                cfg.dev_type = m2.group(1)
                cfg.device = args[0] if m2.group(2) else None
        elif d == "dev-type":
            need(words, 1, lineno)
            if args[0] not in ("tun", "tap"):
                raise err(lineno, f"dev-type must be tun or tap, got {args[0]!r}")
            cfg.dev_type = args[0]
        elif d == "proto":
            need(words, 1, lineno)
            if args[0] not in _PROTOS:
                raise err(lineno, f"proto {args[0]!r} is not a client protocol "
                                  f"(one of {', '.join(_PROTOS)})")
            cfg.proto = _PROTOS[args[0]]
        elif d == "remote":
            need(words, 1, lineno)
            port = number(args[1], lineno, "remote port") if len(args) > 1 else 0
            rproto = ""
            if len(args) > 2:
                if args[2] not in _PROTOS:
                    raise err(lineno, f"remote protocol {args[2]!r} is not supported")
                rproto = _PROTOS[args[2]]
            cfg.remotes.append(Remote(args[0], port, rproto))
        elif d == "remote-random":
            cfg.remote_random = True
        elif d in ("port", "rport"):
            need(words, 1, lineno)
            cfg.port = number(args[0], lineno, d)
        elif d == "nobind":
            cfg.nobind = True
        elif d in INLINE:
            need(words, 1, lineno)
            if args[0] == "[inline]":
                pass
            else:
                materials[d] = (read_file(args[0], lineno, d), lineno)
            if d == "tls-auth" and len(args) > 1:
                tls_auth_dir = number(args[1], lineno, "tls-auth direction")
        elif d == "key-direction":
            need(words, 1, lineno)
            key_direction = number(args[0], lineno, "key-direction")
            if key_direction not in (0, 1):
                raise err(lineno, "key-direction must be 0 or 1")
        elif d == "remote-cert-tls":
            need(words, 1, lineno)
            if args[0] != "server":
                raise err(lineno, "a client can only check remote-cert-tls server")
            o.remote_cert_tls = "server"
        elif d == "verify-x509-name":
            need(words, 1, lineno)
            kind = args[1] if len(args) > 1 else "subject"
            if kind not in ("subject", "name", "name-prefix"):
                raise err(lineno, f"verify-x509-name type {kind!r} is not subject, name or "
                                  "name-prefix")
            o.verify_x509_name = (args[0], kind)
        elif d in ("data-ciphers", "ncp-ciphers"):
            need(words, 1, lineno)
            data_ciphers = [c.upper() for c in args[0].split(":") if c]
        elif d == "data-ciphers-fallback":
            need(words, 1, lineno)
            fallback = args[0].upper()
        elif d == "cipher":
            need(words, 1, lineno)
            cipher = args[0].upper()
        elif d == "auth":
            need(words, 1, lineno)
            try:
                digest_name(args[0])
            except CryptoError as exc:
                raise err(lineno, str(exc)) from None
            o.auth = args[0].upper()
        elif d == "keepalive":
            need(words, 2, lineno)
            o.ping = number(args[0], lineno, "keepalive")
            o.ping_restart = number(args[1], lineno, "keepalive")
        elif d == "ping":
            need(words, 1, lineno)
            o.ping = number(args[0], lineno, "ping")
        elif d == "ping-restart":
            need(words, 1, lineno)
            o.ping_restart = number(args[0], lineno, "ping-restart")
        elif d == "reneg-sec":
            need(words, 1, lineno)
            o.reneg_sec = number(args[0], lineno, "reneg-sec")
            if o.reneg_sec <= 0:
                o.reneg_sec = 10**9  # 0 disables renegotiation by time
        elif d == "hand-window":
            need(words, 1, lineno)
            o.hand_window = number(args[0], lineno, "hand-window")
        elif d == "tran-window":
            need(words, 1, lineno)
            o.tran_window = number(args[0], lineno, "tran-window")
        elif d == "tun-mtu":
            need(words, 1, lineno)
            o.tun_mtu = number(args[0], lineno, "tun-mtu")
        elif d == "tls-version-min":
            need(words, 1, lineno)
            if args[0] not in ("1.2", "1.3"):
                raise err(lineno, "tls-version-min must be 1.2 or 1.3")
            o.tls_version_min = args[0]
        elif d == "auth-user-pass":
            if not args:
                raise err(lineno, "auth-user-pass needs a file (tunconnector does not prompt)")
            creds = read_file(args[0], lineno, "auth-user-pass").splitlines()
            if len(creds) < 2:
                raise err(lineno, f"auth-user-pass {args[0]}: needs a username line and a "
                                  "password line")
            o.username, o.password = creds[0], creds[1]
        elif d == "explicit-exit-notify":
            o.explicit_exit_notify = number(args[0], lineno, d) if args else 1
        else:
            raise err(lineno, f"unsupported directive '{d}' (see docs/openvpn.md for the "
                              "supported and ignored ones)")

    if not (saw_client or saw_pull):
        raise ConfigError(f"{name}: not a client config ('client' or 'pull' missing): "
                          "tunconnector only joins servers that push the configuration")
    if not cfg.remotes:
        raise ConfigError(f"{name}: no 'remote'")
    # ciphers: cipher joins data-ciphers and serves as the fallback, as in OpenVPN 2.6
    ciphers = data_ciphers or ["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"]
    if cipher and cipher not in ciphers:
        ciphers.append(cipher)
    fallback = fallback or cipher
    usable = [c for c in ciphers if c in CIPHERS]
    if not usable:
        raise ConfigError(f"{name}: none of the data ciphers {':'.join(ciphers)} is supported "
                          f"({', '.join(CIPHERS)})")
    o.data_ciphers = tuple(usable)
    o.cipher_fallback = fallback if fallback in CIPHERS else None
    o.tap = cfg.dev_type == "tap"
    o.proto = cfg.remote_list()[0].proto

    def material(tag: str) -> tuple[str, int] | None:
        return materials.get(tag)

    ca = material("ca")
    if ca is None:
        raise ConfigError(f"{name}: no 'ca' (the CA that signs the server certificate)")
    o.ca_pem = ca[0].encode()
    cert, key = material("cert"), material("key")
    if (cert is None) != (key is None):
        raise ConfigError(f"{name}: 'cert' and 'key' go together")
    if cert is not None and key is not None:
        o.cert_pem, o.key_pem = cert[0].encode(), key[0].encode()
    elif o.username is None:
        raise ConfigError(f"{name}: no client certificate ('cert'/'key') and no "
                          "'auth-user-pass'")
    for tag in ("tls-auth", "tls-crypt"):
        got = material(tag)
        if got is None:
            continue
        try:
            key_bytes = parse_static_key(got[0])
        except CryptoError as exc:
            raise err(got[1], f"{tag}: {exc}") from None
        if tag == "tls-auth":
            o.tls_auth = key_bytes
            o.key_direction = tls_auth_dir if tls_auth_dir is not None else key_direction
        else:
            o.tls_crypt = key_bytes
    if o.tls_auth is not None and o.tls_crypt is not None:
        raise ConfigError(f"{name}: 'tls-auth' and 'tls-crypt' exclude each other")
    return cfg
