"""``tunconnector openvpn`` / ``tunconnector-openvpn``: an openvpn client process.

Takes openvpn's own command line (``--cd DIR --config FILE --directive ARGS ...``; see
:func:`tunconnector.ovpnconfig.parse_argv`) plus tunconnector's few flags, and behaves
as an openvpn 2.6 client process does for the tools around it:

- ``daemon [NAME]``: forks; the parent returns 0 once the config is valid, the
  management socket listens and the device is open (else prints why and returns 1,
  or 2 for a bad config); the child runs in its own session with stdin on /dev/null
  and stdout/stderr in the ``log`` file (or /dev/null).
- ``log``/``log-append`` FILE, ``writepid`` FILE (removed on exit), ``status FILE [N]``.
- ``up``/``down``/``route-up``/``route-pre-down`` scripts with openvpn's arguments and
  environment (:mod:`tunconnector.ovpn_scripts`), under ``script-security 2``; a failing
  ``up`` script stops the process (exit 1), as openvpn.
- ``management``: :mod:`tunconnector.ovpn_mgmt`, with ``>STATE:`` CONNECTING,
  ASSIGN_IP, ADD_ROUTES, CONNECTED, RECONNECTING, EXITING; the unix socket is removed
  on exit.
- SIGTERM/SIGINT (or ``signal SIGTERM``) stop; SIGHUP/SIGUSR1 restart the tunnel (down
  and up scripts run again with ``restart``); SIGUSR2 logs the status.

The tunnel itself is the ordinary :class:`~tunconnector.tunnel.Tunnel` of a one-tunnel
Node, so ``tunconnector status``, metrics and the control socket see it as any tunnel.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import re
import select
import signal
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal

from . import __version__
from .config import Config
from .errors import ConfigError, TunconnectorError
from .ovpn_mgmt import TITLE, Backend, Management
from .ovpn_scripts import ScriptFacts, command, script_env
from .ovpnconfig import CMDLINE, COMMAND_LINE_KEY, OvpnConfig, parse_argv, register
from .proto.connection import ConfigAssigned
from .tunnel import State

log = logging.getLogger("tunconnector.openvpn")

#: tunconnector's own flags of `tunconnector openvpn` (everything else is openvpn's)
OWN_WITH_ARG = ("--name", "--device", "--netns", "--log-level", "--control-dir")
OWN_FLAGS = ("--allow-redirect-gateway", "--json-logs", "--check")
#: how long a daemon's parent waits for the child to have the device open
DAEMON_READY_TIMEOUT = 60.0
#: longest an up/down script may run (openvpn has none; a hung script must not hang us)
SCRIPT_TIMEOUT = 120.0
#: tls-verify runs inside the handshake (blocking, as openvpn's): kept short
TLS_VERIFY_TIMEOUT = 20.0

USAGE = """\
usage: tunconnector openvpn [openvpn options...] [tunconnector options]
       tunconnector-openvpn --cd DIR --config FILE [--directive ARGS ...]

