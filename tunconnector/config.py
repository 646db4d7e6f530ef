"""Configuration: typed dataclasses loaded from TOML or a mapping, strictly validated.

Every section is a dataclass; :func:`build` walks the type hints, so adding a key is
adding a field. Unknown keys and bad values raise :class:`ConfigError` whose message
starts with the key's path (``tunnel[1].remote_port: ...``). The CLI maps that to exit 2.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import math
import re
import reprlib
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import ConfigError

IFNAMSIZ = 16
DEFAULT_PORT = 55556
_IFNAME_RE = re.compile(r"[A-Za-z0-9_.:@+-]+")
# str.isdigit() also accepts "²" and other Unicode digits; int() then fails or surprises
_ASCII_DIGITS = re.compile(r"[0-9]+")
HOUR = 3600.0
DAY = 86400.0
WEEK = 7 * DAY
# timers below this pin a core for nothing (a 1e-300 s keepalive is a busy loop)
MIN_KEEPALIVE = 0.01


def check_ifname(name: str, where: str) -> None:
    """Linux interface names: 1..15 bytes, no '/', no whitespace (dev_valid_name)."""
    if not name or len(name.encode()) >= IFNAMSIZ:
        raise ConfigError(f"{where}: interface name {_short(name)} must be 1..15 bytes long")
    if not _IFNAME_RE.fullmatch(name) or name in (".", ".."):
        raise ConfigError(f"{where}: interface name {_short(name)} has forbidden characters")


def parse_interface_address(
    text: str, where: str
) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """``10.0.0.2/24`` or ``fd00::1/64``; a bare address gets /24 (IPv4, as TunConnector) or /64."""
    text = text.strip()
    if "/" not in text:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: {_short(text)} is not an IP address") from exc
        text = f"{text}/{24 if addr.version == 4 else 64}"
    try:
        return ipaddress.ip_interface(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {_short(text)} is not an address with prefix") from exc


@dataclass(slots=True)
class HealthConfig:
    """Built-in reachability check (TunConnector's ping timer), see the health module."""

    target: str | None = None
    interval: float = 10.0
    probes: int = 5
    threshold: float = 0.5
    timeout: float = 1.0
    status_file: str | None = None

    def validate(self, where: str) -> None:
        if self.target is not None:
            _check_ip(self.target, f"{where}.target")
        _within(self.interval, f"{where}.interval", 0.01, DAY)
        _within(self.probes, f"{where}.probes", 1, 1000)
        _within(self.timeout, f"{where}.timeout", 0.001, HOUR)
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"{where}.threshold: must be in [0, 1), got {self.threshold}")


def _argv() -> Any:
    """A list field that must be written as a list: a string would be a shell habit."""
    return field(default_factory=list, metadata={"argv": True})


@dataclass(slots=True)
class HooksConfig:
    """Programs run on tunnel events (see :mod:`tunconnector.hooks`); argv lists, no shell."""

    up: list[str] = _argv()
    down: list[str] = _argv()
    peer_up: list[str] = _argv()
    peer_down: list[str] = _argv()
    timeout: float = 10.0

    def validate(self, where: str) -> None:
        _within(self.timeout, f"{where}.timeout", 0.01, HOUR)
        for event in ("up", "down", "peer_up", "peer_down"):
            argv = getattr(self, event)
            if argv and not argv[0]:
                raise ConfigError(f"{where}.{event}[0]: the program must not be empty")
            for i, arg in enumerate(argv):
                if "\0" in arg:
                    raise ConfigError(f"{where}.{event}[{i}]: NUL byte in argument")


@dataclass(slots=True)
class PathConfig:
    """One underlay path of a multi-path tunnel (userspace failover)."""

    name: str
    bind_interface: str | None = None
    local: str | None = None
    port: int = 0
    remote: str | None = None
    remote_port: int = DEFAULT_PORT
    priority: int = 0
    weight: float = 1.0

    def validate(self, where: str) -> None:
        if self.bind_interface is not None:
            check_ifname(self.bind_interface, f"{where}.bind_interface")
        if self.local is not None:
            _check_ip(self.local, f"{where}.local")
        _port(self.port, f"{where}.port", allow_zero=True)
        _port(self.remote_port, f"{where}.remote_port")
        _within(self.priority, f"{where}.priority", -(1 << 31), (1 << 31) - 1)
        _within(self.weight, f"{where}.weight", 0.0, 1e6, lo_open=True)


