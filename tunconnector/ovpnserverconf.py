"""Read a standard openvpn 2.6 *server* config into :class:`ServerConfig`.

The protocol settings go into the sans-I/O :class:`~.proto.openvpn.server.ServerOptions`
(files and inline blocks already read, the ``client-config-dir`` already parsed); what
only the process around it needs (sockets, device, scripts, status file, management,
the pool's persist file) stays beside it in :class:`ServerConfig`.

The grammar, ``<tag>`` blocks, ``config``/``cd``/``setenv``/``ignore-unknown-option``
and relative file lookup are the client reader's (:class:`~.ovpnconfig.Parser`, which
this subclasses); directives that mean the same on both sides (``ca``, ``tls-auth``,
``data-ciphers``, ``reneg-sec``, ``log``, ``status``, ``management`` ...) are handed to
it unchanged. Each directive is understood, listed in :data:`IGNORED` with the reason,
or refused with a :class:`~.errors.ConfigError` naming the file and line.

openvpn semantics kept on purpose:

- ``topology``: openvpn 2.6 defaults to ``net30`` (2.7 to ``subnet``), so a config
  without it gets net30 here too, set explicitly on the options (whose own default is
  subnet), with a warning.
- ``server``, ``server-ipv6``, ``server-bridge IP MASK START END`` expand as openvpn's
  ``helper_client_server`` (servernet.py); ``keepalive A B`` as ``helper_keepalive``
  (pushed ``ping A`` / ``ping-restart B``, the server restarts after 2 * B); no
  ``keepalive``: no pings at all, as openvpn.
- ``verify-client-cert none|optional`` and ``username-as-common-name`` need
  ``auth-user-pass-verify``; ``ccd-exclusive`` needs ``client-config-dir``;
  ``auth-gen-token`` needs a finite ``reneg-sec``: openvpn refuses those too.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError, CryptoError
from .ovpnconfig import DEFAULT_PORT, INLINE, SCRIPTS, Management, Parser, split_line
from .proto.openvpn.ccd import ClientConfig, parse_client_config
from .proto.openvpn.server import ServerOptions
from .proto.openvpn.servernet import TOPOLOGIES, ServerNet, expand_server
from .proto.openvpn.tlsauth import parse_static_key

#: directives openvpn accepts that change nothing here, and why (one place)
IGNORED: dict[str, str] = {
    "persist-key": "keys are read once at start; tunconnector does not re-read them on "
                   "a restart (what persist-key asks openvpn not to do)",
    "persist-tun": "the device stays open for the daemon's life (what persist-tun asks)",
    "verb": "log verbosity: the log level is tunconnector's --log-level",
    "mute": "log rate limiting: tunconnector logs one line per state change",
    "mute-replay-warnings": "replays are counted (metrics), not logged",
    "suppress-timestamps": "log format: the logger adds its own",
    "machine-readable-output": "log format: the logger adds its own",
    "fast-io": "a hint for openvpn's poll loop; the asyncio loop has none",
    "tun-ipv6": "obsolete since openvpn 2.4: IPv6 is always on",
    "ping-timer-rem": "only acts with a remote, which a server has none of",
    "float": "a server always lets an authenticated client float (by its peer-id)",
}
#: ``<tag>`` blocks a server config may hold
SERVER_INLINE = ("ca", "cert", "key", "tls-auth", "tls-crypt", "dh", "crl-verify",
                 "auth-gen-token-secret")
#: directives the client reader handles with the same meaning on a server
SHARED = frozenset({
    "config", "cd", "setenv", "setenv-safe", "ignore-unknown-option", "dev", "dev-type",
    "port", "key-direction", "data-ciphers", "ncp-ciphers", "data-ciphers-fallback",
    "cipher", "auth", "reneg-sec", "hand-window", "tran-window", "tun-mtu",
    "tun-mtu-extra", "tls-version-min", "explicit-exit-notify", "daemon", "log",
    "log-append", "writepid", "nice", "status", "script-security", "sndbuf", "rcvbuf",
    "replay-window", "syslog", "mssfix", "allow-compression", "management",
    "management-hold", "management-query-passwords", "management-signal",
    "management-forget-disconnect", "management-up-down", "management-log-cache",
    "down-pre", *INLINE, *SCRIPTS,
}) - {"auth-user-pass", "ipchange"}
#: scripts only a server runs (openvpn's arguments and environment: ovpn_scripts.py)
SERVER_SCRIPTS = ("client-connect", "client-disconnect", "learn-address")
#: ``proto`` values of a server: udp or tcp, and the address family when one is forced
_PROTOS: dict[str, tuple[str, int | None]] = {
    "udp": ("udp", None), "udp4": ("udp", 4), "udp6": ("udp", 6),
    "tcp-server": ("tcp", None), "tcp4-server": ("tcp", 4), "tcp6-server": ("tcp", 6),
    "tcp": ("tcp", None), "tcp4": ("tcp", 4), "tcp6": ("tcp", 6),
}
#: ``--genkey auth-token``'s file: a PEM of openvpn's ``struct key`` (64 bytes cipher,
#: 64 bytes HMAC key); the token HMAC-SHA256 takes the first 32 of the HMAC half
_AUTH_TOKEN_PEM = re.compile(
    r"-----BEGIN OpenVPN auth-token server key-----(.*?)"
    r"-----END OpenVPN auth-token server key-----", re.S)
_DH_PEM = re.compile(r"-----BEGIN ((?:X9\.42 )?DH PARAMETERS)-----(.*?)-----END \1-----",
                     re.S)


class ServerConfigError(ConfigError):
    """A server config openvpn 2.6 would refuse, or that tunconnector cannot serve."""


@dataclass(slots=True)
class ServerConfig:
    """A server config: the protocol side (``options``) and the process around it."""

    path: str
    options: ServerOptions
    dev_type: str = "tun"
    device: str | None = None
    #: ``proto``: udp or tcp; ``family`` 4 or 6 when the proto says (udp4, tcp6-server)
    proto: str = "udp"
    family: int | None = None
    #: ``local`` / ``port`` (``lport``): what to bind (None: every address)
    local: str | None = None
    port: int = DEFAULT_PORT
    #: ``ifconfig-pool-persist FILE [SECONDS]`` (0: read only, never written)
    pool_persist: str | None = None
    pool_persist_seconds: int = 600
    #: ``client-config-dir``: where ``options.client_configs`` was read from (reload)
    client_config_dir: str | None = None
    #: ``crl-verify FILE``: read again when it changes (None: inline or no CRL)
    crl_verify: str | None = None
    #: scripts by directive (up, down, client-connect, client-disconnect,
    #: learn-address, tls-verify, auth-user-pass-verify ...), as argv
    scripts: dict[str, list[str]] = field(default_factory=dict)
    #: ``auth-user-pass-verify CMD via-file|via-env``: how the script gets credentials
    auth_user_pass_verify_via: str | None = None
    script_security: int = 1
    setenv: dict[str, str] = field(default_factory=dict)
    status: str | None = None
    status_interval: int = 60
    status_version: int = 1
    management: Management | None = None
    log: str | None = None
    log_append: bool = False
    syslog: str | None = None
    daemon: bool = False
    daemon_name: str | None = None
    writepid: str | None = None
    nice: int = 0
    cd: str | None = None
    config_files: list[str] = field(default_factory=list)
    #: ``user`` / ``group``: what openvpn drops to after start (the runner's business)
    user: str | None = None
    group: str | None = None
    #: ``explicit-exit-notify N``: a UDP server tells clients RESTART when it stops
    explicit_exit_notify: int = 0
    #: ``route`` / ``route-ipv6``: networks the server routes into its device (iroutes)
    routes: list[str] = field(default_factory=list)
    sndbuf: int = 0
    rcvbuf: int = 0
    #: non-fatal remarks: ignored options, CCD lines openvpn would skip, defaults
    warnings: list[str] = field(default_factory=list)

    def expansion(self) -> ServerNet:
        """What ``server`` / ``server-bridge`` / ``server-ipv6`` expand to."""
        o = self.options
        return expand_server(o.network, tap=o.tap, topology=o.topology,
                             network6=o.network6, bridge=o.server_bridge,
                             client_to_client=o.client_to_client, nopool=o.nopool,
                             pool=o.ifconfig_pool, pool6=o.ifconfig_ipv6_pool,
                             ifconfig6=o.ifconfig_ipv6)

    def summary(self) -> str:
        """One line for ``tunconnector check``: transport, device, addresses."""
        o, net = self.options, self.expansion()
        parts = [f"{self.proto} port {self.port}", f"dev {self.dev_type}"]
        if o.network is not None:
            parts.append(f"server {o.network}" + ("" if o.tap else f" topology {o.topology}"))
        if o.server_bridge is not None:
            parts.append(f"server-bridge {o.server_bridge[0]}")
        if net.pool4 is not None:
            parts.append(f"pool {net.pool4[0]}-{net.pool4[1]}")
        if net.local6 is not None:
            parts.append(f"ipv6 {net.local6}/{net.netbits6}")
        if o.client_configs is not None:
            parts.append(f"{len(o.client_configs)} client config(s)")
        return f"openvpn server: {', '.join(parts)}"

    def check(self) -> None:
        """Build the server (TLS context, pool, ciphers) without any I/O: what would
        fail at start fails now, as a ConfigError naming the config."""
        from OpenSSL import SSL

        from .proto.openvpn.server import OpenVPNServer

        try:
            OpenVPNServer(self.options)
        except ConfigError as exc:
            raise ServerConfigError(f"{self.path}: {exc}") from None
        except (CryptoError, SSL.Error, ValueError) as exc:
            raise ServerConfigError(f"{self.path}: TLS material: {exc}") from None


class ServerParser(Parser):
    """Directives in, one :class:`ServerConfig` out (:meth:`build` checks the whole)."""

    INLINE_TAGS = SERVER_INLINE

    def __init__(self, name: str, *, cwd: Path | None = None) -> None:
        super().__init__(name, cwd=cwd)
        self.wheres: dict[str, str] = {}  # directive -> where it was (last) given
        self.mode_server = self.tls_server = False
        self.network: str | None = None
        self.nopool = False
        self.network6: str | None = None
        self.bridge: tuple[str, str, str, str] | None = None
        self.bridge_dhcp = False  # server-bridge [nogw]: the DHCP-proxy form
        self.topology: str | None = None
        self.pool: tuple[str, str, str | None] | None = None
        self.pool6: str | None = None
        self.ifconfig6: str | None = None
        self.push: list[str] = []
        self.client_configs: dict[str, ClientConfig] | None = None
        self.flags: set[str] = set()
        self.max_clients = 1024
        self.keepalive: tuple[int, int] | None = None
        self.verify_client_cert = "require"
        self.remote_cert_tls: str | None = None
        self.auth_gen_token: tuple[int, int | None] | None = None
        self.compress: str | None = None
        self.server = ServerConfig(name, ServerOptions(b"", b"", b""))

    def err(self, where: str, msg: str) -> ServerConfigError:
        return ServerConfigError(f"{where}: {msg}")

    # -- one directive ----------------------------------------------------------------
    def _directive(self, words: list[str], where: str, *,  # noqa: C901
                   lenient: bool) -> None:
        d, args = words[0], words[1:]
        sc = self.server

        def need(n: int, most: int | None = None) -> None:
            if len(args) < n:
                raise self.err(where, f"'{d}' needs {n} argument(s)")
            if most is not None and len(args) > most:
                raise self.err(where, f"'{d}' takes at most {most} argument(s)")

        def number(word: str, what: str, least: int = 0) -> int:
            try:
                n = int(word)
            except ValueError:
                raise self.err(where, f"{what}: {word!r} is not a number") from None
            if n < least:
                raise self.err(where, f"{what} must be at least {least}")
            return n

        def ipv4(word: str, what: str) -> ipaddress.IPv4Address:
            try:
                return ipaddress.IPv4Address(word)
            except ValueError:
                raise self.err(where, f"{what}: {word!r} is not an IPv4 address") from None

        def netmask(word: str, what: str) -> int:
            """The prefix length of a dotted netmask (contiguous, as openvpn wants)."""
            ipv4(word, what)
            try:
                return ipaddress.IPv4Network(f"0.0.0.0/{word}").prefixlen
            except ValueError:
                raise self.err(where, f"{what}: {word!r} is not a valid netmask") from None

        def ipv6(word: str, what: str) -> None:
            try:
                ipaddress.IPv6Interface(word)
            except ValueError:
                raise self.err(where, f"{what}: {word!r} is not an IPv6 address/bits") \
                    from None
            if "/" not in word:
                raise self.err(where, f"{what}: {word!r} needs /BITS")

        self.wheres[d] = where
        if d in IGNORED:
            return
        if d in SHARED:
            super()._directive(words, where, lenient=lenient)
        elif d == "mode":
            need(1, 1)
            if args[0] != "server":
                raise self.err(where, f"mode {args[0]}: this reads server configs only "
                                      "(mode server)")
            self.mode_server = True
        elif d == "tls-server":
            need(0, 0)
            self.tls_server = True
        elif d == "server":
            need(2, 3)
            ipv4(args[0], "server network")
            bits = netmask(args[1], "server netmask")
            try:
                self.network = str(ipaddress.IPv4Network(f"{args[0]}/{bits}"))
            except ValueError:
                raise self.err(where, f"server: {args[0]} {args[1]}: the network/netmask "
                                      "combination is invalid (host bits set)") from None
            if len(args) > 2 and args[2] != "nopool":
                raise self.err(where, f"server: {args[2]!r}: the only flag is 'nopool'")
            self.nopool = len(args) > 2
        elif d == "server-ipv6":
            need(1, 1)
            ipv6(args[0], "server-ipv6")
            self.network6 = args[0]
        elif d == "server-bridge":
            if not args or args == ["nogw"]:
                self.bridge_dhcp = True
                return
            if len(args) != 4:
                raise self.err(where, "server-bridge takes GATEWAY NETMASK POOL-START "
                                      "POOL-END, or nothing, or 'nogw'")
            ipv4(args[0], "server-bridge gateway")
            netmask(args[1], "server-bridge netmask")
            ipv4(args[2], "server-bridge pool start")
            ipv4(args[3], "server-bridge pool end")
            self.bridge = (args[0], args[1], args[2], args[3])
        elif d == "topology":
            need(1, 1)
            if args[0] not in TOPOLOGIES:
                raise self.err(where, f"topology {args[0]!r}: one of "
                                      f"{', '.join(TOPOLOGIES)}")
            self.topology = args[0]
        elif d == "ifconfig-pool":
            need(2, 3)
            ipv4(args[0], "ifconfig-pool start")
            ipv4(args[1], "ifconfig-pool end")
            if len(args) > 2:
                netmask(args[2], "ifconfig-pool netmask")
            self.pool = (args[0], args[1], args[2] if len(args) > 2 else None)
        elif d == "ifconfig-ipv6-pool":
            need(1, 1)
            ipv6(args[0], "ifconfig-ipv6-pool")
            self.pool6 = args[0]
        elif d == "ifconfig-ipv6":
            need(1, 2)  # the second word (the p2p remote) means nothing to a server
            ipv6(args[0], "ifconfig-ipv6")
            self.ifconfig6 = args[0]
        elif d == "ifconfig":
            raise self.err(where, "ifconfig on a server: use 'server NETWORK NETMASK' (or "
                                  "server-bridge), from which the server's own address "
                                  "and pool follow")
        elif d == "ifconfig-pool-persist":
            need(1, 2)
            sc.pool_persist = str(self.path(args[0]))
            if len(args) > 1:
                sc.pool_persist_seconds = number(args[1], "ifconfig-pool-persist seconds")
        elif d == "push":
            need(1, 1)
            text = args[0].strip()
            if "," in text:
                raise self.err(where, f"push {text!r}: a pushed option cannot contain a "
                                      "comma")
            if text:
                self.push.append(text)
        elif d == "client-config-dir":
            need(1, 1)
            self._read_ccd(args[0], where)
        elif d in ("ccd-exclusive", "client-to-client", "duplicate-cn",
                   "username-as-common-name", "force-tls-key-material-export"):
            need(0, 0)
            self.flags.add(d)
        elif d == "max-clients":
            need(1, 1)
            self.max_clients = number(args[0], "max-clients", 1)
        elif d == "keepalive":
            need(2, 2)
            ping, restart = number(args[0], "keepalive", 1), number(args[1], "keepalive", 1)
            if 2 * ping > restart:
                raise self.err(where, f"keepalive {ping} {restart}: the restart timeout "
                                      "must be at least twice the ping interval")
            self.keepalive = (ping, restart)
        elif d == "dh":
            need(1, 1)
            if args[0] != "none" and args[0] != "[inline]":
                self.materials["dh"] = (self.read_file(args[0], where, "dh"), where)
        elif d == "crl-verify":
            need(1, 2)
            if len(args) > 1:
                raise self.err(where, f"crl-verify ... {args[1]}: only a CRL file (the "
                                      "directory form is not supported)")
            if args[0] != "[inline]":
                self.materials["crl-verify"] = (self.read_file(args[0], where, "crl-verify"),
                                                where)
                self.server.crl_verify = str(self.path(args[0]))
        elif d == "auth-gen-token-secret":
            need(1, 1)
            if args[0] != "[inline]":
                self.materials[d] = (self.read_file(args[0], where, d), where)
        elif d == "verify-client-cert":
            need(1, 1)
            if args[0] not in ("none", "optional", "require"):
                raise self.err(where, "verify-client-cert must be none, optional or require")
            self.verify_client_cert = args[0]
        elif d == "remote-cert-tls":
            need(1, 1)
            if args[0] != "client":
                raise self.err(where, "a server can only check remote-cert-tls client")
            self.remote_cert_tls = "client"
        elif d == "auth-user-pass-verify":
            need(1, 2)
            if len(args) < 2:
                raise self.err(where, "auth-user-pass-verify needs a method: via-file or "
                                      "via-env")
            if args[1] not in ("via-file", "via-env"):
                raise self.err(where, f"auth-user-pass-verify method {args[1]!r}: via-file "
                                      "or via-env")
            self.cfg.scripts[d] = self._command(args[0], where)
            sc.auth_user_pass_verify_via = args[1]
        elif d in SERVER_SCRIPTS:
            need(1, 1)
            self.cfg.scripts[d] = self._command(args[0], where)
        elif d == "auth-gen-token":
            need(0, 3)
            rest = list(args)
            if "external-auth" in rest:
                raise self.err(where, "auth-gen-token external-auth: not supported (a "
                                      "valid token lets the client in without the script)")
            lifetime = number(rest[0], "auth-gen-token lifetime") if rest else 0
            renewal = number(rest[1], "auth-gen-token renewal", 1) if len(rest) > 1 else None
            self.auth_gen_token = (lifetime, renewal)
        elif d == "status-version":
            need(0, 1)
            sc.status_version = number(args[0], "status-version") if args else 1
            if sc.status_version not in (1, 2, 3):
                raise self.err(where, "status-version must be 1, 2 or 3")
        elif d == "lport":
            need(1, 1)
            self.cfg.port = number(args[0], "lport")
        elif d == "local":
            need(1, 1)
            sc.local = args[0]
        elif d == "proto":
            need(1, 1)
            if args[0] not in _PROTOS:
                raise self.err(where, f"proto {args[0]!r}: a server takes udp, udp4, udp6, "
                                      "tcp-server, tcp4-server or tcp6-server")
            sc.proto, sc.family = _PROTOS[args[0]]
        elif d in ("user", "group"):
            need(1, 1)
            setattr(sc, d, args[0])
        elif d == "route":
            need(1, 4)
            try:
                net = ipaddress.IPv4Network(f"{args[0]}/{args[1] if len(args) > 1 else 32}")
            except ValueError as exc:
                raise self.err(where, f"route: {exc}") from None
            sc.routes.append(str(net))
        elif d == "route-ipv6":
            need(1, 3)
            try:
                sc.routes.append(str(ipaddress.IPv6Network(args[0])))
            except ValueError as exc:
                raise self.err(where, f"route-ipv6: {exc}") from None
        elif d in ("comp-lzo", "compress"):
            need(0, 1)
            self.compress = self._compress(d, args, where)
        elif d == "client":
            raise self.err(where, "'client' in a server config (this reads server configs; "
                                  "client configs go to 'tunconnector openvpn')")
        else:
            self._unknown(d, where, lenient=lenient)

    def _command(self, text: str, where: str) -> list[str]:
        """A script's command line, split as openvpn's ``argv_parse_cmd`` does."""
        try:
            argv = split_line(text)
        except ValueError as exc:
            raise self.err(where, f"command {text!r}: {exc}") from None
        if not argv:
            raise self.err(where, "empty command")
        return argv

    def _compress(self, d: str, args: list[str], where: str) -> str | None:
        """The server's framing (ServerOptions.compress); tunconnector never compresses."""
        if d == "comp-lzo":
            if args != ["no"]:
                self.cfg.warnings.append(f"{where}: comp-lzo {(args or ['adaptive'])[0]}: "
                                         "framed as 'comp-lzo no' (tunconnector "
                                         "never compresses)")
            return "lzo"
        alg = args[0] if args else "stub"
        if alg in ("stub", "stub-v2", "migrate"):
            return alg
        raise self.err(where, f"compress {alg}: real compression is not supported (stub, "
                              "stub-v2, migrate; or comp-lzo no)")

    def _read_ccd(self, dirname: str, where: str) -> None:
        """Every file of the client-config-dir, parsed (ccd.py) by file name (the common
        name, or DEFAULT); lines openvpn would skip become warnings."""
        folder = self.path(dirname)
        if not folder.is_dir():
            raise self.err(where, f"client-config-dir {dirname}: no such directory")
        configs: dict[str, ClientConfig] = {}
        try:
            entries = sorted(folder.iterdir())
        except OSError as exc:
            raise self.err(where, f"client-config-dir {dirname}: "
                                  f"{exc.strerror or exc}") from None
        for entry in entries:
            if not entry.is_file():
                continue
            try:
                text = entry.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise self.err(where, f"client-config-dir {entry}: {exc}") from None
            cc = parse_client_config(text, str(entry))
            self.cfg.warnings.extend(f"{e} (openvpn skips this line too)" for e in cc.errors)
            configs[entry.name] = cc
        self.client_configs = configs
        self.server.client_config_dir = str(folder)

    # -- the whole --------------------------------------------------------------------
    def build(self) -> ServerConfig:  # noqa: C901
        """The config as a whole: openvpn's cross-checks, the expansion checked, the
        TLS material and keys read into the options."""
        self.finish_process()
        cfg, sc, name = self.cfg, self.server, self.cfg.path
        sc.path = name
        if not (self.mode_server or self.network or self.network6 or self.bridge
                or self.bridge_dhcp):
            raise ServerConfigError(f"{name}: not a server config (no 'server', "
                                    "'server-bridge', 'server-ipv6' or 'mode server')")
        if "dev" not in self.wheres:
            raise ServerConfigError(f"{name}: no 'dev' (tun or tap)")
        if self.mode_server and not self.tls_server and self.network is None \
                and self.network6 is None and self.bridge is None and not self.bridge_dhcp:
            raise ServerConfigError(f"{self.wheres['mode']}: mode server needs tls-server "
                                    "(or the 'server' helper, which implies it)")
        tap = cfg.dev_type == "tap"
        if self.bridge_dhcp:
            raise ServerConfigError(
                f"{self.wheres['server-bridge']}: server-bridge without a pool (clients "
                "take addresses by DHCP on the bridge): not supported; give 'server-bridge "
                "GATEWAY NETMASK POOL-START POOL-END'")
        if self.bridge is not None and not tap:
            raise ServerConfigError(f"{self.wheres['server-bridge']}: server-bridge only "
                                    "makes sense with dev tap")
        if self.network is None and self.bridge is None and self.network6 is None \
                and self.pool6 is None and (self.pool is None or not tap):
            raise ServerConfigError(
                f"{name}: mode server without 'server NETWORK NETMASK' (a TAP server may "
                "give 'ifconfig-pool START END NETMASK' instead)")
        o = sc.options
        o.tap = tap
        o.proto = sc.proto
        o.network = self.network
        o.nopool = self.nopool
        o.network6 = self.network6
        o.server_bridge = self.bridge
        o.ifconfig_pool = self.pool
        o.ifconfig_ipv6_pool = self.pool6
        o.ifconfig_ipv6 = self.ifconfig6
        if self.topology is None:
            o.topology = "net30"  # openvpn 2.6's default, not ServerOptions' subnet
            if not tap and self.network is not None:
                sc.warnings.append(f"{name}: no 'topology': openvpn 2.6's default net30 "
                                   "(a /30 per client); 2.7 defaults to subnet, say "
                                   "'topology subnet' to get it")
        else:
            o.topology = self.topology
        o.client_to_client = "client-to-client" in self.flags
        o.duplicate_cn = "duplicate-cn" in self.flags
        o.ccd_exclusive = "ccd-exclusive" in self.flags
        o.username_as_common_name = "username-as-common-name" in self.flags
        o.force_tls_key_material_export = "force-tls-key-material-export" in self.flags
        o.max_clients = self.max_clients
        o.push = list(self.push)
        o.keepalive = self.keepalive
        o.client_configs = self.client_configs
        o.verify_client_cert = self.verify_client_cert
        o.remote_cert_tls = self.remote_cert_tls
        o.compress = self.compress
        o.auth_user_pass_verify = "auth-user-pass-verify" in cfg.scripts
        co = cfg.options  # what the shared directives set, with the client's defaults
        for attr in ("auth", "reneg_sec", "hand_window", "tran_window", "tun_mtu",
                     "tun_mtu_extra", "tls_version_min", "mssfix", "mssfix_encap",
                     "mssfix_fixed"):
            setattr(o, attr, getattr(co, attr))
        try:
            o.data_ciphers, o.data_ciphers_fallback = self.data_ciphers_and_fallback(o.auth)
        except ConfigError as exc:
            blame = self.wheres.get("data-ciphers") or self.wheres.get("auth") or name
            raise ServerConfigError(f"{blame}: {str(exc).removeprefix(name + ': ')}") \
                from None
        self._check_auth(o, name)
        self._check_net(sc)
        self._read_materials(o, name)
        # the process side, as the shared directives left it
        sc.dev_type, sc.device, sc.port = cfg.dev_type, cfg.device, cfg.port
        for attr in ("scripts", "script_security", "setenv", "status", "status_interval",
                     "management", "log", "log_append", "syslog", "daemon", "daemon_name",
                     "writepid", "nice", "cd", "config_files", "sndbuf", "rcvbuf"):
            setattr(sc, attr, getattr(cfg, attr))
        sc.explicit_exit_notify = co.explicit_exit_notify
        sc.warnings = cfg.warnings + sc.warnings
        return sc

    def _check_auth(self, o: ServerOptions, name: str) -> None:
        verify = o.auth_user_pass_verify
        if o.verify_client_cert != "require" and not verify:
            raise ServerConfigError(
                f"{self.wheres['verify-client-cert']}: verify-client-cert "
                f"{o.verify_client_cert} must be used with auth-user-pass-verify")
        if o.username_as_common_name and not verify:
            raise ServerConfigError(f"{self.wheres['username-as-common-name']}: "
                                    "username-as-common-name must be used with "
                                    "auth-user-pass-verify")
        if o.ccd_exclusive and o.client_configs is None:
            raise ServerConfigError(f"{self.wheres['ccd-exclusive']}: ccd-exclusive must "
                                    "be used with client-config-dir")
        if self.auth_gen_token is not None:
            if o.reneg_sec >= 10**9:
                raise ServerConfigError(f"{self.wheres['auth-gen-token']}: auth-gen-token "
                                        "needs a non-infinite reneg-sec")
            o.auth_gen_token = True
            o.auth_token_lifetime, o.auth_token_renewal = self.auth_gen_token
        elif "auth-gen-token-secret" in self.materials:
            self.cfg.warnings.append(f"{self.materials['auth-gen-token-secret'][1]}: "
                                     "auth-gen-token-secret without auth-gen-token: unused")

    def _blame(self, msg: str) -> str:
        """Where the directive an expansion error is about was given."""
        for key, d in (("ifconfig-ipv6-pool", "ifconfig-ipv6-pool"),
                       ("ifconfig-pool", "ifconfig-pool"), ("server-ipv6", "server-ipv6"),
                       ("server-bridge", "server-bridge"), ("topology", "topology"),
                       ("server", "server")):
            if key in msg and d in self.wheres:
                return self.wheres[d]
        return self.cfg.path

    def _check_net(self, sc: ServerConfig) -> None:
        """The expansion as openvpn's helper checks it, plus explicit pools that must lie
        inside the network they serve."""
        o = sc.options
        try:
            net = sc.expansion()
            if net.pool4 is None and net.pool6 is None:
                raise ConfigError("server ... nopool without an ifconfig-pool: no address "
                                  "pool")
        except ConfigError as exc:
            raise ServerConfigError(f"{self._blame(str(exc))}: {exc}") from None
        if o.network is not None and o.ifconfig_pool is not None:
            lan = ipaddress.IPv4Network(o.network)
            first, last = (ipaddress.IPv4Address(a) for a in o.ifconfig_pool[:2])
            if first not in lan or last not in lan:
                raise ServerConfigError(
                    f"{self.wheres['ifconfig-pool']}: ifconfig-pool {first} - {last} is "
                    f"outside the server's network {lan}")
            if net.local4 is not None and first <= net.local4 <= last:
                raise ServerConfigError(
                    f"{self.wheres['ifconfig-pool']}: ifconfig-pool {first} - {last} "
                    f"holds the server's own address {net.local4}")
        if o.ifconfig_ipv6_pool is not None and o.ifconfig_ipv6 is not None:
            own = ipaddress.IPv6Interface(o.ifconfig_ipv6)
            base = ipaddress.IPv6Interface(o.ifconfig_ipv6_pool)
            if base.ip not in own.network:
                raise ServerConfigError(
                    f"{self.wheres['ifconfig-ipv6-pool']}: ifconfig-ipv6-pool {base} is "
                    f"outside the server's network {own.network} (ifconfig-ipv6)")

    def _read_materials(self, o: ServerOptions, name: str) -> None:
        m = self.materials
        for tag, what in (("ca", "the CA that signs client certificates"),
                          ("cert", "the server's certificate"), ("key", "its private key")):
            if tag not in m:
                raise ServerConfigError(f"{name}: no '{tag}' ({what})")
        o.ca_pem, o.cert_pem, o.key_pem = (m[t][0].encode() for t in ("ca", "cert", "key"))
        if "dh" in m:
            # read and checked as openvpn would, not used: the TLS server offers ECDHE
            # (and TLS 1.3) key exchange only
            found = _DH_PEM.search(m["dh"][0])
            try:
                body = base64.b64decode("".join(found.group(2).split()), validate=True) \
                    if found is not None else b""
            except (binascii.Error, ValueError):
                body = b""
            if not body:
                raise ServerConfigError(f"{m['dh'][1]}: dh: no PEM 'DH PARAMETERS' block "
                                        "in the file ('dh none' needs no file)")
        if "crl-verify" in m:
            text, where = m["crl-verify"]
            from cryptography import x509

            try:
                x509.load_pem_x509_crl(text.encode())
            except ValueError as exc:
                raise ServerConfigError(f"{where}: crl-verify: not a PEM CRL ({exc})") \
                    from None
            o.crl_pem = text.encode()
        for tag in ("tls-auth", "tls-crypt"):
            if tag not in m:
                continue
            try:
                key = parse_static_key(m[tag][0])
            except CryptoError as exc:
                raise ServerConfigError(f"{m[tag][1]}: {tag}: {exc}") from None
            if tag == "tls-auth":
                o.tls_auth = key
                o.key_direction = self.tls_auth_dir if self.tls_auth_dir is not None \
                    else self.key_direction
            else:
                o.tls_crypt = key
        if o.tls_auth is not None and o.tls_crypt is not None:
            raise ServerConfigError(f"{m['tls-crypt'][1]}: 'tls-auth' and 'tls-crypt' "
                                    "exclude each other")
        if "auth-gen-token-secret" in m and o.auth_gen_token:
            text, where = m["auth-gen-token-secret"]
            o.auth_token_secret = auth_token_secret(text, where)


