"""openvpn's script contract: the positional arguments and the environment of ``up``,
``down``, ``route-up`` and ``route-pre-down`` (openvpn's ``doc/man-sections/
script-options.rst``), built from what the server pushed. Pure: no process is started
here (:mod:`tunconnector.ovpn_process` runs them with :func:`hooks.run_program`).

Positional arguments (``up``/``down``)::

    cmd dev tun_mtu link_mtu ifconfig_local ifconfig_remote|ifconfig_netmask init|restart

``route-up``/``route-pre-down`` get none. The environment is the daemon's plus the
names :func:`script_env` sets (listed in docs/openvpn.md).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .proto.connection import ConfigAssigned

#: openvpn's link-mtu for a TLS client: tun-mtu plus its data channel overhead, as the
#: OCC options string of proto/openvpn/client.py announces it
LINK_MTU_OVERHEAD = 49


@dataclass(slots=True)
class ScriptFacts:
    """What the scripts are told about the tunnel."""

    dev: str
    dev_type: str = "tun"
    tun_mtu: int = 1500
    assigned: ConfigAssigned | None = None
    remote: tuple[str, int] | None = None  # the server (trusted_ip, trusted_port)
    local_port: int | None = None
    proto: str = "udp"
    setenv: Mapping[str, str] = field(default_factory=dict)
    config: str = ""
    daemon: bool = False
    daemon_log_redirect: bool = False
    daemon_start_time: int = 0
    daemon_pid: int = 0
    verb: int = 1

    @property
    def link_mtu(self) -> int:
        return self.tun_mtu + LINK_MTU_OVERHEAD


def _assigned(facts: ScriptFacts) -> tuple[ConfigAssigned, Mapping[str, Any]] | None:
    """The assignment and what the server pushed beyond addresses and routes (ifconfig,
    gateway, options), or None before any."""
    ev = facts.assigned
    return None if ev is None else (ev, ev.extra or {})


def _ifconfig(facts: ScriptFacts) -> dict[str, str]:
    """The ifconfig_* names: from the pushed ifconfig (kept in the assignment's extra),
    else from the assigned addresses."""
    got = _assigned(facts)
    if got is None:
        return {}
    ev, extra = got
    env: dict[str, str] = {}
    v4 = extra.get("ifconfig")
    v6 = extra.get("ifconfig_ipv6")
    for a in ev.addresses:
        iface = ipaddress.ip_interface(a)
        if iface.version == 4 and not v4:
            v4 = (str(iface.ip), str(iface.netmask))
        elif iface.version == 6 and not v6:
            v6 = (str(iface), None)
    if v4:
        local, second = str(v4[0]), str(v4[1])
        env["ifconfig_local"] = local
        subnet = facts.dev_type == "tap" or extra.get("topology") == "subnet" or \
            second.startswith("255.")
        if subnet:
            env["ifconfig_netmask"] = second
            if facts.dev_type == "tap":
                net = ipaddress.IPv4Network(f"{local}/{second}", strict=False)
                env["ifconfig_broadcast"] = str(net.broadcast_address)
        else:
            env["ifconfig_remote"] = second
    if v6:
        iface6 = ipaddress.IPv6Interface(str(v6[0]))
        env["ifconfig_ipv6_local"] = str(iface6.ip)
        env["ifconfig_ipv6_netbits"] = str(iface6.network.prefixlen)
        if v6[1]:
            env["ifconfig_ipv6_remote"] = str(v6[1])
    return env


def _routes(facts: ScriptFacts) -> dict[str, str]:
    """The route_* names (and dhcp-option as foreign_option_N, as openvpn sets them)."""
    got = _assigned(facts)
    if got is None:
        return {}
    ev, extra = got
    gw = extra.get("route_gateway")
    v4 = extra.get("ifconfig")
    if not gw and v4 and not str(v4[1]).startswith("255."):
        gw = v4[1]
    env: dict[str, str] = {}
    if gw:
        env["route_vpn_gateway"] = str(gw)
    n4 = n6 = 0
    for dst, via in ev.routes:
        net = ipaddress.ip_network(dst, strict=False)
        if net.version == 4:
            n4 += 1
            env[f"route_network_{n4}"] = str(net.network_address)
            env[f"route_netmask_{n4}"] = str(net.netmask)
            if via or gw:
                env[f"route_gateway_{n4}"] = str(via or gw)
        else:
            n6 += 1
            env[f"route_ipv6_network_{n6}"] = str(net)
            if via:
                env[f"route_ipv6_gateway_{n6}"] = str(via)
    for i, opt in enumerate(extra.get("dhcp_option") or [], 1):
        env[f"foreign_option_{i}"] = f"dhcp-option {opt}"
    if extra.get("redirect_gateway") is not None:
        env["redirect_gateway"] = "1"
    return env


def _x509(facts: ScriptFacts, chain: Mapping[int, Any] | None = None) -> dict[str, str]:
    """``common_name``, ``X509_{depth}_{attr}``, ``tls_id_N``, ``tls_serial_N``,
    ``tls_serial_hex_N``, ``tls_digest_N``, ``tls_digest_sha256_N`` of the server's chain."""
    from cryptography.hazmat.primitives import hashes, serialization

    from .proto.openvpn.tls import _SHORT, common_name, subject_string

    env: dict[str, str] = {}
    ev = facts.assigned
    if chain is None:
        chain = (ev.extra or {}).get("peer_chain") if ev is not None else None
    for depth, cert in sorted((chain or {}).items()):
        for attr in cert.subject:
            name = _SHORT.get(attr.oid, attr.oid.dotted_string)
            env[f"X509_{depth}_{name}"] = str(attr.value)
        env[f"tls_id_{depth}"] = subject_string(cert)
        serial = cert.serial_number
        env[f"tls_serial_{depth}"] = str(serial)
        hexs = f"{serial:x}"
        hexs = ("0" if len(hexs) % 2 else "") + hexs
        env[f"tls_serial_hex_{depth}"] = ":".join(hexs[i:i + 2] for i in range(0, len(hexs), 2))
        der = cert.public_bytes(serialization.Encoding.DER)
        for key, algo in ((f"tls_digest_{depth}", hashes.SHA1()),
                          (f"tls_digest_sha256_{depth}", hashes.SHA256())):
            h = hashes.Hash(algo)
            h.update(der)
            env[key] = ":".join(f"{b:02x}" for b in h.finalize())
        if depth == 0:
            env["common_name"] = common_name(cert)
    return env


def script_env(facts: ScriptFacts, script_type: str, *, context: str = "init",
               signal: str | None = None, now: float | None = None) -> dict[str, str]:
    """The environment openvpn gives ``script_type`` (up, down, route-up ...)."""
    t = time.time() if now is None else now
    env: dict[str, str] = dict(facts.setenv)
    env.update({
        "script_type": script_type,
        "script_context": context,
        "dev": facts.dev,
        "dev_type": facts.dev_type,
        "tun_mtu": str(facts.tun_mtu),
        "link_mtu": str(facts.link_mtu),
        "config": facts.config,
        "daemon": "1" if facts.daemon else "0",
        "daemon_log_redirect": "1" if facts.daemon_log_redirect else "0",
        "daemon_start_time": str(facts.daemon_start_time),
        "daemon_pid": str(facts.daemon_pid),
        "verb": str(facts.verb),
        "proto_1": facts.proto,
        "time_unix": str(int(t)),
        "time_ascii": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)),
    })
    if facts.remote is not None:
        host, port = facts.remote
        env.update(trusted_ip=host, trusted_port=str(port), remote_1=host,
                   remote_port_1=str(port), ifconfig_pool_remote_ip="")
        del env["ifconfig_pool_remote_ip"]
    if facts.local_port:
        env["local_port_1"] = str(facts.local_port)
    env.update(_ifconfig(facts))
    env.update(_routes(facts))
    env.update(_x509(facts))
    if signal is not None:
        env["signal"] = signal
    return env


