"""Command line: TunConnector's flags (``-m server|client|both ...``) plus subcommands.

``main(argv) -> int``; the only place that turns errors into exit codes:
0 clean shutdown, 1 runtime failure, 2 bad usage or bad configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, Literal

from . import __version__
from .config import Config
from .errors import ConfigError, TunconnectorError

log = logging.getLogger("tunconnector.cli")

ENV_CONTROL_DIR = "TUNCONNECTOR_CONTROL_DIR"


def run_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """uvloop when importable (started with ``uvloop.run``, never ``install``), else asyncio."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(coro)
    return uvloop.run(coro)


# ------------------------------------------------------------------ legacy TunConnector flags
def _add_tunnel_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dev-type", choices=["tun", "tap"], default="tun")
    p.add_argument("--proto", choices=["udp", "tcp"], default="udp")
    p.add_argument("--framing", choices=["native", "raw", "simpletun", "openvpn"],
                   default=None,
                   help="default: native (simpletun is TCP only, raw UDP only; openvpn: "
                   "OpenVPN static-key mode, needs --openvpn-secret)")
    p.add_argument("--packet-info", action="store_true", default=None,
                   help="raw framing: a 4-byte packet-information header before every "
                   "frame (socat's TUN without iff-no-pi)")
    p.add_argument("--mtu", type=int, default=None)
    p.add_argument("--keepalive", type=float, default=10.0, metavar="S")
    p.add_argument("--dead-after", type=float, default=60.0, metavar="S")
    p.add_argument("--bind", default=None, metavar="ADDR", help="local underlay address")
    p.add_argument("--bind-interface", default=None, metavar="IF",
                   help="bind the underlay socket to this interface (SO_BINDTODEVICE)")
    p.add_argument("--netns", default=None, help="put the device(s) in this network namespace")
    p.add_argument("--key", default=None, metavar="FILE", help="pre-shared key file (genkey)")
    p.add_argument("--cipher", choices=["auto", "chacha20-poly1305", "aes-256-gcm"],
                   default=None, help="default auto: negotiated, AES-256-GCM preferred "
                   "where the CPU has AES instructions")
    p.add_argument("--private-key", default=None, metavar="FILE",
                   help="X25519 private key file (genkey --keypair): public-key mode")
    p.add_argument("--peer-public-key", default=None, metavar="KEY",
                   help="the peer's public key (base64), with --private-key")
    p.add_argument("--offload", choices=["auto", "off"], default=None)
    p.add_argument("--openvpn-secret", default=None, metavar="FILE",
                   help="framing openvpn: OpenVPN static key file (openvpn --genkey secret)")
    p.add_argument("--key-direction", type=int, choices=[0, 1], default=None,
                   help="framing openvpn: key direction (absent: both ways use key 0)")
    p.add_argument("--openvpn-cipher", default=None, metavar="C",
                   help="framing openvpn: none | AES-128-CBC | AES-256-CBC (default)")
    p.add_argument("--openvpn-auth", default=None, metavar="A",
                   help="framing openvpn: SHA1 (default) | SHA256 | SHA512 | none")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"])
    p.add_argument("--json-logs", action="store_true", help="JSON lines on stderr")
    p.add_argument("--nice", type=int, default=None, metavar="N",
                   help="add N (-20..19) to the process's nice value once the tunnels are "
                   "up, as openvpn's --nice (below 0: first turn on busy CPUs)")
    p.add_argument("--sched-slice-us", type=int, default=None, metavar="US",
                   help="the scheduler's slice for the daemon (100..100000 us; Linux 6.12+): "
                   "short, its packets wait less where busy processes share its CPUs")
    p.add_argument("--control-dir", default=os.environ.get(ENV_CONTROL_DIR, "/run/tunconnector"),
                   help=argparse.SUPPRESS)


def legacy_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tunconnector",
        description="TUN/TAP tunnels over UDP or TCP. Subcommands: " + ", ".join(SUBCOMMANDS)
        + " (tunconnector SUBCOMMAND -h).",
    )
    p.add_argument("-V", "--version", action="version", version=f"tunconnector {__version__}")
    p.add_argument("-m", "--mode", choices=["server", "client", "both"], default="both")
    p.add_argument("-p", "--serverinterface", metavar="IF", help="server device name")
    p.add_argument("-n", "--clientinterface", metavar="IF", help="client device name")
    p.add_argument("-s", "--serverip", metavar="ADDR[/LEN]", help="server tunnel address (/24)")
    p.add_argument("-c", "--clientip", metavar="ADDR[/LEN]", help="client tunnel address (/24)")
    p.add_argument("-i", "--inport", type=int, default=55556, help="server listen port")
    p.add_argument("-r", "--remoteip", metavar="ADDR", help="server to connect to")
    p.add_argument("-o", "--outport", type=int, default=55556, help="remote server port")
    _add_tunnel_options(p)
    _add_common(p)
    _add_check(p)
    return p


