"""Read a standard OpenVPN client config (``.ovpn``) and openvpn's command line.

The grammar is openvpn's (``options.c``: ``parse_line``, ``read_config_file``): words split
on whitespace, ``"double"`` quotes with ``\\`` escapes (``\\\\``, ``\\"``, ``\\ ``),
``'single'`` quotes taken literally, a ``#`` or ``;`` at the start of a word begins a
comment (so ``explicit-exit-notify # notify`` is one directive), a leading ``--`` is
dropped, ``<tag>`` ... ``</tag>`` blocks give a directive its file inline.
``setenv opt DIRECTIVE`` and ``ignore-unknown-option NAME...`` (and ``setenv
FORWARD_COMPATIBLE 1``) turn an unknown directive into a warning, as in openvpn.

Relative paths are resolved against the working directory, which ``cd DIR`` (``--cd``)
changes for everything that follows, as openvpn does; a file not found there is looked
for beside the config file (tunconnector's earlier rule, so a ``[[tunnel]]
openvpn_config`` whose daemon runs from ``/`` keeps working).

Pure: it reads the files the config names and does no network, device or process work
(``--cd`` is recorded in :attr:`OvpnConfig.cd`; the CLI changes directory). Every
directive is understood, listed in :data:`IGNORED` (accepted without effect, documented
in docs/openvpn.md), or refused with one :class:`ConfigError` naming the file, line and
directive: a silently dropped option could change what the user thinks the tunnel does.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, CryptoError
from .proto.openvpn.client import ClientOptions
from .proto.openvpn.datav2 import CIPHERS
from .proto.openvpn.grammar import split_line
from .proto.openvpn.tlsauth import digest_name, parse_static_key

DEFAULT_PORT = 1194
CMDLINE = "[CMD-LINE]"
#: how `tunconnector openvpn` registers the config it built from openvpn's command line
COMMAND_LINE_KEY = "openvpn-command-line:"

#: directives accepted without effect (client-side process or logging settings)
IGNORED = frozenset({
    "persist-key", "persist-tun", "persist-remote-ip", "persist-local-ip", "verb", "mute",
    "resolv-retry", "auth-nocache", "mute-replay-warnings", "connect-retry",
    "connect-retry-max", "server-poll-timeout", "float", "user", "group", "tls-client",
    "remote-cert-ku", "ncp-ciphers-dummy", "fast-io", "suppress-timestamps",
    "machine-readable-output", "ping-timer-rem", "push-peer-info",
})
#: directives whose file may come inline, as ``<tag>`` blocks
INLINE = ("ca", "cert", "key", "tls-auth", "tls-crypt", "auth-user-pass")
#: scripts openvpn runs (``script-security 2`` needed for anything but built-ins)
SCRIPTS = ("up", "down", "route-up", "route-pre-down", "ipchange", "tls-verify")
_PROTOS = {"udp": "udp", "udp4": "udp", "udp6": "udp", "tcp-client": "tcp", "tcp": "tcp",
           "tcp4-client": "tcp", "tcp6-client": "tcp", "tcp4": "tcp", "tcp6": "tcp"}
#: directives that set the one whole-number option of their name (tun-mtu: tun_mtu)
_NUMBER_OPTIONS = ("ping", "ping-restart", "hand-window", "tran-window", "tun-mtu")
#: the data channel's replay window (packets): tunconnector's ReplayWindow() default
REPLAY_WINDOW = 8128
#: nesting of ``config`` directives (openvpn's limit is 10)
MAX_DEPTH = 10

#: configs given as an already parsed object (the openvpn command line, see register())
_REGISTERED: dict[str, OvpnConfig] = {}


@dataclass(slots=True)
class Remote:
    host: str
    port: int
    proto: str


@dataclass(slots=True)
class Management:
    """``management HOST PORT [PWFILE]`` or ``management PATH unix [PWFILE]``."""

    address: str
    port: int | None  # None: a unix socket at ``address``
    password: str | None = None  # read from the password file
    hold: bool = False
    query_passwords: bool = False
    log_cache: int = 100
    client_user: str | None = None
    client_group: str | None = None

    @property
    def unix(self) -> bool:
        return self.port is None


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
    # process, scripts, management: effective under `tunconnector openvpn` (ovpn_process)
    cd: str | None = None
    config_files: list[str] = field(default_factory=list)
    daemon: bool = False
    daemon_name: str | None = None
    log: str | None = None
    log_append: bool = False
    writepid: str | None = None
    #: ``nice N``: added to the process's nice value once up (Config.nice)
    nice: int = 0
    status: str | None = None
    status_interval: int = 60
    script_security: int = 1
    scripts: dict[str, list[str]] = field(default_factory=dict)
    setenv: dict[str, str] = field(default_factory=dict)
    management: Management | None = None
    sndbuf: int = 0
    rcvbuf: int = 0
    replay_window: int = 64
    down_pre: bool = False  # run down before the device closes
    syslog: str | None = None  # syslog [NAME]: the log goes to syslog under NAME
    #: auth-user-pass without credentials, asked over the management interface
    #: (management-query-passwords): ``>PASSWORD:Need 'Auth' username/password``
    query_auth: bool = False
    #: non-fatal remarks (directives ignored through setenv opt / ignore-unknown-option)
    warnings: list[str] = field(default_factory=list)

    def check_tls(self) -> None:
        """Load the CA, certificate and key into a TLS context: PEM errors surface now."""
        from .proto.openvpn.tls import TlsContext, TlsSettings

        o = self.options
        TlsContext(TlsSettings(o.ca_pem, o.cert_pem, o.key_pem))

    def remote_list(self) -> list[Remote]:
        """Remotes with the config-wide port/proto filled in, in the order to try."""
        return [Remote(r.host, r.port or self.port, r.proto or self.proto)
                for r in self.remotes]


def register(key: str, cfg: OvpnConfig) -> None:
    """Make :func:`load` of ``key`` return ``cfg`` (a config built from openvpn's command
    line, with directives no file holds)."""
    _REGISTERED[key] = cfg


def load(path: str | Path) -> OvpnConfig:
    if str(path) in _REGISTERED:
        return copy.deepcopy(_REGISTERED[str(path)])
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read OpenVPN config: {exc.strerror or exc}") from None
    return parse(text, str(p), base=p.parent)


def parse(text: str, name: str = "<ovpn>", base: Path | None = None,
          cwd: Path | None = None) -> OvpnConfig:
    """Parse config ``text``; relative files: ``cwd`` (default: the process's), then
    ``base`` (the config's folder)."""
    parser = Parser(name, cwd=cwd)
    parser.feed_text(text, name, base or Path("."))
    return parser.finish()


def parse_argv(argv: Sequence[str], *, cwd: Path | None = None) -> OvpnConfig:
    """openvpn's command line: ``--directive ARGS...`` in order, ``--config FILE`` read
    where it stands, ``--cd DIR`` changing the directory for what follows. A single
    argument without ``--`` is a config file (``openvpn client.conf``)."""
    args = list(argv)
    if len(args) == 1 and not args[0].startswith("--"):
        args = ["--config", args[0]]
    parser = Parser(CMDLINE, cwd=cwd)
    i = 0
    while i < len(args):
        tok = args[i]
        if not tok.startswith("--") or len(tok) < 3:
            raise ConfigError(f"{CMDLINE}: '{tok}' is not an option (options start "
                              "with --)")
        words = [tok[2:]]
        i += 1
        while i < len(args) and not args[i].startswith("--"):
            words.append(args[i])
            i += 1
        parser.directive(words, CMDLINE, 0)
    return parser.finish()


class Parser:
    """Directives in, one :class:`OvpnConfig` out (:meth:`finish` checks the whole).

    The grammar, inline blocks, ``config``/``cd``/``setenv``/``ignore-unknown-option`` and
    file lookup are shared with the server config reader (ovpnserverconf.py), which
    subclasses this and hands it the directives both sides mean the same by."""

    #: directives whose file may come as a ``<tag>`` block
    INLINE_TAGS: tuple[str, ...] = INLINE

    def __init__(self, name: str, *, cwd: Path | None = None) -> None:
        self.name = name
        self.cfg = OvpnConfig(path=name)
        self.cwd = cwd or Path.cwd()
        self.base: Path | None = None  # folder of the config file being read
        self.materials: dict[str, tuple[str, str]] = {}  # directive -> (text, where)
        self.tls_auth_dir: int | None = None
        self.key_direction: int | None = None
        self.saw_client = self.saw_pull = False
        self.cipher: str | None = None
        self.data_ciphers: list[str] | None = None
        self.fallback: str | None = None
        self.ignore_unknown: set[str] = set()
        self.forward_compatible = False
        self.depth = 0
        self.mgmt_flags: set[str] = set()
        self.mgmt_log_cache = 100
        self.auth_user_pass_prompt: str | None = None  # where, if no file was given

    # -- input ------------------------------------------------------------------------
    def feed_text(self, text: str, name: str, base: Path) -> None:
        """The lines of one config file (``name`` is what messages call it)."""
        if self.depth >= MAX_DEPTH:
            raise ConfigError(f"{name}: config files nested more than {MAX_DEPTH} deep")
        self.depth += 1
        saved = self.base
        self.base = base
        if text.startswith("\ufeff"):
            text = text[1:]
        lines = text.splitlines()
        i = 0
        while i < len(lines):
            lineno = i + 1
            i += 1
            try:
                words = split_line(lines[i - 1])
            except ValueError as exc:
                raise ConfigError(f"{name}:{lineno}: {exc}") from None
            if not words:
                continue
            if words[0].startswith("--"):
                words[0] = words[0][2:]
            if len(words) == 1 and len(words[0]) > 2 and words[0][0] == "<" \
                    and words[0][-1] == ">":
                tag = words[0][1:-1]
                close = f"</{tag}>"
                body: list[str] = []
                while i < len(lines) and not lines[i].lstrip().startswith(close):
                    body.append(lines[i])
                    i += 1
                if i >= len(lines):
                    raise ConfigError(f"{name}:{lineno}: <{tag}> block without {close}")
                i += 1
                if tag not in self.INLINE_TAGS:
                    self._unknown(tag, f"{name}:{lineno}", inline=True)
                    continue
                self.materials[tag] = ("\n".join(body) + "\n", f"{name}:{lineno}")
                if tag == "auth-user-pass":
                    self._auth_user_pass(body, f"{name}:{lineno}")
                continue
            self.directive(words, name, lineno)
        self.depth -= 1
        self.base = saved

    def directive(self, words: list[str], name: str, lineno: int) -> None:
        where = f"{name}:{lineno}" if lineno else name
        self._directive(words, where, lenient=False)

    # -- helpers ----------------------------------------------------------------------
    def err(self, where: str, msg: str) -> ConfigError:
        return ConfigError(f"{where}: {msg}")

    def path(self, fname: str) -> Path:
        """Where a relative file is: the working directory, else beside the config."""
        fp = Path(fname)
        if fp.is_absolute():
            return fp
        first = self.cwd / fp
        if not first.exists() and self.base is not None and (self.base / fp).exists():
            return self.base / fp
        return first

    def read_file(self, fname: str, where: str, what: str) -> str:
        fp = self.path(fname)
        try:
            return fp.read_text()
        except OSError as exc:
            raise self.err(where, f"{what} {fname}: {exc.strerror or exc}") from None

    def _unknown(self, d: str, where: str, *, inline: bool = False,
                 lenient: bool = False) -> None:
        if lenient or d in self.ignore_unknown or self.forward_compatible:
            self.cfg.warnings.append(f"{where}: unsupported directive '{d}' ignored")
            return
        what = f"inline block <{d}>" if inline else f"directive '{d}'"
        raise self.err(where, f"unsupported {what} (see docs/openvpn.md for the "
                              "supported and ignored ones)")

    def _auth_user_pass(self, creds: list[str], where: str) -> None:
        creds = [c.rstrip("\r") for c in creds]
        if len(creds) < 2 or not creds[0]:
            raise self.err(where, "auth-user-pass needs a username line and a password "
                                  "line")
        o = self.cfg.options
        o.username, o.password = creds[0], creds[1]
        self.auth_user_pass_prompt = None

    # -- one directive ----------------------------------------------------------------
    def _directive(self, words: list[str], where: str, *, lenient: bool) -> None:  # noqa: C901
        cfg, o = self.cfg, self.cfg.options
        d = words[0]
        args = words[1:]

        def need(n: int, most: int | None = None) -> None:
            if len(args) < n:
                raise self.err(where, f"'{d}' needs {n} argument(s)")
            if most is not None and len(args) > most:
                raise self.err(where, f"'{d}' takes at most {most} argument(s)")

        def number(word: str, what: str) -> int:
            try:
                return int(word)
            except ValueError:
                raise self.err(where, f"{what}: {word!r} is not a number") from None

        if d in IGNORED:
            return
        if d == "config":
            need(1, 1)
            fp = self.path(args[0])
            try:
                text = fp.read_text()
            except OSError as exc:
                raise self.err(where, f"config {args[0]}: {exc.strerror or exc}") from None
            cfg.config_files.append(str(fp))
            if cfg.path in (CMDLINE, "<ovpn>"):
                cfg.path = args[0]
            self.feed_text(text, args[0], fp.parent)
        elif d == "cd":
            need(1, 1)
            new = self.path(args[0]) if not Path(args[0]).is_absolute() else Path(args[0])
            if not new.is_dir():
                raise self.err(where, f"cd {args[0]}: no such directory")
            self.cwd = new.resolve()
            cfg.cd = str(self.cwd)
        elif d == "setenv":
            need(1)
            if args[0] == "opt":
                need(2)
                self._directive(args[1:], where, lenient=True)
                return
            if args[0] == "FORWARD_COMPATIBLE":
                self.forward_compatible = len(args) > 1 and args[1] == "1"
            cfg.setenv[args[0]] = " ".join(args[1:2])
        elif d == "setenv-safe":
            need(1)
            cfg.setenv["OPENVPN_" + args[0]] = " ".join(args[1:2])
        elif d == "ignore-unknown-option":
            need(1)
            self.ignore_unknown.update(args)
        elif d == "client":
            self.saw_client = True
        elif d == "pull":
            self.saw_pull = True
        elif d == "dev":
            need(1, 1)
            m2 = re.fullmatch(r"(tun|tap)(\d*)", args[0])
            if m2 is None:
                # a named device: its type comes from dev-type
                cfg.device = args[0]
            else:
                cfg.dev_type = m2.group(1)
                cfg.device = args[0] if m2.group(2) else None
        elif d == "dev-type":
            need(1, 1)
            if args[0] not in ("tun", "tap"):
                raise self.err(where, f"dev-type must be tun or tap, got {args[0]!r}")
            cfg.dev_type = args[0]
        elif d == "proto":
            need(1, 1)
            if args[0] not in _PROTOS:
                raise self.err(where, f"proto {args[0]!r} is not a client protocol "
                                      f"(one of {', '.join(_PROTOS)})")
            cfg.proto = _PROTOS[args[0]]
        elif d == "remote":
            need(1, 3)
            port = number(args[1], "remote port") if len(args) > 1 else 0
            rproto = ""
            if len(args) > 2:
                if args[2] not in _PROTOS:
                    raise self.err(where, f"remote protocol {args[2]!r} is not supported")
                rproto = _PROTOS[args[2]]
            cfg.remotes.append(Remote(args[0], port, rproto))
        elif d == "remote-random":
            cfg.remote_random = True
        elif d in ("port", "rport"):
            need(1, 1)
            cfg.port = number(args[0], d)
        elif d == "nobind":
            cfg.nobind = True
        elif d == "auth-user-pass":
            if not args or args[0] == "[inline]":
                if "auth-user-pass" not in self.materials:
                    self.auth_user_pass_prompt = where
                return
            creds = self.read_file(args[0], where, "auth-user-pass").splitlines()
            if len(creds) < 2:
                raise self.err(where, f"auth-user-pass {args[0]}: needs a username line "
                                      "and a password line")
            self._auth_user_pass(creds, where)
        elif d in INLINE:
            need(1, 2)
            if args[0] != "[inline]":
                self.materials[d] = (self.read_file(args[0], where, d), where)
            if d == "tls-auth" and len(args) > 1:
                self.tls_auth_dir = number(args[1], "tls-auth direction")
        elif d == "key-direction":
            need(1, 1)
            self.key_direction = number(args[0], "key-direction")
            if self.key_direction not in (0, 1):
                raise self.err(where, "key-direction must be 0 or 1")
        elif d == "remote-cert-tls":
            need(1, 1)
            if args[0] != "server":
                raise self.err(where, "a client can only check remote-cert-tls server")
            o.remote_cert_tls = "server"
        elif d == "verify-x509-name":
            need(1, 2)
            kind = args[1] if len(args) > 1 else "subject"
            if kind not in ("subject", "name", "name-prefix"):
                raise self.err(where, f"verify-x509-name type {kind!r} is not subject, "
                                      "name or name-prefix")
            o.verify_x509_name = (args[0], kind)
        elif d in ("data-ciphers", "ncp-ciphers"):
            need(1, 1)
            self.data_ciphers = [c.upper() for c in args[0].split(":") if c]
        elif d == "data-ciphers-fallback":
            need(1, 1)
            self.fallback = args[0].upper()
        elif d == "cipher":
            need(1, 1)
            self.cipher = args[0].upper()
        elif d == "auth":
            need(1, 1)
            try:
                digest_name(args[0])
            except CryptoError as exc:
                raise self.err(where, str(exc)) from None
            o.auth = args[0].upper()
        elif d == "keepalive":
            need(2, 2)
            o.ping = number(args[0], "keepalive")
            o.ping_restart = number(args[1], "keepalive")
        elif d in _NUMBER_OPTIONS:
            need(1, 1)
            setattr(o, d.replace("-", "_"), number(args[0], d))
        elif d == "reneg-sec":
            need(1, 2)
            o.reneg_sec = number(args[0], "reneg-sec")
            if o.reneg_sec <= 0:
                o.reneg_sec = 10**9  # 0 disables renegotiation by time
        elif d == "tls-version-min":
            need(1, 2)
            if args[0] not in ("1.2", "1.3"):
                raise self.err(where, "tls-version-min must be 1.2 or 1.3")
            o.tls_version_min = args[0]
        elif d == "explicit-exit-notify":
            need(0, 1)
            o.explicit_exit_notify = number(args[0], d) if args else 1
        # -- process, logging, scripts ---------------------------------------------------
        elif d == "daemon":
            need(0, 1)
            cfg.daemon = True
            cfg.daemon_name = args[0] if args else None
        elif d in ("log", "log-append"):
            need(1, 1)
            cfg.log = str(self.path(args[0]))
            cfg.log_append = d == "log-append"
        elif d == "writepid":
            need(1, 1)
            cfg.writepid = str(self.path(args[0]))
        elif d == "nice":
            need(1, 1)
            cfg.nice = number(args[0], "nice")
            if not -20 <= cfg.nice <= 19:
                raise self.err(where, "nice must be within -20..19")
        elif d == "status":
            need(1, 2)
            cfg.status = str(self.path(args[0]))
            if len(args) > 1:
                cfg.status_interval = number(args[1], "status interval")
                if cfg.status_interval < 1:
                    raise self.err(where, "status interval must be at least 1 second")
        elif d == "status-version":
            need(0, 1)  # a client's status has one format (openvpn: same for 1, 2, 3)
            if args and args[0] not in ("1", "2", "3"):
                raise self.err(where, "status-version must be 1, 2 or 3")
        elif d == "script-security":
            need(1, 2)
            cfg.script_security = number(args[0], "script-security")
            if not 0 <= cfg.script_security <= 3:
                raise self.err(where, "script-security must be 0, 1, 2 or 3")
            if len(args) > 1 and args[1] != "execve":
                raise self.err(where, f"script-security method {args[1]!r}: only execve")
        elif d in SCRIPTS:
            need(1, 1)
            argv = args[0].split()
            if not argv:
                raise self.err(where, f"'{d}' needs a command")
            cfg.scripts[d] = argv
        elif d in ("sndbuf", "rcvbuf"):
            need(1, 1)
            n = number(args[0], d)
            if n < 0:
                raise self.err(where, f"{d} must not be negative")
            setattr(cfg, d, n)
        elif d == "replay-window":
            need(1, 2)
            n = number(args[0], "replay-window")
            if len(args) > 1:
                number(args[1], "replay-window time")
            if not 1 <= n <= 65536:
                raise self.err(where, "replay-window must be 1..65536 packets")
            cfg.replay_window = n
            if n > REPLAY_WINDOW:
                cfg.warnings.append(f"{where}: replay-window {n}: tunconnector's window "
                                    f"is {REPLAY_WINDOW} packets")
        elif d in ("comp-lzo", "compress"):
            need(0, 1)
            from .proto.openvpn.compress import from_option

            try:
                o.compress = from_option(words)
            except ValueError as exc:
                raise self.err(where, str(exc)) from None
            if d == "comp-lzo" and (args[:1] or ["adaptive"])[0] != "no":
                cfg.warnings.append(f"{where}: comp-lzo {(args or ['adaptive'])[0]}: "
                                    "framed as 'comp-lzo no' (tunconnector never "
                                    "compresses; compressed packets are dropped)")
        elif d == "block-outside-dns":
            cfg.warnings.append(f"{where}: block-outside-dns: Windows only, no effect here")
        elif d == "auth-retry":
            need(1, 1)
            if args[0] not in ("none", "nointeract", "interact"):
                raise self.err(where, "auth-retry must be none, nointeract or interact")
            if args[0] != "none":
                cfg.warnings.append(f"{where}: auth-retry {args[0]}: AUTH_FAILED stops the "
                                    "client (tunconnector behaves as auth-retry none)")
        elif d == "syslog":
            need(0, 1)
            cfg.syslog = args[0] if args else "openvpn"
        elif d == "tun-mtu-extra":
            need(1, 1)
            o.tun_mtu_extra = number(args[0], "tun-mtu-extra")
            if not 0 <= o.tun_mtu_extra <= 1024:
                raise self.err(where, "tun-mtu-extra must be 0..1024")
        elif d == "down-pre":
            cfg.down_pre = True
        elif d == "mssfix":
            need(0, 2)
            o.mssfix, o.mssfix_encap, o.mssfix_fixed = 1492, True, False
            if args:
                o.mssfix = number(args[0], "mssfix")
                if not 0 <= o.mssfix <= 65535:
                    raise self.err(where, "mssfix must be 0..65535")
                o.mssfix_encap = False  # a value: encapsulation not counted unless 'mtu'
            if len(args) > 1:
                if args[1] not in ("mtu", "fixed"):
                    raise self.err(where, f"mssfix {args[1]!r}: 'mtu' or 'fixed'")
                o.mssfix_encap = args[1] == "mtu"
                o.mssfix_fixed = args[1] == "fixed"
        elif d == "pull-filter":
            need(2, 2)
            if args[0] not in ("accept", "ignore", "reject"):
                raise self.err(where, "pull-filter action must be accept, ignore or reject")
            o.pull_filters.append((args[0], args[1]))
        elif d == "route-nopull":
            o.route_nopull = True
        elif d == "route":
            need(1, 4)
            try:
                import ipaddress

                ipaddress.IPv4Network(f"{args[0]}/{args[1] if len(args) > 1 else '32'}",
                                      strict=False)
                for gw in args[2:3]:
                    if gw not in ("vpn_gateway", "net_gateway", "default"):
                        ipaddress.IPv4Address(gw)
            except ValueError as exc:
                raise self.err(where, f"route: {exc}") from None
            if args[2:3] == ["net_gateway"]:
                raise self.err(where, "route ... net_gateway: not implemented (routes go "
                                      "through the tunnel)")
            o.routes.append(["route", *args[:3]])
        elif d == "route-ipv6":
            need(1, 3)
            try:
                import ipaddress

                ipaddress.IPv6Network(args[0], strict=False)
            except ValueError as exc:
                raise self.err(where, f"route-ipv6: {exc}") from None
            o.routes.append(["route-ipv6", *args[:2]])
        elif d == "allow-compression":
            need(1, 1)
            if args[0] == "yes":
                raise self.err(where, "allow-compression yes: real compression is not "
                                      "supported (no, asym: accepted, nothing compressed)")
            if args[0] not in ("no", "asym"):
                raise self.err(where, "allow-compression must be yes, no or asym")
        elif d == "management":
            need(2, 3)
            if args[1] == "unix":
                mg = Management(str(self.path(args[0])), None)
            else:
                port = number(args[1], "management port")
                if not 0 < port < 65536:
                    raise self.err(where, f"management port {port} out of range")
                mg = Management(args[0], port)
            if len(args) > 2:
                pw = self.read_file(args[2], where, "management password file")
                mg.password = pw.splitlines()[0] if pw.strip() else ""
            cfg.management = mg
        elif d in ("management-hold", "management-query-passwords", "management-signal",
                   "management-forget-disconnect", "management-up-down"):
            self.mgmt_flags.add(d)
        elif d == "management-log-cache":
            need(1, 1)
            self.mgmt_log_cache = number(args[0], d)
        else:
            self._unknown(d, where, lenient=lenient)

    # -- the whole --------------------------------------------------------------------
    def finish_process(self) -> None:
        """The process side both configs share: management flags, scripts' security."""
        cfg, name = self.cfg, self.cfg.path
        if cfg.management is not None:
            cfg.management.hold = "management-hold" in self.mgmt_flags
            cfg.management.query_passwords = "management-query-passwords" in self.mgmt_flags
            cfg.management.log_cache = self.mgmt_log_cache
        elif self.mgmt_flags:
            raise ConfigError(f"{name}: {', '.join(sorted(self.mgmt_flags))} without "
                              "'management'")
        if cfg.scripts and cfg.script_security < 2:
            cfg.warnings.append(
                f"{name}: {', '.join(cfg.scripts)} not run: external programs need "
                "'script-security 2' or higher (as openvpn)")

    def data_ciphers_and_fallback(self, auth: str) -> tuple[tuple[str, ...], str | None]:
        """``data-ciphers`` (those tunconnector has) and the fallback: ``cipher`` joins
        data-ciphers and serves as the fallback, as in OpenVPN 2.6."""
        name = self.cfg.path
        ciphers = self.data_ciphers or ["AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305"]
        if self.cipher and self.cipher not in ciphers:
            ciphers.append(self.cipher)
        fallback = self.fallback or self.cipher
        usable = [c for c in ciphers if c in CIPHERS]
        if not usable:
            raise ConfigError(f"{name}: none of the data ciphers {':'.join(ciphers)} is "
                              f"supported ({', '.join(CIPHERS)})")
        from .proto.openvpn.datav2 import CBC_CIPHERS
        from .proto.openvpn.static import DIGESTS

        if (set(usable) | {fallback}) & CBC_CIPHERS and auth not in DIGESTS:
            raise ConfigError(f"{name}: auth {auth} with a CBC data cipher: one of "
                              f"{', '.join(d for d in DIGESTS if d != 'none')}")
        return tuple(usable), fallback if fallback in CIPHERS else None

    def finish(self) -> OvpnConfig:  # noqa: C901
        cfg, o, name = self.cfg, self.cfg.options, self.cfg.path
        self.finish_process()
        if not (self.saw_client or self.saw_pull):
            raise ConfigError(f"{name}: not a client config ('client' or 'pull' missing): "
                              "tunconnector only joins servers that push the configuration")
        if not cfg.remotes:
            raise ConfigError(f"{name}: no 'remote'")
        o.data_ciphers, o.cipher_fallback = self.data_ciphers_and_fallback(o.auth)
        o.tap = cfg.dev_type == "tap"
        o.proto = cfg.remote_list()[0].proto
        if self.auth_user_pass_prompt is not None and o.username is None:
            if cfg.management is None or not cfg.management.query_passwords:
                raise ConfigError(f"{self.auth_user_pass_prompt}: auth-user-pass needs a "
                                  "file, an <auth-user-pass> block or "
                                  "management-query-passwords (tunconnector does not prompt "
                                  "on the terminal)")
            cfg.query_auth = True
        materials = self.materials
        ca = materials.get("ca")
        if ca is None:
            raise ConfigError(f"{name}: no 'ca' (the CA that signs the server certificate)")
        o.ca_pem = ca[0].encode()
        cert, key = materials.get("cert"), materials.get("key")
        if (cert is None) != (key is None):
            raise ConfigError(f"{name}: 'cert' and 'key' go together")
        if cert is not None and key is not None:
            o.cert_pem, o.key_pem = cert[0].encode(), key[0].encode()
        elif o.username is None and not cfg.query_auth:
            raise ConfigError(f"{name}: no client certificate ('cert'/'key') and no "
                              "'auth-user-pass'")
        for tag in ("tls-auth", "tls-crypt"):
            got = materials.get(tag)
            if got is None:
                continue
            try:
                key_bytes = parse_static_key(got[0])
            except CryptoError as exc:
                raise ConfigError(f"{got[1]}: {tag}: {exc}") from None
            if tag == "tls-auth":
                o.tls_auth = key_bytes
                o.key_direction = (self.tls_auth_dir if self.tls_auth_dir is not None
                                   else self.key_direction)
            else:
                o.tls_crypt = key_bytes
        if o.tls_auth is not None and o.tls_crypt is not None:
            raise ConfigError(f"{name}: 'tls-auth' and 'tls-crypt' exclude each other")
        return cfg


def directive_names() -> Iterable[str]:
    """Every directive name this parser knows (for docs and tests)."""
    return sorted(IGNORED | set(INLINE) | set(SCRIPTS))