def auth_token_secret(text: str, where: str = "auth-gen-token-secret") -> bytes:
    """The HMAC key of an ``openvpn --genkey auth-token`` file (auth_token.c's
    ``auth_token_init_secret``: the HMAC half of a ``struct key``, SHA256's 32 bytes)."""
    found = _AUTH_TOKEN_PEM.search(text)
    if found is None:
        raise ServerConfigError(f"{where}: auth-gen-token-secret: no 'OpenVPN auth-token "
                                "server key' PEM block")
    try:
        data = base64.b64decode("".join(found.group(1).split()), validate=True)
    except (binascii.Error, ValueError):
        raise ServerConfigError(f"{where}: auth-gen-token-secret: bad base64") from None
    if len(data) < 128:
        raise ServerConfigError(f"{where}: auth-gen-token-secret: not enough data "
                                f"({len(data)} bytes, openvpn's key has 128 or more)")
    return data[64:96]


def looks_like_server(text: str) -> bool:
    """An openvpn server config: a ``mode server``, ``server``, ``server-bridge``,
    ``server-ipv6`` or ``tls-server`` line (TOML's ``key = value`` never matches)."""
    for line in text.splitlines():
        try:
            words = split_line(line)
        except ValueError:
            continue
        if not words or words[1:2] == ["="]:
            continue
        d = words[0][2:] if words[0].startswith("--") else words[0]
        if d in ("server", "server-bridge", "server-ipv6", "tls-server") or \
                (d == "mode" and words[1:2] == ["server"]):
            return True
    return False


def parse(text: str, name: str = "<server.conf>", base: Path | None = None,
          cwd: Path | None = None) -> ServerConfig:
    """Parse server config ``text``; relative files: ``cwd`` (default: the process's),
    then ``base`` (the config's folder)."""
    parser = ServerParser(name, cwd=cwd)
    parser.feed_text(text, name, base or Path("."))
    return parser.build()


def load(path: str | Path, cwd: Path | None = None) -> ServerConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ServerConfigError(f"{p}: cannot read OpenVPN config: {exc}") from None
    return parse(text, str(p), base=p.parent, cwd=cwd)


__all__ = ["IGNORED", "ServerConfig", "ServerConfigError", "ServerParser",
           "auth_token_secret", "load", "looks_like_server", "parse"]