def _add_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("--check", action="store_true",
                   help="validate the configuration and exit (0 valid, 2 invalid)")


def report_valid(config: Config, source: str) -> int:
    """What ``--check`` prints for a configuration that passed validation."""
    parts = [f"{len(config.tunnel)} tunnel(s)"]
    if config.bond:
        parts.append(f"{len(config.bond)} bond(s)")
    if config.api is not None:
        parts.append(f"api on {config.api.listen}")
    print(f"{source}: valid ({', '.join(parts)})")
    return 0


def config_from_legacy(args: argparse.Namespace) -> Config:
    framing = args.framing or "native"
    common: dict[str, Any] = {
        "dev_type": args.dev_type,
        "proto": args.proto,
        "framing": framing,
        "keepalive": args.keepalive,
        "dead_after": args.dead_after,
    }
    for key, val in (("mtu", args.mtu), ("bind", args.bind), ("netns", args.netns),
                     ("bind_interface", args.bind_interface), ("key_file", args.key),
                     ("cipher", args.cipher), ("offload", args.offload),
                     ("private_key_file", args.private_key),
                     ("peer_public_key", args.peer_public_key),
                     ("openvpn_secret", args.openvpn_secret),
                     ("key_direction", args.key_direction),
                     ("openvpn_cipher", args.openvpn_cipher),
                     ("openvpn_auth", args.openvpn_auth),
                     ("packet_info", args.packet_info)):
        if val is not None:
            common[key] = val
    tunnels: list[dict[str, Any]] = []
    if args.mode in ("server", "both"):
        if not args.serverip:
            raise ConfigError("-s/--serverip: the server needs a tunnel address")
        t = {"name": "server", "mode": "server", "address": [args.serverip],
             "port": args.inport, **common}
        if args.serverinterface:
            t["device"] = args.serverinterface
        tunnels.append(t)
    if args.mode in ("client", "both"):
        if not args.clientip:
            raise ConfigError("-c/--clientip: the client needs a tunnel address")
        if not args.remoteip:
            raise ConfigError("-r/--remoteip: the client needs the server's address")
        t = {"name": "client", "mode": "client", "address": [args.clientip],
             "remote": args.remoteip, "remote_port": args.outport, **common}
        if args.clientinterface:
            t["device"] = args.clientinterface
        tunnels.append(t)
    return Config.from_mapping({
        "tunnel": tunnels, "control_dir": args.control_dir,
        "log_level": args.log_level, "json_logs": args.json_logs, "nice": args.nice or 0,
        "sched_slice_us": args.sched_slice_us or 0,
    })


def _serve(config: Config, config_path: str | None = None) -> int:
    from . import memory
    from .log import setup
    from .node import serve

    setup(config.log_level, config.json_logs)
    memory.tune()  # before the data path's first big buffer (see memory.py)
    memory.freeze_gc()
    run_loop(serve(config, services=default_services(config), config_path=config_path))
    return 0


def default_services(config: Config) -> list[Any]:
    """Services the daemon starts with its tunnels (API, health, bonds) when configured."""
    services: list[Any] = []
    for factory in SERVICE_FACTORIES:
        services.extend(factory(config))
    return services


#: modules append callables ``(config) -> list[Service]`` here (API, health, bond)
SERVICE_FACTORIES: list[Callable[[Config], list[Any]]] = []


# ------------------------------------------------------------------ subcommands
def cmd_run(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="tunconnector run", description="run tunnels from a TOML file")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    _add_common(p)
    _add_check(p)
    args = p.parse_args(argv)
    config = Config.from_toml(args.config)
    if args.check:
        return report_valid(config, args.config)
    if "--log-level" in argv:
        config.log_level = args.log_level
    if args.json_logs:
        config.json_logs = True
    if args.nice is not None:
        config.nice = args.nice
    if args.sched_slice_us is not None:
        config.sched_slice_us = args.sched_slice_us
    if args.nice is not None or args.sched_slice_us is not None:
        config.validate()
    if "--control-dir" in argv or os.environ.get(ENV_CONTROL_DIR):
        config.control_dir = args.control_dir
    return _serve(config, os.path.abspath(args.config))


