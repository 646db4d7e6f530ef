"""One client's server-side config: a ``client-config-dir`` file or what a
``client-connect`` script wrote, sans I/O.

openvpn reads both into the client's copy of the server options with the same parser
(``options_server_import`` with ``CLIENT_CONNECT_OPT_MASK``, multi.c), line by line, so
order matters: ``push-reset`` empties the push list *as it is at that line* (the
config's pushes and what ``server``/``keepalive`` added: topology, route-gateway, ping
all go), ``push-remove X`` disables every entry so far that starts with X (so
``push-remove route`` also drops ``route-gateway`` and ``route-ipv6``), a later
``push`` appends. :func:`parse_client_config` turns the text into a
:class:`ClientConfig`; :func:`apply_push` runs its push operations on a push list.
Reading the directory or running the script stays outside proto/.
"""

from __future__ import annotations

import ipaddress
import logging
import shlex
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

#: openvpn's CCD_DEFAULT: the file used for a common name without its own
CCD_DEFAULT = "DEFAULT"
#: options of a client config we do not act on but that are harmless to skip
_IGNORED = frozenset({"echo", "setenv", "setenv-safe", "ping", "ping-restart",
                      "ping-exit", "inactive", "comp-lzo", "compress", "socket-flags"})


@dataclass(slots=True)
class ClientConfig:
    """What one client-config text says, in the order it says it."""

    #: ``ifconfig-push LOCAL REMOTE-NETMASK [ALIAS]``
    ifconfig_push: tuple[ipaddress.IPv4Address, ipaddress.IPv4Address,
                         ipaddress.IPv4Address | None] | None = None
    #: ``ifconfig-ipv6-push ADDR/BITS [REMOTE]`` (REMOTE: the server's own if absent)
    ifconfig_ipv6_push: tuple[ipaddress.IPv6Interface, ipaddress.IPv6Address | None] | \
        None = None
    iroutes: list[ipaddress.IPv4Network] = field(default_factory=list)
    iroutes_ipv6: list[ipaddress.IPv6Network] = field(default_factory=list)
    #: ("push", text), ("push-reset", ""), ("push-remove", prefix), in file order
    push_ops: list[tuple[str, str]] = field(default_factory=list)
    disable: bool = False
    #: lines refused (logged, then skipped, as openvpn does with M_OPTERR in a CCD)
    errors: list[str] = field(default_factory=list)

    def extend(self, later: ClientConfig) -> ClientConfig:
        """This config followed by ``later`` (a CCD file, then the client-connect
        script's file): one options object in openvpn, so later lines override
        addresses and append routes and push operations."""
        return ClientConfig(
            later.ifconfig_push or self.ifconfig_push,
            later.ifconfig_ipv6_push or self.ifconfig_ipv6_push,
            self.iroutes + later.iroutes, self.iroutes_ipv6 + later.iroutes_ipv6,
            self.push_ops + later.push_ops, self.disable or later.disable,
            self.errors + later.errors)


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line, comments=False, posix=True)
    except ValueError:
        return line.split()


def parse_client_config(text: str, source: str = "client-config-dir") -> ClientConfig:
    """Parse a CCD file / client-connect output. Bad or disallowed lines (``config``:
    tunconnector reads no other file from a client config) go to ``errors``."""
    cfg = ClientConfig()
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        words = _words(line)
        if words and words[0].startswith("--"):
            words[0] = words[0][2:]
        name, args = words[0], words[1:]
        try:
            _one(cfg, name, args)
        except ValueError as exc:
            msg = f"{source}:{n}: {name}: {exc}"
            log.warning("openvpn server: %s (line ignored)", msg)
            cfg.errors.append(msg)
    return cfg


def _one(cfg: ClientConfig, name: str, args: list[str]) -> None:
    if name == "ifconfig-push" and len(args) in (2, 3):
        local, remote = ipaddress.IPv4Address(args[0]), ipaddress.IPv4Address(args[1])
        alias = ipaddress.IPv4Address(args[2]) if len(args) == 3 else None
        cfg.ifconfig_push = (local, remote, alias)
    elif name == "ifconfig-ipv6-push" and len(args) in (1, 2):
        if "/" not in args[0]:
            raise ValueError("needs ADDRESS/BITS")
        cfg.ifconfig_ipv6_push = (ipaddress.IPv6Interface(args[0]),
                                  ipaddress.IPv6Address(args[1]) if len(args) == 2 else None)
    elif name == "iroute" and len(args) in (1, 2):
        mask = args[1] if len(args) == 2 else "255.255.255.255"
        # option_iroute: a network and a valid netmask; host bits are masked off
        cfg.iroutes.append(ipaddress.IPv4Network(f"{args[0]}/{mask}", strict=False))
    elif name == "iroute-ipv6" and len(args) == 1:
        cfg.iroutes_ipv6.append(ipaddress.IPv6Network(args[0], strict=False))
    elif name == "push" and len(args) == 1:
        if "," in args[0]:
            raise ValueError("a pushed option cannot contain a comma")
        cfg.push_ops.append(("push", args[0].strip()))
    elif name == "push-reset" and not args:
        cfg.push_ops.append(("push-reset", ""))
    elif name == "push-remove" and len(args) == 1:
        cfg.push_ops.append(("push-remove", args[0]))
    elif name == "disable" and not args:
        cfg.disable = True
    elif name == "config":
        raise ValueError("not allowed in a client config (put the lines in this file)")
    elif name in _IGNORED:
        log.info("openvpn server: client config option %s not used", name)
    else:
        raise ValueError("unknown option or wrong number of arguments")


@dataclass(frozen=True, slots=True)
class PushResult:
    """The push list after a client config's operations, and whether ``push-remove
    ifconfig`` / ``push-remove ifconfig-ipv6`` blocked the address options."""

    push: list[str]
    block_ifconfig: bool = False
    block_ifconfig_ipv6: bool = False


def apply_push(push: list[str], ops: list[tuple[str, str]]) -> PushResult:
    """``push``, ``push-reset`` and ``push-remove`` on a push list, as openvpn's
    ``push_option``, ``push_reset`` and ``push_remove_option`` (push.c): removal is a
    prefix match on the whole option text; "ifconfig" and "ifconfig-ipv6" exactly
    are not in the list and block those options instead."""
    out = list(push)
    block4 = block6 = False
    for op, arg in ops:
        if op == "push":
            out.append(arg)
        elif op == "push-reset":
            out.clear()
        elif arg == "ifconfig":
            block4 = True
        elif arg == "ifconfig-ipv6":
            block6 = True
        else:
            out = [p for p in out if not p.startswith(arg)]
    return PushResult(out, block4, block6)


def lookup(configs: dict[str, ClientConfig], common_name: str | None) -> ClientConfig | None:
    """The client's file, else ``DEFAULT`` (``multi_client_connect_source_ccd``)."""
    if common_name is not None and common_name in configs:
        return configs[common_name]
    return configs.get(CCD_DEFAULT)


def exclusive_allows(configs: dict[str, ClientConfig], common_name: str | None) -> bool:
    """``ccd-exclusive``: only a client with its own file (not DEFAULT) may connect
    (``verify_final_auth_checks``, ssl_verify.c)."""
    return common_name is not None and common_name != CCD_DEFAULT and \
        common_name in configs


__all__ = ["CCD_DEFAULT", "ClientConfig", "PushResult", "apply_push", "exclusive_allows",
           "lookup", "parse_client_config"]