openvpn's command line: --config FILE (or -c FILE), --cd DIR, and any supported
directive as --directive ARGS (docs/openvpn.md lists them); a single FILE argument is
--config FILE.
tunconnector options: --name NAME, --device IF, --netns NS, --allow-redirect-gateway,
--log-level debug|info|warning|error, --json-logs, --check (validate and exit).
"""


def main(argv: Sequence[str] | None = None) -> int:
    """The ``tunconnector-openvpn`` console script (symlink it as ``openvpn``)."""
    from .cli import main as cli_main

    return cli_main(["openvpn", *(sys.argv[1:] if argv is None else argv)])


def split_argv(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    """tunconnector's flags apart from openvpn's options (``-c X`` is ``--config X``)."""
    own = argparse.Namespace(name=None, device=None, netns=None, log_level="info",
                             control_dir=os.environ.get("TUNCONNECTOR_CONTROL_DIR",
                                                        "/run/tunconnector"),
                             allow_redirect_gateway=False, json_logs=False, check=False)
    rest: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        tok = args[i]
        key, eq, val = tok.partition("=")
        if key in OWN_WITH_ARG:
            if not eq:
                if i + 1 >= len(args):
                    raise ConfigError(f"{tok} needs a value")
                val = args[i + 1]
                i += 1
            setattr(own, key[2:].replace("-", "_"), val)
        elif tok in OWN_FLAGS:
            setattr(own, tok[2:].replace("-", "_"), True)
        elif tok == "-c":
            if i + 1 >= len(args):
                raise ConfigError("-c needs a config file")
            rest += ["--config", args[i + 1]]
            i += 1
        else:
            rest.append(tok)
        i += 1
    if own.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"--log-level: {own.log_level!r} is not debug, info, warning or "
                          "error")
    return own, rest


def cmd_openvpn(argv: Sequence[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(USAGE, end="")
        return 0
    if list(argv) == ["--version"]:
        print(TITLE)
        return 0
    own, rest = split_argv(argv)
    standalone = _standalone(rest)
    if standalone is not None:
        return standalone
    server = _server_config(rest)
    if server is not None:
        return _run_server(server, own)
    ovpn = parse_argv(rest)
    ovpn.check_tls()
    for w in ovpn.warnings:
        print(f"tunconnector: warning: {w}", file=sys.stderr)
    if ovpn.cd:
        os.chdir(ovpn.cd)
    name = own.name
    if name is None:
        dn = ovpn.daemon_name or ""
        name = dn if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", dn) else "openvpn"
    key = f"{COMMAND_LINE_KEY}{name}"
    register(key, ovpn)
    tunnel: dict[str, Any] = {"name": name, "openvpn_config": key,
                              "allow_redirect_gateway": own.allow_redirect_gateway}
    if own.device:
        tunnel["device"] = own.device
    if own.netns:
        tunnel["netns"] = own.netns
    config = Config.from_mapping({"tunnel": [tunnel], "control_dir": own.control_dir,
                                  "log_level": own.log_level, "json_logs": own.json_logs,
                                  "nice": ovpn.nice})
    if own.check:
        print(f"{ovpn.path}: valid (openvpn client, {len(ovpn.remotes)} remote(s))")
        return 0
    if ovpn.daemon and not os.environ.get("NOTIFY_SOCKET"):
        return _daemonize(config, ovpn)  # (under systemd's Type=notify openvpn stays)
    if ovpn.log:
        _redirect_output(ovpn.log, ovpn.log_append)
    return _run(config, ovpn, Ready(None))


def _server_config(args: list[str]) -> str | None:
    """The ``--config FILE`` of ``args`` when it is an openvpn *server* config (``mode
    server``, ``server``, ``server-bridge``, ``server-ipv6``, ``tls-server``), else None;
    ``--cd DIR`` is applied first, as openvpn does."""
    from .ovpnserverconf import looks_like_server

    if "--config" not in args:
        return None
    i = args.index("--config")
    if i + 1 >= len(args):
        return None
    path = args[i + 1]
    if "--cd" in args and args.index("--cd") + 1 < len(args):
        path = os.path.join(args[args.index("--cd") + 1], path)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    others = [a for j, a in enumerate(args) if j not in (i, i + 1)]
    if any(a in ("--server", "--mode", "--tls-server") for a in others):
        return path
    return path if looks_like_server(text) else None


def _run_server(path: str, own: argparse.Namespace) -> int:
    """An openvpn server config: :mod:`tunconnector.ovpnserver` serves it."""
    from .cli import run_loop
    from .log import setup
    from .ovpnserver import serve
    from .ovpnserverconf import load

    sc = load(path)
    sc.check()
    for w in sc.warnings:
        print(f"tunconnector: warning: {w}", file=sys.stderr)
    if own.check:
        print(f"{path}: valid ({sc.summary()})")
        return 0
    if sc.log:
        _redirect_output(sc.log, sc.log_append)
    setup(own.log_level, own.json_logs)
    path = os.path.abspath(path)
    if sc.cd:
        os.chdir(sc.cd)
    return int(run_loop(serve(path, name=own.name or "openvpn", control_dir=own.control_dir,
                              log_level=own.log_level, nice=sc.nice)))


def _standalone(args: list[str]) -> int | None:
    """openvpn's standalone modes: ``--genkey secret FILE``, ``--mktun``/``--rmtun
    --dev NAME [--dev-type tun|tap] [--user U]``; None for a tunnel."""
    if "--genkey" in args:
        from .keys import write_openvpn_key_file

        words = [a for a in args[args.index("--genkey") + 1:] if a != "--secret"]
        if words[:1] in (["secret"], ["tls-auth"], ["tls-crypt"]):
            words = words[1:]
        if len(words) != 1:
            raise ConfigError(f"{CMDLINE}: --genkey [secret] FILE")
        write_openvpn_key_file(words[0])
        return 0
    mk = "--mktun" in args
    if not mk and "--rmtun" not in args:
        return None
    from .io.device import make_persistent, remove_persistent

    opts: dict[str, str] = {}
    for flag in ("--dev", "--dev-type", "--user"):
        if flag in args and args.index(flag) + 1 < len(args):
            opts[flag] = args[args.index(flag) + 1]
    dev = opts.get("--dev")
    if not dev:
        raise ConfigError(f"{CMDLINE}: --{'mktun' if mk else 'rmtun'} needs --dev NAME")
    kind = opts.get("--dev-type") or ("tap" if dev.startswith("tap") else "tun")
    if kind not in ("tun", "tap"):
        raise ConfigError(f"{CMDLINE}: --dev-type must be tun or tap")
    dev_type: Literal["tun", "tap"] = "tap" if kind == "tap" else "tun"
    if mk:
        print(f"TUN/TAP device {make_persistent(dev, dev_type, opts.get('--user'))} opened")
        print("Persist state set to: ON")
    else:
        remove_persistent(dev, dev_type)
        print(f"TUN/TAP device {dev} opened")
        print("Persist state set to: OFF")
    return 0


# ------------------------------------------------------------------ process plumbing
def _redirect_output(path: str | None, append: bool) -> None:
    """stdout and stderr (our log, scripts' output) into ``path`` (None: /dev/null)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    try:
        fd = os.open(path or os.devnull, flags, 0o600)
    except OSError as exc:
        raise ConfigError(f"log {path}: {exc.strerror or exc}") from None
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _daemonize(config: Config, ovpn: OvpnConfig) -> int:
    """Fork; the parent waits until the child says it runs (or why it does not)."""
    if ovpn.log:  # an unwritable log is a config error the parent reports
        try:
            os.close(os.open(ovpn.log, os.O_WRONLY | os.O_CREAT, 0o600))
        except OSError as exc:
            raise ConfigError(f"log {ovpn.log}: {exc.strerror or exc}") from None
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid > 0:
        os.close(w)
        return _parent_wait(r, pid)
    os.close(r)
    rc = 1
    ready = Ready(w)
    try:
        os.setsid()
        nul = os.open(os.devnull, os.O_RDONLY)
        os.dup2(nul, 0)
        os.close(nul)
        _redirect_output(ovpn.log, ovpn.log_append)
        rc = _run(config, ovpn, ready)
        ready.report(f"error: the daemon stopped before it was ready (status {rc})")
    except ConfigError as exc:
        ready.report(f"config error: {exc}")
        rc = 2
    except TunconnectorError as exc:
        ready.report(f"error: {exc}")
        rc = 1
    except BaseException as exc:  # noqa: BLE001 - the child must never return to the CLI
        ready.report(f"error: {exc!r}")
        rc = 1
    finally:
        logging.shutdown()
        os._exit(rc)


def _parent_wait(r: int, pid: int) -> int:
    data = b""
    deadline = time.monotonic() + DAEMON_READY_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            print(f"tunconnector: error: the daemon (pid {pid}) did not start within "
                  f"{DAEMON_READY_TIMEOUT:g}s", file=sys.stderr)
            os.close(r)
            return 1
        ready, _, _ = select.select([r], [], [], left)
        if not ready:
            continue
        chunk = os.read(r, 4096)
        data += chunk
        if data.startswith(b"OK") or not chunk:
            break
    os.close(r)
    if data.startswith(b"OK"):
        return 0
    _, status = os.waitpid(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    msg = data.decode(errors="replace").strip() or f"daemon exited with status {rc}"
    print(f"tunconnector: {msg}", file=sys.stderr)
    return rc if rc > 0 else 1


class Ready:
    """The daemon child's word to its parent, said once: ``OK`` or why not."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd

    def report(self, msg: str) -> None:
        fd, self.fd = self.fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(fd, msg.encode())
        with contextlib.suppress(OSError):
            os.close(fd)


def _run(config: Config, ovpn: OvpnConfig, ready: Ready) -> int:
    from . import memory
    from .cli import run_loop
    from .log import setup

    setup(config.log_level, config.json_logs)
    name = ovpn.syslog or (ovpn.daemon_name or "openvpn" if ovpn.daemon and not ovpn.log
                           else None)
    if name is not None:
        _syslog(name, only=ovpn.daemon or ovpn.syslog is not None)
    memory.tune()
    return int(run_loop(OpenVPNProcess(config, ovpn).run(ready)))


def sd_notify(state: str) -> None:
    """Tell systemd (``Type=notify``, ``$NOTIFY_SOCKET``) about us, as openvpn does:
    ``READY=1`` at "Initialization Sequence Completed", ``STOPPING=1`` on exit."""
    import socket

    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(state.encode(), addr)
    except OSError as exc:
        log.debug("sd_notify: %s", exc)


def _syslog(name: str, *, only: bool) -> None:
    """openvpn's ``syslog [NAME]`` (and a ``daemon`` without ``log``): log lines go to
    syslog as NAME[pid]; ``only``: instead of stderr."""
    import logging.handlers

    try:
        handler = logging.handlers.SysLogHandler(address="/dev/log")
    except OSError as exc:
        log.warning("syslog: %s (logging to stderr)", exc.strerror or exc)
        return
    handler.setFormatter(logging.Formatter(f"{name}[{os.getpid()}]: %(message)s"))
    root = logging.getLogger("tunconnector")
    if only:
        for h in list(root.handlers):
            root.removeHandler(h)
    root.addHandler(handler)


# ------------------------------------------------------------------ the process
class OpenVPNProcess:
    """One openvpn client: the Node with its tunnel, scripts, management, files."""

    def __init__(self, config: Config, ovpn: OvpnConfig) -> None:
        self.config = config
        self.ovpn = ovpn
        self.name = config.tunnel[0].name
        self.rc = 0
        self.started = int(time.time())
        self.node: Any = None
        self.tunnel: Any = None
        self.mgmt: Management | None = None
        self.assigned: ConfigAssigned | None = None
        self.up_ran = False
        self.configured = False  # assignment applied and up/route-up done
        self.context = "init"
        self.exit_signal = "SIGTERM"
        self._stop: asyncio.Event | None = None
        self._restart: asyncio.Event | None = None
        self._scripts = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.verb = [3]
        self._last_crypto: dict[str, Any] = {}

    # -- facts --------------------------------------------------------------------
    def facts(self) -> ScriptFacts:
        t = self.tunnel
        peer = t.peer if t is not None and isinstance(t.peer, tuple) else None
        if peer is None and self.ovpn.remotes:
            r = self.ovpn.remote_list()[0]
            peer = (r.host, r.port)
        return ScriptFacts(
            dev=(t.device_name if t is not None else None) or "",
            dev_type=self.ovpn.dev_type,
            tun_mtu=t.mtu if t is not None else self.ovpn.options.tun_mtu,
            assigned=self.assigned,
            remote=(str(peer[0]), int(peer[1])) if peer else None,
            proto=self.ovpn.remote_list()[0].proto,
            setenv=self.ovpn.setenv,
            config=self.ovpn.path,
            daemon=self.ovpn.daemon,
            daemon_log_redirect=self.ovpn.log is not None,
            daemon_start_time=self.started,
            daemon_pid=os.getpid(),
            verb=self.verb[0],
        )

    def _counts(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The tunnel's status and its connection's counters (the last ones seen, once
        the connection is gone: the status written on exit keeps them)."""
        st = self.tunnel.status() if self.tunnel is not None else {}
        crypto = st.get("crypto") or {}
        if crypto:
            self._last_crypto = crypto
        return st, crypto or self._last_crypto

    def status_lines(self) -> list[str]:
        st, crypto = self._counts()
        return [
            "OpenVPN STATISTICS",
            f"Updated,{time.strftime('%Y-%m-%d %H:%M:%S')}",
            f"TUN/TAP read bytes,{st.get('tx_bytes', 0)}",
            f"TUN/TAP write bytes,{st.get('rx_bytes', 0)}",
            f"TCP/UDP read bytes,{crypto.get('bytes_in', 0)}",
            f"TCP/UDP write bytes,{crypto.get('bytes_out', 0)}",
            f"Auth read bytes,{crypto.get('bytes_in', 0)}",
            "END",
        ]

    def bytecount(self) -> tuple[int, int]:
        _, crypto = self._counts()
        return int(crypto.get("bytes_in", 0)), int(crypto.get("bytes_out", 0))

    # -- signals ------------------------------------------------------------------
    def signal(self, name: str) -> None:
        log.info("%s received", name)
        if name in ("SIGTERM", "SIGINT"):
            self.exit_signal = name
            if self._stop is not None:
                self._stop.set()
        elif name in ("SIGHUP", "SIGUSR1"):
            self.exit_signal = name
            if self._restart is not None:
                self._restart.set()
        elif name == "SIGUSR2":
            for line in self.status_lines():
                log.info("%s", line)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- scripts ------------------------------------------------------------------
    async def script(self, kind: str, *, sig: str | None = None,
                     facts: ScriptFacts | None = None) -> bool:
        """Run script ``kind`` if configured and allowed; False if it failed."""
        from .hooks import run_program

        argv = self.ovpn.scripts.get(kind)
        if not argv or self.ovpn.script_security < 2:
            return True
        facts = facts or self.facts()
        env = script_env(facts, kind, context=self.context, signal=sig)
        full = command(argv, facts, kind, context=self.context)
        result, why = await run_program(full, env, SCRIPT_TIMEOUT)
        if result != "ok":
            log.error("WARNING: Failed running command (--%s): %s", kind, why)
            return False
        log.info("%s", " ".join(full))
        return True

    def _tls_verify_hook(self) -> Any:
        """``tls-verify CMD``: ``CMD depth subject`` per certificate of the server's chain,
        synchronously during the handshake (as openvpn); non-zero refuses the server, as
        does ``script-security`` below 2 (the check cannot run: fail closed). A plain
        function: client options are deep-copied per connection."""
        import subprocess

        from .hooks import SECRET_ENV
        from .ovpn_scripts import tls_verify_env
        from .proto.openvpn.tls import subject_string

        def hook(depth: int, cert: Any) -> str | None:
            if self.ovpn.script_security < 2:
                return ("tls-verify cannot run: external programs need 'script-security 2' "
                        "(server refused, as openvpn)")
            subject = subject_string(cert)
            argv = [*self.ovpn.scripts["tls-verify"], str(depth), subject]
            env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV}
            env.update(tls_verify_env(self.facts(), depth, cert))
            try:
                rc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                                    timeout=TLS_VERIFY_TIMEOUT,
                                    start_new_session=True).returncode
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"tls-verify {argv[0]}: {exc}"
            if rc != 0:
                return (f"tls-verify refused the certificate at depth {depth} ({subject!r}): "
                        f"exit status {rc}")
            return None

        return hook

    def _on_assigned(self, ev: ConfigAssigned) -> None:
        self.assigned = ev
        self._spawn(self._configure())

    async def _configure(self) -> None:
        async with self._scripts:
            facts = self.facts()
            env = script_env(facts, "up")
            if self.mgmt is not None:
                self.mgmt.set_state("ASSIGN_IP", local_ip=env.get("ifconfig_local", ""),
                                    local_ip6=env.get("ifconfig_ipv6_local", ""))
            if not self.up_ran:
                if not await self.script("up"):
                    self.rc = 1
                    self.exit_signal = "up-script-failed"
                    if self._stop is not None:
                        self._stop.set()
                    return
                self.up_ran = True
            if self.mgmt is not None:
                self.mgmt.set_state("ADD_ROUTES")
            await self.script("route-up")
            self.configured = True
            if self.tunnel is not None and self.tunnel.state == State.UP:
                self._connected()

    def _on_state(self, tunnel: Any, old: State, new: State) -> None:
        if new == State.UP and "ipchange" in self.ovpn.scripts:
            self._spawn(self.script("ipchange"))
        if new == State.UP and self.configured:
            self._connected()
        elif new == State.DOWN and old == State.UP:
            if self.mgmt is not None:
                self.mgmt.set_state("RECONNECTING", "connection-reset")

    def _connected(self) -> None:
        env = script_env(self.facts(), "up")
        log.info("Initialization Sequence Completed")
        sd_notify("READY=1\nSTATUS=Initialization Sequence Completed")
        if self.mgmt is not None:
            remote = self.facts().remote
            self.mgmt.set_state(
                "CONNECTED", "SUCCESS", local_ip=env.get("ifconfig_local", ""),
                remote=remote[0] if remote else "",
                remote_port=str(remote[1]) if remote else "",
                local_ip6=env.get("ifconfig_ipv6_local", ""))
        self._apply_buffers()

    def _apply_buffers(self) -> None:
        import socket

        udp = getattr(self.tunnel, "_udp", None)
        sock = getattr(udp, "sock", None)
        if sock is None:
            return
        for size, opt in ((self.ovpn.sndbuf, socket.SO_SNDBUF),
                          (self.ovpn.rcvbuf, socket.SO_RCVBUF)):
            if size > 0:  # 0: the kernel's default (openvpn 2.6's meaning of 0)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, opt, size)

    # -- files --------------------------------------------------------------------
    def _write_pid(self) -> None:
        if self.ovpn.writepid:
            try:
                with open(self.ovpn.writepid, "w") as f:
                    f.write(f"{os.getpid()}\n")
            except OSError as exc:
                raise ConfigError(f"writepid {self.ovpn.writepid}: "
                                  f"{exc.strerror or exc}") from None

    def _write_status(self) -> None:
        if self.ovpn.status:
            try:
                with open(self.ovpn.status, "w") as f:
                    f.write("\n".join(self.status_lines()) + "\n")
            except OSError as exc:
                log.warning("status %s: %s", self.ovpn.status, exc.strerror or exc)

    async def _status_loop(self) -> None:
        while True:
            self._write_status()
            await asyncio.sleep(self.ovpn.status_interval)  # openvpn's status period

    # -- run ----------------------------------------------------------------------
    async def run(self, ready: Ready) -> int:
        from .node import Node

        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._restart = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1,
                       signal.SIGUSR2):
            loop.add_signal_handler(signum, self.signal, signal.Signals(signum).name)
        log.info("%s starting (tunconnector %s)", TITLE, __version__)
        try:
            if self.ovpn.management is not None:
                self.mgmt = Management(self.ovpn.management, Backend(
                    self.status_lines, self.bytecount, self.signal, lambda: None,
                    self.verb))
                await self.mgmt.start()
            self._write_pid()
            self.node = Node(self.config, strict=True, control_socket=True)
            self.tunnel = self.node.tunnels[self.name]
            self.tunnel.add_listener(self._on_state)
            listeners = getattr(self.tunnel, "assign_listeners", None)
            if listeners is not None:
                listeners.append(self._on_assigned)
            if self.mgmt is not None and self.mgmt.hold:
                ready.report("OK")
                if await self._or_stop(self.mgmt.wait_hold_release()) is None:
                    await self._cleanup(started=False)
                    return self.rc
            if self.mgmt is not None and self.ovpn.query_auth:
                ready.report("OK")
                creds = await self._or_stop(self.mgmt.query_user_pass("Auth"))
                if creds is None:
                    await self._cleanup(started=False)
                    return self.rc
                # the registered config the tunnel's connections are made from
                self.ovpn.options.username, self.ovpn.options.password = creds
            if "tls-verify" in self.ovpn.scripts:  # the connections are made from it
                self.ovpn.options.tls_verify = self._tls_verify_hook()
            if self.mgmt is not None:
                self.mgmt.set_state("CONNECTING")
            await self.node.start()
        except BaseException:
            await self._cleanup(started=False)
            raise
        ready.report("OK")
        if self.mgmt is not None:
            self.mgmt.set_state("WAIT")
        if self.ovpn.status:
            self._spawn(self._status_loop())
        while True:
            stop = loop.create_task(self._stop.wait())
            restart = loop.create_task(self._restart.wait())
            await asyncio.wait({stop, restart}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            restart.cancel()
            if self._stop.is_set():
                break
            self._restart.clear()
            await self._restart_tunnel()
        await self._cleanup(started=True)
        return self.rc

    async def _or_stop(self, aw: Any) -> Any:
        """``aw``'s result, or None if a stop signal came first (``aw`` is cancelled)."""
        assert self._stop is not None
        task = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task in done:
            return task.result() if task.result() is not None else True
        task.cancel()
        return None

    async def _restart_tunnel(self) -> None:
        log.info("SIGUSR1[soft,%s] received, process restarting", self.exit_signal)
        if self.mgmt is not None:
            self.mgmt.set_state("RECONNECTING", self.exit_signal.lower())
        async with self._scripts:
            facts = self.facts()  # what the device was, for the down script
            if self.up_ran:
                await self.script("route-pre-down", facts=facts)
                if self.ovpn.down_pre:
                    await self.script("down", sig=self.exit_signal, facts=facts)
            await self.tunnel.stop()
            if self.up_ran and not self.ovpn.down_pre:
                await self.script("down", sig=self.exit_signal, facts=facts)
            self.up_ran = self.configured = False
            self.context = "restart"
            self.assigned = None
        try:
            await self.tunnel.start()
        except TunconnectorError as exc:
            log.error("restart failed: %s", exc)
            self.rc = 1
            if self._stop is not None:
                self._stop.set()

    async def _cleanup(self, *, started: bool) -> None:
        sd_notify("STOPPING=1")
        if self.mgmt is not None:
            self.mgmt.set_state("EXITING", self.exit_signal)
        for t in list(self._tasks):
            t.cancel()
        facts = self.facts()  # what the device was, for the down script
        if started and self.up_ran:
            async with self._scripts:
                await self.script("route-pre-down", sig=self.exit_signal, facts=facts)
                if self.ovpn.down_pre:
                    await self.script("down", sig=self.exit_signal, facts=facts)
        if self.node is not None:
            await self.node.stop()
        if started and self.up_ran and not self.ovpn.down_pre:
            await self.script("down", sig=self.exit_signal, facts=facts)
        self._write_status()
        if self.mgmt is not None:
            await self.mgmt.close()
        if self.ovpn.writepid:
            with contextlib.suppress(OSError):
                os.unlink(self.ovpn.writepid)
        log.info("%s[hard,] received, process exiting", self.exit_signal)