def cmd_reload(argv: Sequence[str]) -> int:
    """Ask running daemons to re-read their config file (as SIGHUP does)."""
    from .status import query_all

    p = argparse.ArgumentParser(prog="tunconnector reload",
                                description="re-read the config file of every daemon here "
                                "and apply peer changes of hubs (as SIGHUP)")
    p.add_argument("--control-dir", default=os.environ.get(ENV_CONTROL_DIR, "/run/tunconnector"))
    args = p.parse_args(argv)
    replies = query_all(args.control_dir, {"cmd": "reload"}, timeout=30.0)
    if not replies:
        print("no running tunconnector daemon")
        return 1
    rc = 0
    for r in replies:
        if r.get("error"):
            print(f"daemon pid {r.get('pid')}: reload failed: {r['error']}")
            rc = 1
            continue
        for name, res in (r.get("reloaded") or {}).items():
            parts = [f"{k} {','.join(v)}" for k, v in res.items() if v and k != "unchanged"]
            print(f"daemon pid {r.get('pid')}: {name}: {'; '.join(parts) or 'no change'}")
    return rc


def cmd_check(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(
        prog="tunconnector check",
        description="validate a TOML file, an OpenVPN client .ovpn or an OpenVPN server "
        "config (one with 'server', 'server-bridge', 'server-ipv6', 'mode server' or "
        "'tls-server') without starting anything: exit 0 when valid, 2 when not (the "
        "message starts with the key's path, or the file and line)")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    args = p.parse_args(argv)
    if args.config.endswith(".ovpn"):  # what `tunconnector openvpn -c` runs
        return report_valid(Config.from_mapping(
            {"tunnel": [{"name": "openvpn", "openvpn_config": args.config}]}), args.config)
    try:
        text: str | None = Path(args.config).read_text()
    except (OSError, UnicodeDecodeError):
        text = None  # from_toml says why
    from .ovpnserverconf import looks_like_server

    if text is not None and looks_like_server(text):
        return check_server(args.config)
    return report_valid(Config.from_toml(args.config), args.config)


def check_server(path: str) -> int:
    """An openvpn server config: read as the server would, built without any I/O."""
    from .ovpnserverconf import load

    server = load(path)
    server.check()
    for warning in server.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{path}: valid ({server.summary()})")
    return 0


def cmd_openvpn(argv: Sequence[str]) -> int:
    """openvpn's own command line (``--cd DIR --config FILE --directive ARGS``, ``-c FILE``)
    plus ``--name``, ``--device``, ``--netns``, ``--allow-redirect-gateway``: see
    :mod:`tunconnector.ovpn_process` (also the ``tunconnector-openvpn`` console script)."""
    from .ovpn_process import cmd_openvpn as run

    return run(argv)


def _counts(counts: dict[str, Any], sep: str, empty: str) -> str:
    """A status row's counters as ``name=count`` joined by ``sep``; ``empty`` for none."""
    return sep.join(f"{k}={v}" for k, v in counts.items()) or empty


def _traffic(row: dict[str, Any], gap: str) -> str:
    """A status row's bytes and packets each way, ``gap`` between the two."""
    return (f"in {row['rx_bytes']} B/{row['rx_packets']} pkts{gap}"
            f"out {row['tx_bytes']} B/{row['tx_packets']} pkts")


def _detail(text: str) -> None:
    """Print one of a tunnel's detail lines, indented past the name column of its first."""
    print(f"  {'':<12} {text}")


def _path_line(path: dict[str, Any]) -> str:
    """A multi-path tunnel's status line for one path; ``*`` marks the one carrying."""
    rtt = path.get("rtt")
    return (f"{'*' if path.get('active') else ' '}path {path['name']:<10} "
            f"{path['state']:<7} rtt {'-' if rtt is None else f'{rtt * 1000:.1f}ms'} "
            f"loss {100 * (path.get('loss') or 0):.1f}%  "
            f"{path.get('local') or '-'} -> {path.get('remote') or '-'}")


def _peer_line(pe: dict[str, Any]) -> str:
    """A hub's status line for one peer."""
    hs = pe.get("last_handshake_age")
    return (f"peer {pe['name']:<12} {pe.get('key') or '-'}… {pe['state']:<5} "
            f"{pe.get('endpoint') or '-'} {pe.get('address') or '-'} "
            f"allowed {','.join(pe.get('allowed_ips') or []) or '-'} "
            f"handshake {'-' if hs is None else f'{hs:.0f}s ago'} "
            f"{_traffic(pe, ' ')} drops {_counts(pe.get('drops', {}), ',', '-')}")


def cmd_status(argv: Sequence[str]) -> int:
    from .status import DEFAULT_TIMEOUT, query_all

    p = argparse.ArgumentParser(prog="tunconnector status",
                                description="status of every tunnel of every daemon here")
    p.add_argument("--json", action="store_true")
    p.add_argument("--control-dir", default=os.environ.get(ENV_CONTROL_DIR, "/run/tunconnector"))
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help="a daemon not answering within this is reported unresponsive "
                   f"(default {DEFAULT_TIMEOUT:g})")
    args = p.parse_args(argv)
    replies = query_all(args.control_dir, timeout=args.timeout)
    # a daemon that does not answer (stopped, hung) is named and makes the exit status 1
    rc = 1 if any(r.get("unresponsive") for r in replies) else 0
    if args.json:
        print(json.dumps(replies, indent=2, default=str))
        return rc
    if not replies:
        print("no running tunconnector daemon")
        return 0
    for r in replies:
        if r.get("unresponsive"):
            print(f"daemon pid {r.get('pid')} ({r.get('socket')}): NOT RESPONDING: "
                  f"{r.get('error')}")
            continue
        print(f"daemon pid {r.get('pid')} (v{r.get('version')})")
        for t in r.get("tunnels", []):
            age = t.get("last_rx_age")
            drops = _counts(t.get("drops", {}), ", ", "none")
            print(
                f"  {t['name']:<12} {t['state']:<8} {t['mode']:<6} {t['transport']:<14} "
                f"dev {t.get('device') or '-'} {','.join(t.get('addresses', []))} "
                f"peer {t.get('peer') or '-'}"
            )
            if t.get("error"):  # why it is down (failed start, device missing, ...)
                _detail(f"error: {t['error']}")
            _detail(
                f"last rx {'-' if age is None else f'{age:.1f}s ago'}  "
                f"{_traffic(t, '  ')}  drops: {drops}"
            )
            for path in t.get("paths") or []:  # multi-path: one line per path
                _detail(_path_line(path))
            for pe in t.get("peers") or []:  # a hub: one line per peer
                _detail(_peer_line(pe))
            crypto = t.get("crypto")
            if crypto:
                age = crypto.get("session_age")
                _detail(
                    f"encrypted {crypto.get('cipher')} "
                    f"{crypto.get('mode', '')} session "
                    f"{'up' if crypto.get('established') else 'down'}"
                    f"{'' if age is None else f' age {age:.0f}s'}  "
                    f"handshakes {crypto.get('handshakes', 0)} rekeys {crypto.get('rekeys', 0)}"
                )
            health = t.get("health")
            if health:  # [tunnel.health]: verdict over the last `probes` echoes
                rtt = health.get("rtt_avg")
                _detail(
                    f"health {health.get('state')} target {health.get('target')} "
                    f"{health.get('window_answered')}/{health.get('window')} answered"
                    f"{'' if rtt is None else f' rtt {rtt * 1000:.1f}ms'}"
                )
            hooks = t.get("hooks")
            if hooks:  # [tunnel.hooks]: runs per event, failures never stop the tunnel
                runs = ", ".join(
                    f"{ev} {c.get('ok', 0)}/{c.get('runs', 0)} ok"
                    for ev, c in hooks.items() if isinstance(c, dict)
                )
                last = hooks.get("last_error")
                _detail(f"hooks {runs or 'none run'}  failures {hooks.get('failures', 0)}"
                        f"{'' if not last else f' (last: {last})'}")
    return rc