@dataclass(slots=True)
class PeerConfig:
    """One peer of a hub (``[[tunnel.peer]]``), identified by its public key."""

    name: str
    public_key: str
    address: str | None = None
    allowed_ips: list[str] = field(default_factory=list)
    key_file: str | None = None  # an extra per-peer PSK on top of the public keys
    # TAP hub: this peer's station MAC, pinned to it (no other peer can take it)
    mac: str | None = None

    def validate(self, where: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.name):
            raise ConfigError(
                f"{where}.name: {_short(self.name)} must be 1..64 of [A-Za-z0-9_.-]")
        from .errors import CryptoError
        from .keys import decode_key

        try:
            decode_key(self.public_key, "public_key")
        except CryptoError as exc:
            raise ConfigError(f"{where}.public_key: {exc}") from None
        if self.address is not None:
            _check_ip(self.address.split("/")[0], f"{where}.address")
        if self.mac is not None:
            from .proto.mactable import parse_mac

            try:
                parse_mac(self.mac)
            except ValueError as exc:
                raise ConfigError(f"{where}.mac: {exc}") from None
        for i, net in enumerate(self.allowed_ips):
            _check_network(net, f"{where}.allowed_ips[{i}]")


@dataclass(slots=True)
class TunnelConfig:
    """One tunnel: a device, a transport, a framing. The keys are a public contract."""

    name: str
    mode: Literal["server", "client"] = "server"
    dev_type: Literal["tun", "tap"] = "tun"
    device: str | None = None
    address: list[str] = field(default_factory=list)
    port: int = 0
    bind: str | None = None
    bind_interface: str | None = None
    remote: str | None = None
    remote_port: int = DEFAULT_PORT
    proto: Literal["udp", "tcp"] = "udp"
    framing: Literal["native", "raw", "simpletun", "openvpn"] = "native"
    # raw only: a 4-byte packet-information header before every frame on the wire, as
    # a TUN/TAP device opened without IFF_NO_PI gives (socat's TUN without iff-no-pi)
    packet_info: bool = False
    mtu: int | None = None
    keepalive: float = 10.0
    dead_after: float = 60.0
    netns: str | None = None
    enabled: bool = True
    owner: str | None = None
    offload: Literal["auto", "off"] = "auto"
    # cap on offload super-packets (bytes); smaller helps on lossy links (docs/bench.md)
    gso_max_size: int | None = None
    # encryption (see crypto docs); key material itself never lives in the config object
    key_file: str | None = None
    private_key_file: str | None = None
    peer_public_key: str | None = None
    # auto: negotiated in the handshake, AES-256-GCM preferred on CPUs with AES (keys.py)
    cipher: Literal["auto", "chacha20-poly1305", "aes-256-gcm"] = "auto"
    rekey_after_time: float = 120.0
    rekey_after_bytes: int = 1 << 36
    # userspace multi-path
    policy: Literal["active-backup", "duplicate", "balance"] = "active-backup"
    probe_interval: float = 0.02
    down_after: int = 3
    up_after: int = 3
    failback_delay: float = 1.0
    loss_threshold: float = 0.2
    path: list[PathConfig] = field(default_factory=list)
    health: HealthConfig | None = None
    # framing = "openvpn", static-key mode (docs/openvpn.md): an OpenVPN Static key V1 file
    openvpn_secret: str | None = None
    key_direction: int | None = None
    openvpn_cipher: str = "AES-256-CBC"
    openvpn_auth: str = "SHA1"
    # a server follows its live peer to a new address (openvpn's --float); without it the
    # peer changes only once the old one is dead (dead_after, or its OCC EXIT)
    openvpn_float: bool = False
    # openvpn's replay-persist: the replay state survives a restart (a JSON file)
    openvpn_replay_persist: str | None = None
    hooks: HooksConfig | None = None
    # hub mode: a server with [[tunnel.peer]] tables serves many peers on one port
    peer: list[PeerConfig] = field(default_factory=list)
    pool: str | None = None
    client_to_client: bool = False
    push_routes: list[str] = field(default_factory=list)
    max_peers: int = 1024
    state_file: str | None = None  # pool leases (default /var/lib/tunconnector/NAME.json)
    mac_aging: float = 300.0
    max_macs_per_peer: int = 1024
    # TAP hub: the hub's own device MAC is never learned from a peer
    mac_pin: bool = True
    # TAP hub: a MAC learned on one peer moves to another only after this long silent
    mac_move_after: float = 5.0
    # OpenVPN TLS client (docs/openvpn.md): a standard client .ovpn decides the remote,
    # protocol and device type; the server pushes addresses and routes
    openvpn_config: str | None = None
    allow_redirect_gateway: bool = False

    @property
    def is_hub(self) -> bool:
        return bool(self.peer)

    def validate_hub(self, where: str) -> None:
        if self.mode != "server":
            raise ConfigError(f"{where}.peer: only a server has [[tunnel.peer]] tables")
        if self.framing != "native" or self.proto != "udp":
            raise ConfigError(f"{where}.peer: a hub runs framing = 'native' over proto = 'udp'")
        if self.path:
            raise ConfigError(f"{where}.path: a hub has one socket, not [[tunnel.path]]")
        if not self.private_key_file:
            raise ConfigError(f"{where}.private_key_file: a hub identifies peers by public "
                              "key and needs its own private key")
        if self.peer_public_key:
            raise ConfigError(f"{where}.peer_public_key: a hub lists its peers in "
                              "[[tunnel.peer]] instead")
        _within(self.max_peers, f"{where}.max_peers", 1, 1_000_000)
        if len(self.peer) > self.max_peers:
            raise ConfigError(f"{where}.peer: {len(self.peer)} peers exceed max_peers "
                              f"{self.max_peers}")
        _within(self.mac_aging, f"{where}.mac_aging", 1.0, WEEK)
        _within(self.max_macs_per_peer, f"{where}.max_macs_per_peer", 1, 1_000_000)
        _within(self.mac_move_after, f"{where}.mac_move_after", 0.0, WEEK)
        macs: dict[str, str] = {}
        for i, pc in enumerate(self.peer):
            if pc.mac is None:
                continue
            if self.dev_type != "tap":
                raise ConfigError(f"{where}.peer[{i}].mac: only a TAP hub switches by MAC")
            norm = pc.mac.lower().replace("-", ":")
            if norm in macs:
                raise ConfigError(f"{where}.peer[{i}].mac: {pc.mac} is already peer "
                                  f"{macs[norm]}'s")
            macs[norm] = pc.name
        if self.pool is not None:
            _check_network(self.pool, f"{where}.pool")
        for i, r in enumerate(self.push_routes):
            _check_network(r, f"{where}.push_routes[{i}]")
        seen_names: set[str] = set()
        seen_keys: set[str] = set()
        seen_addrs: set[str] = set()
        own = {str(i.ip) for i in self.interfaces}
        for i, p in enumerate(self.peer):
            pw = f"{where}.peer[{i}]"
            if p.name in seen_names:
                raise ConfigError(f"{pw}.name: duplicate peer name {_short(p.name)}")
            seen_names.add(p.name)
            key = p.public_key.strip()
            if key in seen_keys:
                raise ConfigError(f"{pw}.public_key: the same key is given to two peers")
            seen_keys.add(key)
            if p.address is not None:
                a = p.address.split("/")[0]
                if a in seen_addrs or a in own:
                    raise ConfigError(f"{pw}.address: {a} is used twice")
                seen_addrs.add(a)
            elif self.pool is None and self.dev_type == "tun":
                raise ConfigError(f"{pw}.address: a peer needs an address, or the tunnel "
                                  "a pool")

    def validate(self, where: str) -> None:
        if self.openvpn_config is not None:
            self._from_openvpn_config(where)
        if not self.name or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.name):
            raise ConfigError(f"{where}.name: {_short(self.name)} must be 1..64 of [A-Za-z0-9_.-]")
        if self.device is not None:
            check_ifname(self.device, f"{where}.device")
        if self.bind_interface is not None:
            check_ifname(self.bind_interface, f"{where}.bind_interface")
        for i, a in enumerate(self.address):
            parse_interface_address(a, f"{where}.address[{i}]")
        _port(self.port, f"{where}.port", allow_zero=True)
        _port(self.remote_port, f"{where}.remote_port")
        if self.bind is not None:
            _check_ip(self.bind, f"{where}.bind")
        if self.mode == "client" and not self.remote and not self.path:
            raise ConfigError(f"{where}.remote: a client needs the server's address")
        if self.remote is not None and not self.remote:
            raise ConfigError(f"{where}.remote: empty")
        if self.framing == "raw" and self.proto != "udp":
            raise ConfigError(f"{where}.framing: 'raw' works on UDP only (one frame per datagram)")
        if self.packet_info and self.framing != "raw":
            raise ConfigError(f"{where}.packet_info: only with framing = 'raw'")
        if self.framing == "simpletun" and self.proto != "tcp":
            raise ConfigError(f"{where}.framing: 'simpletun' works on TCP only (length-prefixed)")
        if self.gso_max_size is not None and not 1500 <= self.gso_max_size <= 65536:
            raise ConfigError(f"{where}.gso_max_size: {self.gso_max_size} outside 1500..65536")
        if self.mtu is not None and not 68 <= self.mtu <= 65535:
            raise ConfigError(f"{where}.mtu: {self.mtu} outside 68..65535")
        _within(self.keepalive, f"{where}.keepalive", MIN_KEEPALIVE, DAY)
        _within(self.dead_after, f"{where}.dead_after", MIN_KEEPALIVE, WEEK)
        if self.dead_after <= self.keepalive:
            raise ConfigError(
                f"{where}.dead_after: {self.dead_after} must exceed keepalive {self.keepalive}"
            )
        if self.netns is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.netns):
            raise ConfigError(f"{where}.netns: bad namespace name {_short(self.netns)}")
        if self.framing != "native" and (self.key_file or self.private_key_file):
            raise ConfigError(f"{where}.key_file: encryption needs framing = 'native'")
        if self.peer:
            self.validate_hub(where)
        elif self.private_key_file and not self.peer_public_key:
            raise ConfigError(f"{where}.peer_public_key: required with private_key_file")
        elif self.pool is not None or self.push_routes or self.client_to_client:
            raise ConfigError(f"{where}.pool: pool, push_routes and client_to_client "
                              "belong to a hub (a server with [[tunnel.peer]] tables)")
        # a rekey is a handshake: below a second (or a MiB) the tunnel does little else
        _within(self.rekey_after_time, f"{where}.rekey_after_time", 1.0, DAY)
        _within(self.rekey_after_bytes, f"{where}.rekey_after_bytes", 1 << 20, 1 << 62)
        _within(self.probe_interval, f"{where}.probe_interval", 0.001, 60.0)
        _within(self.down_after, f"{where}.down_after", 1, 1000)
        _within(self.up_after, f"{where}.up_after", 1, 1000)
        _within(self.failback_delay, f"{where}.failback_delay", 0.0, DAY)
        _within(self.loss_threshold, f"{where}.loss_threshold", 0.0, 1.0)  # 0: never
        names = [p.name for p in self.path]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}.path: path names must be unique")
        if self.path and self.framing != "native":
            raise ConfigError(f"{where}.path: multi-path needs framing = 'native'")
        if self.path and self.proto != "udp":
            raise ConfigError(f"{where}.path: multi-path runs over proto = 'udp' "
                              "(one datagram socket per path)")
        for i, p in enumerate(self.path):
            if self.mode == "client" and not p.remote:
                raise ConfigError(f"{where}.path[{i}].remote: a client path needs remote")
        if self.health is not None:
            self.health.validate(f"{where}.health")
        if self.hooks is not None:
            self.hooks.validate(f"{where}.hooks")
        self._validate_openvpn(where)

    def _validate_openvpn(self, where: str) -> None:
        """The ``openvpn_*`` keys: only with framing = "openvpn", which needs a secret
        (static-key mode) unless ``openvpn_config`` makes it the TLS client."""
        if self.openvpn_config is not None:
            if self.openvpn_secret is not None:
                raise ConfigError(f"{where}.openvpn_secret: not used with openvpn_config "
                                  "(TLS mode)")
            return
        if self.framing != "openvpn":
            if self.openvpn_secret is not None or self.key_direction is not None \
                    or self.openvpn_float or self.openvpn_replay_persist is not None:
                key = "openvpn_secret" if self.openvpn_secret is not None else \
                    "key_direction" if self.key_direction is not None else \
                    "openvpn_float" if self.openvpn_float else "openvpn_replay_persist"
                raise ConfigError(f"{where}.{key}: only used with framing = 'openvpn'")
            return
        from .proto.openvpn.static import CIPHERS, DIGESTS

        if not self.openvpn_secret:
            raise ConfigError(f"{where}.openvpn_secret: framing 'openvpn' (static-key mode) "
                              "needs an OpenVPN static key file")
        if self.key_direction is not None and self.key_direction not in (0, 1):
            raise ConfigError(f"{where}.key_direction: must be 0 or 1, got {self.key_direction}")
        if self.openvpn_cipher.upper() == "BF-CBC":
            raise ConfigError(
                f"{where}.openvpn_cipher: BF-CBC is not supported (a 64-bit block cipher that "
                "openvpn 2.6 itself refuses without OpenSSL's legacy provider); set "
                "cipher AES-256-CBC on the openvpn side and here"
            )
        if self.openvpn_cipher not in CIPHERS:
            choices = " | ".join(repr(c) for c in CIPHERS)
            raise ConfigError(f"{where}.openvpn_cipher: {_short(self.openvpn_cipher)} is not one "
                              f"of {choices}")
        if self.openvpn_auth not in DIGESTS:
            choices = " | ".join(repr(c) for c in DIGESTS)
            raise ConfigError(f"{where}.openvpn_auth: {_short(self.openvpn_auth)} is not one "
                              f"of {choices}")
        if self.path:
            raise ConfigError(f"{where}.path: multi-path needs framing = 'native'")

    def _from_openvpn_config(self, where: str) -> None:
        """Read the .ovpn now (bad files are config errors, exit 2) and take from it what
        the tunnel adapter needs: client mode, remote, protocol, device type and name."""
        from .ovpnconfig import load

        key = f"{where}.openvpn_config"
        if _is_server_config(self.openvpn_config or ""):
            self._from_openvpn_server_config(where)
            return
        try:
            ovpn = load(self.openvpn_config or "")
            ovpn.check_tls()
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        from .ovpnconfig import COMMAND_LINE_KEY

        if "tls-verify" in ovpn.scripts and \
                not (self.openvpn_config or "").startswith(COMMAND_LINE_KEY):
            raise ConfigError(f"{key}: tls-verify runs under `tunconnector openvpn` only (a "
                              "[[tunnel]] would skip the check it asks for)")
        first = ovpn.remote_list()[0]
        for other in ("key_file", "private_key_file", "peer_public_key"):
            if getattr(self, other):
                raise ConfigError(f"{where}.{other}: not used with openvpn_config (the .ovpn "
                                  "holds the keys)")
        if self.remote not in (None, first.host):
            raise ConfigError(f"{where}.remote: comes from openvpn_config ('remote' there)")
        if self.path:
            raise ConfigError(f"{where}.path: not available with openvpn_config")
        self.mode = "client"
        self.framing = "openvpn"
        self.remote, self.remote_port = first.host, first.port
        self.proto = "tcp" if first.proto == "tcp" else "udp"
        self.dev_type = "tap" if ovpn.dev_type == "tap" else "tun"
        if self.device is None and ovpn.device is not None:
            self.device = ovpn.device

    def _from_openvpn_server_config(self, where: str) -> None:
        """An openvpn *server* config: read now (bad files are config errors), and the
        tunnel becomes that server (mode, protocol, port, device type and name)."""
        from .ovpnserverconf import load

        key = f"{where}.openvpn_config"
        try:
            sc = load(self.openvpn_config or "")
            sc.check()
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        for other in ("key_file", "private_key_file", "peer_public_key", "remote", "peer",
                      "path", "pool"):
            if getattr(self, other):
                raise ConfigError(f"{where}.{other}: not used with an openvpn server config "
                                  "(the config says it)")
        self.mode = "server"
        self.framing = "openvpn"
        self.proto = "tcp" if sc.proto == "tcp" else "udp"
        self.port = sc.port
        self.dev_type = "tap" if sc.dev_type == "tap" else "tun"
        if self.device is None and sc.device is not None:
            self.device = sc.device

    @property
    def interfaces(self) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
        return [parse_interface_address(a, "address") for a in self.address]