def tls_verify_env(facts: ScriptFacts, depth: int, cert: Any) -> dict[str, str]:
    """The environment of ``tls-verify`` for the certificate at ``depth``: the server is
    not trusted yet (``untrusted_ip``/``untrusted_port``), its certificate's names."""
    env = {k: v for k, v in script_env(facts, "tls-verify").items()
           if not k.startswith(("trusted_", "ifconfig_", "route_"))}
    if facts.remote is not None:
        env["untrusted_ip"], env["untrusted_port"] = facts.remote[0], str(facts.remote[1])
    env.update(_x509(facts, {depth: cert}))
    return env


def script_args(facts: ScriptFacts, script_type: str, *, context: str = "init") -> list[str]:
    """openvpn's positional arguments after the command (none for route scripts)."""
    if script_type == "ipchange":  # cmd ip port
        return [facts.remote[0], str(facts.remote[1])] if facts.remote else ["", ""]
    if script_type not in ("up", "down"):
        return []
    env = _ifconfig(facts)
    second = env.get("ifconfig_netmask") or env.get("ifconfig_remote") or ""
    return [facts.dev, str(facts.tun_mtu), str(facts.link_mtu),
            env.get("ifconfig_local", ""), second, context]


def command(argv: Sequence[str], facts: ScriptFacts, script_type: str, *,
            context: str = "init") -> list[str]:
    return [*argv, *script_args(facts, script_type, context=context)]