def cmd_mktun(argv: Sequence[str]) -> int:
    from .io.device import make_persistent

    p = argparse.ArgumentParser(prog="tunconnector mktun",
                                description="create a persistent TUN/TAP device")
    p.add_argument("--dev", required=True)
    p.add_argument("--dev-type", choices=["tun", "tap"], default="tun")
    p.add_argument("--user", default=None)
    args = p.parse_args(argv)
    name = make_persistent(args.dev, args.dev_type, args.user)
    print(f"{name} created (persistent {args.dev_type})")
    return 0


def cmd_rmtun(argv: Sequence[str]) -> int:
    from .io.device import remove_persistent

    p = argparse.ArgumentParser(prog="tunconnector rmtun",
                                description="remove a persistent TUN/TAP device")
    p.add_argument("--dev", required=True)
    p.add_argument("--dev-type", choices=["tun", "tap"], default=None,
                   help="default: try tun, then tap")
    args = p.parse_args(argv)
    types: list[Literal["tun", "tap"]] = [args.dev_type] if args.dev_type else ["tun", "tap"]
    last: Exception | None = None
    for t in types:
        try:
            remove_persistent(args.dev, t)
            print(f"{args.dev} removed")
            return 0
        except TunconnectorError as exc:
            last = exc
    assert last is not None
    raise last