@dataclass(slots=True)
class ApiConfig:
    """REST control API (``[api]``)."""

    listen: str = "127.0.0.1:8000"
    username: str | None = None
    password: str | None = None
    token: str | None = None
    default_tunnel: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    state_file: str | None = None
    # failed-auth rate limit per client address (see api/auth.py)
    auth_max_failures: int = 10
    auth_window: float = 60.0
    # the enabler endpoints' tunnels: tunconnector's own or OpenVPN static key, compatible
    # with the original enabler's openvpn processes (docs/openvpn.md)
    enabler_wire: Literal["native", "openvpn"] = "native"
    openvpn_secret: str | None = None  # the server's key (generated when unset)

    def validate(self, where: str) -> None:
        _within(self.auth_max_failures, f"{where}.auth_max_failures", 1, 1_000_000)
        _within(self.auth_window, f"{where}.auth_window", 0.001, WEEK)
        host, _, port = self.listen.rpartition(":")
        if not host or not _ASCII_DIGITS.fullmatch(port) or len(port) > 5:
            raise ConfigError(f"{where}.listen: expected HOST:PORT, got {_short(self.listen)}")
        _port(int(port), f"{where}.listen", allow_zero=True)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError(f"{where}.tls_cert: tls_cert and tls_key go together")


@dataclass(slots=True)
class PrivilegesConfig:
    """Drop root after set-up (``[privileges]``), see the privileges module."""

    user: str | None = None
    group: str | None = None
    keep_caps: list[str] = field(default_factory=lambda: ["CAP_NET_ADMIN", "CAP_NET_RAW"])

    def validate(self, where: str) -> None:
        if self.user is not None and not self.user:
            raise ConfigError(f"{where}.user: empty")
        from .privileges import cap_bits

        cap_bits(self.keep_caps)


@dataclass(slots=True)
class BondSlaveConfig:
    hw_int: str
    ip_server: str
    netmask: str = "255.255.255.0"

    def validate(self, where: str) -> None:
        check_ifname(self.hw_int, f"{where}.hw_int")
        _check_ip(self.ip_server, f"{where}.ip_server")


@dataclass(slots=True)
class BondConfig:
    """A kernel bond over TAP tunnels (``[[bond]]``), the Multi-link enabler's stack."""

    role: Literal["client", "server"] = "client"
    name: str = "bond0"
    ip_address: str | None = None
    slaves: list[BondSlaveConfig] = field(default_factory=list)
    links: int = 2
    bridge_ip: str | None = None
    base_port: int = 1190
    bonding: dict[str, str] = field(default_factory=dict)
    key_file: str | None = None
    # tunconnector additions (see docs/bond.md)
    prefixlen: int = 24  # of ip_address / bridge_ip (the enabler fixed /24)
    tap_prefix: str = "tap"  # slave i is <tap_prefix><i>, i from 1, in slave order
    # tunnel liveness: the TAP's carrier drops (and, in active-backup, the daemon moves
    # the bond's active slave) after dead_after of silence; a hw_int going down does it
    # at once. None: derived (see liveness()), from arp_interval on an ARP-monitored bond.
    keepalive: float | None = None
    dead_after: float | None = None
    # active-backup client: leave the active slave after this much silence (s) when
    # another slave is fresh; None: 1.2 x arp_interval (0.3 s without ARP); 0: off
    failover_after: float | None = None
    bind: str | None = None  # server: listen address (default: any)
    server_api_url: str | None = None  # client: the enabler's field, kept for status only
    # "openvpn": the links are OpenVPN static-key tunnels (cipher none, HMAC-SHA1, no key
    # direction) as the enabler's openvpn processes run them, keyed by openvpn_secret
    wire: Literal["native", "openvpn"] = "native"
    openvpn_secret: str | None = None

    def liveness(self) -> tuple[float, float]:
        """(keepalive, dead_after) of the bond's tunnels, in seconds.

        Explicit keys win. Otherwise a server sends keepalives every 50 ms on an idle
        link, so its clients' silence watch (``failover_after``) can tell a path that
        went quiet from a backup that is merely idle; clients keep 0.2 s. ``dead_after``
        (carrier off) stays at 1 s: short enough for miimon bonds, long enough that a
        stalled daemon does not flap carriers.
        """
        if self.wire == "openvpn":  # the enabler's openvpn: keepalive 15 60 / ping 15
            return (self.keepalive if self.keepalive is not None else 15.0,
                    self.dead_after if self.dead_after is not None else 60.0)
        default_ka = 0.05 if self.role == "server" else 0.2
        keepalive = self.keepalive if self.keepalive is not None else default_ka
        dead_after = self.dead_after if self.dead_after is not None else max(1.0, 3 * keepalive)
        return keepalive, dead_after

    def switch_after(self) -> float | None:
        """Silence (s) after which an active-backup client leaves its active slave for a
        fresh one (see :mod:`tunconnector.proto.silencewatch`); None: watch off."""
        if self.role != "client" or self.failover_after == 0:
            return None
        if self.failover_after is not None:
            return self.failover_after
        if self.wire == "openvpn":  # openvpn peers stay silent for up to `ping` seconds
            return None
        from .proto.bondparams import parse_params

        arp_ms = parse_params(self.bonding, "bonding").arp_interval or 0
        return 1.2 * arp_ms / 1000 if arp_ms > 0 else 0.3

    def validate(self, where: str) -> None:
        from .proto.bondparams import check_params, parse_params

        check_ifname(self.name, f"{where}.name")
        for i, s in enumerate(self.slaves):
            s.validate(f"{where}.slaves[{i}]")
        if self.role == "client" and not self.slaves:
            raise ConfigError(f"{where}.slaves: a client bond needs at least one slave")
        if self.role == "client" and self.ip_address is None:
            raise ConfigError(f"{where}.ip_address: a client bond needs its address")
        if self.role == "server" and self.bridge_ip is None:
            raise ConfigError(f"{where}.bridge_ip: a server needs the bridge's address")
        if self.ip_address is not None:
            _check_ip(self.ip_address, f"{where}.ip_address")
        if self.bridge_ip is not None:
            _check_ip(self.bridge_ip, f"{where}.bridge_ip")
        if self.bind is not None:
            _check_ip(self.bind, f"{where}.bind")
        _within(self.links, f"{where}.links", 1, 64)
        count = len(self.slaves) if self.role == "client" else self.links
        _port(self.base_port + 1, f"{where}.base_port", allow_zero=False)
        _port(self.base_port + count, f"{where}.base_port", allow_zero=False)
        if not 1 <= self.prefixlen <= 32:
            raise ConfigError(f"{where}.prefixlen: {self.prefixlen} outside 1..32")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,9}", self.tap_prefix):
            raise ConfigError(
                f"{where}.tap_prefix: {_short(self.tap_prefix)} must be 1..10 of [A-Za-z0-9_-]"
            )
        if self.keepalive is not None:
            _within(self.keepalive, f"{where}.keepalive", MIN_KEEPALIVE, DAY)
        if self.dead_after is not None:
            _within(self.dead_after, f"{where}.dead_after", MIN_KEEPALIVE, WEEK)
        if self.wire == "openvpn" and not self.openvpn_secret:
            raise ConfigError(f"{where}.openvpn_secret: wire = 'openvpn' needs the OpenVPN "
                              "static key file")
        if self.wire == "openvpn" and self.key_file:
            raise ConfigError(f"{where}.key_file: wire = 'openvpn' uses openvpn_secret")
        if self.failover_after is not None:
            _within(self.failover_after, f"{where}.failover_after", 0.0, DAY)
        keepalive, dead_after = self.liveness()
        if dead_after <= keepalive:
            raise ConfigError(f"{where}.dead_after: must exceed keepalive {keepalive}")
        if self.role == "client":
            params = parse_params(self.bonding, f"{where}.bonding")
            taps = [f"{self.tap_prefix}{i}" for i in range(1, len(self.slaves) + 1)]
            check_params(params, f"{where}.bonding", slaves=taps)
        elif self.bonding:
            raise ConfigError(f"{where}.bonding: only a client bond has bonding options")