def _private_stdout() -> None:
    """``genkey > tunnel.key``: make that file 0600 before a key is written into it."""
    import stat

    try:
        st = os.fstat(sys.stdout.fileno())
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
            os.fchmod(sys.stdout.fileno(), 0o600)
    except (OSError, ValueError, AttributeError):  # pragma: no cover - odd stdout
        print("tunconnector: warning: could not restrict the output file to mode 0600",
              file=sys.stderr)


def cmd_genkey(argv: Sequence[str]) -> int:
    from .keys import generate_keypair, generate_psk, public_from_private, write_key_file

    p = argparse.ArgumentParser(
        prog="tunconnector genkey",
        description="print a new pre-shared key (base64, 32 bytes); with --keypair write an "
        "X25519 private key to FILE (mode 0600) and print its public key",
    )
    p.add_argument("--keypair", metavar="FILE", nargs="?", const="-", default=None,
                   help="public-key mode: private key to FILE ('-' or no FILE: stdout, "
                   "then the public key on stderr)")
    p.add_argument("--public", metavar="FILE", default=None,
                   help="print the public key of an existing private key file")
    p.add_argument("-o", "--output", metavar="FILE", default=None,
                   help="write the PSK to FILE (mode 0600, never overwritten)")
    p.add_argument("--openvpn", metavar="FILE", nargs="?", const="-", default=None,
                   help="an OpenVPN static key (openvpn --secret) to FILE (mode 0600) or "
                   "-o FILE, else stdout")
    args = p.parse_args(argv)
    _private_stdout()
    if args.openvpn is not None:
        from .keys import write_openvpn_key_file
        from .proto.openvpn.keyfile import format_static_key

        target = args.openvpn if args.openvpn != "-" else args.output
        if target:
            write_openvpn_key_file(target)
        else:
            import secrets

            sys.stdout.write(format_static_key(secrets.token_bytes(256)))
        return 0
    if args.public:
        from .keys import load_key_file

        print(public_from_private(load_key_file(args.public)))
        return 0
    if args.keypair is not None:
        priv, pub = generate_keypair()
        if args.keypair == "-":
            print(priv)
            print(f"public key: {pub}", file=sys.stderr)
        else:
            write_key_file(args.keypair, priv)
            print(pub)
        return 0
    psk = generate_psk()
    if args.output:
        write_key_file(args.output, psk)
    else:
        print(psk)
    return 0


def cmd_demo(argv: Sequence[str]) -> int:
    from .demo import main as demo_main

    return demo_main(argv)


def cmd_bench(argv: Sequence[str]) -> int:
    """``python -m bench`` of a source checkout (bench/ is not installed: it drives
    OpenVPN, socat, iperf3 and namespaces, a developer's tool): the checkout this package
    runs from (``pip install -e``), else the current directory or one above it (an
    install elsewhere, run from inside a clone). The tunnels it starts are this
    interpreter's ``python -m tunconnector``, wherever it is installed."""
    import importlib.util

    if importlib.util.find_spec("bench") is None:
        here = Path.cwd().resolve()
        candidates = [Path(__file__).resolve().parent.parent, here, *here.parents]
        repo = next((c for c in candidates if (c / "bench" / "run.py").exists()), None)
        if repo is None:
            raise TunconnectorError(
                "tunconnector bench needs a source checkout (bench/ is not installed): "
                "run it from inside a git clone")
        sys.path.insert(0, str(repo))
    from bench.run import main as bench_main

    return int(bench_main(list(argv)))


def cmd_install_systemd(argv: Sequence[str]) -> int:
    from .install import main as install_main

    return install_main(argv)


SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "run": cmd_run,
    "check": cmd_check,
    "openvpn": cmd_openvpn,
    "status": cmd_status,
    "reload": cmd_reload,
    "mktun": cmd_mktun,
    "rmtun": cmd_rmtun,
    "demo": cmd_demo,
    "bench": cmd_bench,
    "genkey": cmd_genkey,
    "install-systemd": cmd_install_systemd,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args and args[0] in SUBCOMMANDS:
            return SUBCOMMANDS[args[0]](args[1:])
        parsed = legacy_parser().parse_args(args)
        config = config_from_legacy(parsed)
        if parsed.check:
            return report_valid(config, "flags")
        return _serve(config)
    except ConfigError as exc:
        print(f"tunconnector: config error: {exc}", file=sys.stderr)
        return 2
    except TunconnectorError as exc:
        print(f"tunconnector: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