@dataclass(slots=True)
class Config:
    """Everything one daemon runs."""

    tunnel: list[TunnelConfig] = field(default_factory=list)
    api: ApiConfig | None = None
    bond: list[BondConfig] = field(default_factory=list)
    privileges: PrivilegesConfig | None = None
    control_dir: str = "/run/tunconnector"
    log_level: str = "info"
    json_logs: bool = False
    #: added to the process's nice value once the tunnels are up (openvpn's ``nice``):
    #: below 0, the daemon's turn comes first when other work shares its CPUs
    nice: int = 0
    #: the scheduler's slice for the daemon (microseconds, 100..100000; 0: the kernel's
    #: default): short, its turn comes sooner where busy processes share its CPUs
    sched_slice_us: int = 0

    def validate(self, where: str = "") -> None:
        seen: set[str] = set()
        devices: set[tuple[str | None, str]] = set()
        for i, t in enumerate(self.tunnel):
            if t.name in seen:
                raise ConfigError(f"tunnel[{i}].name: duplicate tunnel name {_short(t.name)}")
            seen.add(t.name)
            if t.device is not None:
                key = (t.netns, t.device)
                if key in devices:
                    raise ConfigError(f"tunnel[{i}].device: {_short(t.device)} used twice")
                devices.add(key)
        if self.api is not None and self.api.default_tunnel is not None:
            if self.api.default_tunnel not in seen:
                raise ConfigError(
                    f"api.default_tunnel: no tunnel named {_short(self.api.default_tunnel)}"
                )
        if not -20 <= self.nice <= 19:
            raise ConfigError(f"nice: {self.nice} is not within -20..19")
        if self.sched_slice_us and not 100 <= self.sched_slice_us <= 100_000:
            raise ConfigError(f"sched_slice_us: {self.sched_slice_us} is not 0 (the kernel's "
                              "default) or within 100..100000")
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ConfigError(f"log_level: unknown level {_short(self.log_level)}")

    def tunnel_by_name(self, name: str) -> TunnelConfig:
        for t in self.tunnel:
            if t.name == name:
                return t
        raise ConfigError(f"no tunnel named {_short(name)}")

    # -- loading ---------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Config:
        cfg = build(cls, data, "")
        return cfg

    @classmethod
    def from_toml(cls, path: str | Path) -> Config:
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{p}: cannot read config: {exc.strerror}") from exc
        return cls.from_toml_bytes(raw, str(p))

    @classmethod
    def from_toml_bytes(cls, raw: bytes, source: str = "config") -> Config:
        """The text of a TOML file; ``source`` names it in syntax errors."""
        p = source
        try:
            data = tomllib.loads(raw.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from exc
        except RecursionError as exc:  # tomllib recurses once per nested array/table
            raise ConfigError(f"{p}: not valid TOML: arrays or tables nested too deep") from exc
        return cls.from_mapping(data)


# -- generic builder -------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _join(where: str, key: Any) -> str:
    """``where.key``; a key that is not a plain name is quoted and cut short, so a path
    stays one readable token whatever bytes the file held."""
    key = str(key)
    if not _PLAIN_KEY.fullmatch(key):
        key = _short(key, 40)
    return f"{where}.{key}" if where else key


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    """Resolved once per class: evaluating string annotations costs more than the rest
    of a load."""
    return typing.get_type_hints(cls)


def build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys, then validate it."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'}: expected a table, got {type(data).__name__}")
    hints = _type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            if f.metadata.get("argv") and not isinstance(data[name], list):
                raise ConfigError(
                    f"{_join(where, name)}: expected an argv list such as "
                    '["/usr/local/bin/prog", "arg"], not a string (hooks run without a shell)'
                )
            kwargs[name] = _convert(hints[name], data[name], _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{_join(where, name)}: required key missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(where)
    return obj


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None:
            return None
        if len(non_none) == 1:
            return _convert(non_none[0], value, where)
        raise ConfigError(f"{where}: unsupported union")  # pragma: no cover
    if origin is Literal:
        if value not in args:
            choices = " | ".join(repr(a) for a in args)
            raise ConfigError(f"{where}: {_short(value)} is not one of {choices}")
        return value
    if origin is list:
        (item_tp,) = args
        if isinstance(value, str) and item_tp is str:
            value = [value]  # "address" may be a string or a list
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return [_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a table")
        return {str(k): _convert(args[1], v, _join(where, k)) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_short(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            # the enabler sends numbers as strings; ASCII digits only, at most 18 of them
            if isinstance(value, str) and _ASCII_DIGITS.fullmatch(value.strip() or "x"):
                if len(value.strip()) <= 18:
                    return int(value.strip())
            raise ConfigError(f"{where}: expected an integer, got {_short(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {_short(value)}")
        try:
            number = float(value)
        except OverflowError as exc:  # an integer beyond a double's range
            raise ConfigError(f"{where}: number out of range") from exc
        if not math.isfinite(number):
            raise ConfigError(f"{where}: expected a finite number, got {number}")
        return number
    if tp is str:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)  # the enabler sends numbers as strings and vice versa
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {_short(value)}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp!r}")  # pragma: no cover


def _check_ip(text: str, where: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: {_short(text)} is not an IP address") from exc


def _check_network(text: str, where: str) -> None:
    """A network with or without host bits (``10.0.0.1/24`` passes, as ``ip route`` takes it)."""
    try:
        ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ConfigError(f"{where}: {_short(text)} is not a network") from exc


def _port(value: int, where: str, *, allow_zero: bool = False) -> None:
    lo = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= 65535:
        raise ConfigError(f"{where}: port {value} outside {lo}..65535")


def _positive(value: float, where: str) -> None:
    if not value > 0:  # also refuses nan
        raise ConfigError(f"{where}: must be > 0, got {value}")


def _within(value: float, where: str, lo: float, hi: float, *, lo_open: bool = False) -> None:
    """Range check with the key path; refuses nan and inf (every comparison with nan is
    false, so ``not lo <= value`` catches it where ``value < lo`` would let it through)."""
    low_ok = value > lo if lo_open else value >= lo
    if not (low_ok and value <= hi and math.isfinite(value)):
        low = f"({lo}" if lo_open else f"[{lo}"
        raise ConfigError(f"{where}: {_short(value)} outside {low}, {hi}]")


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` of a rejected value cut to ``limit`` characters: an error message must
    not grow with the input (a megabyte string, a 20,000-deep list)."""
    try:
        text = reprlib.repr(value)
    except RecursionError:  # pragma: no cover - reprlib already bounds depth
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_server_config(path: str) -> bool:
    """``openvpn_config`` names an openvpn server config (not a client's .ovpn)."""
    from .ovpnconfig import COMMAND_LINE_KEY
    from .ovpnserverconf import looks_like_server

    if path.startswith(COMMAND_LINE_KEY):
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return looks_like_server(f.read())
    except OSError:
        return False
