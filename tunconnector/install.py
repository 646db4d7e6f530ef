"""``tunconnector install-systemd``: install the ``tunconnector@.service`` template.

Writes the unit (with ``ExecStart`` pointing at this installation's ``tunconnector``),
a sysusers.d entry for the ``tunconnector`` account and ``/etc/tunconnector``; then runs
``systemd-sysusers`` and ``systemctl daemon-reload`` when present (argv lists, no shell).
``--root DIR`` installs below DIR (packaging, tests). The unit text is kept here and
checked against ``deploy/systemd/`` by the tests, so both stay identical.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_EXEC = "/usr/local/bin/tunconnector"

UNIT = """\
# tunconnector daemon, one instance per config file (like openvpn@):
#   /etc/tunconnector/NAME.toml      the config   (systemctl enable --now tunconnector@NAME)
#   /etc/tunconnector/NAME.env       optional: API_USERNAME=, API_PASSWORD=, API_TOKEN=
# Runs as the unprivileged "tunconnector" user (see tunconnector.sysusers.conf) with only
# CAP_NET_ADMIN (devices, addresses, bonds, carrier) and CAP_NET_RAW (ICMP health check
# fallback when ping sockets are not allowed). Tunnels with `netns` also need
# CAP_SYS_ADMIN (setns): add it in a drop-in, see docs/operations.md.
[Unit]
Description=tunconnector tunnels (%i)
Documentation=https://github.com/tunconnector/tunconnector/blob/main/docs/operations.md
After=network-online.target
Wants=network-online.target
AssertPathExists=/etc/tunconnector/%i.toml

[Service]
Type=exec
ExecStart=@EXEC@ run -c /etc/tunconnector/%i.toml
EnvironmentFile=-/etc/tunconnector/%i.env
Environment=TUNCONNECTOR_CONTROL_DIR=/run/tunconnector/%i
Restart=on-failure
RestartSec=2s
TimeoutStopSec=15s

User=tunconnector
Group=tunconnector
AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW
CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW
NoNewPrivileges=yes
SecureBits=keep-caps

RuntimeDirectory=tunconnector/%i
RuntimeDirectoryMode=0755
StateDirectory=tunconnector
ConfigurationDirectory=tunconnector

DeviceAllow=/dev/net/tun rw
DevicePolicy=closed
ProtectSystem=strict
# TunConnector's consumers read the status file from /tmp (health.status_file); keep /tmp shared
ReadWritePaths=-/tmp
ProtectHome=yes
PrivateTmp=no
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET
RestrictNamespaces=net
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources @mount @swap @reboot @module @obsolete @cpu-emulation
SystemCallErrorNumber=EPERM
UMask=0022

[Install]
WantedBy=multi-user.target
"""

SYSUSERS = """\
# systemd-sysusers(8): the account tunconnector@.service runs as.
# Install as /usr/lib/sysusers.d/tunconnector.conf, then `systemd-sysusers`.
u tunconnector - "tunconnector tunnel daemon" /var/lib/tunconnector -
"""


def render_unit(exe: str = DEFAULT_EXEC) -> str:
    return UNIT.replace("@EXEC@", exe)


def this_executable() -> str:
    """The ``tunconnector`` script of this installation (absolute)."""
    found = shutil.which("tunconnector")
    if found:
        return str(Path(found).resolve())
    cand = Path(sys.executable).with_name("tunconnector")
    return str(cand) if cand.exists() else DEFAULT_EXEC


def _write(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)
    print(f"wrote {path}")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="tunconnector install-systemd",
        description="install the tunconnector@.service template unit and its account",
    )
    p.add_argument("--root", default="/", help="install below this directory (default /)")
    p.add_argument("--exec", dest="exe", default=None,
                   help="tunconnector executable for ExecStart (default: this one)")
    p.add_argument("--no-reload", action="store_true",
                   help="do not run systemd-sysusers / systemctl daemon-reload")
    p.add_argument("--print", dest="print_only", action="store_true",
                   help="print the unit and exit")
    args = p.parse_args(argv)
    exe = args.exe or this_executable()
    unit = render_unit(exe)
    if args.print_only:
        sys.stdout.write(unit)
        return 0
    root = Path(args.root)
    _write(root / "etc/systemd/system/tunconnector@.service", unit, 0o644)
    _write(root / "etc/sysusers.d/tunconnector.conf", SYSUSERS, 0o644)
    conf = root / "etc/tunconnector"
    conf.mkdir(parents=True, exist_ok=True)
    conf.chmod(0o755)
    if args.root == "/" and not args.no_reload:
        for cmd in (["systemd-sysusers", "/etc/sysusers.d/tunconnector.conf"],
                    ["systemctl", "daemon-reload"]):
            if shutil.which(cmd[0]) is None:
                print(f"note: {cmd[0]} not found, skipped")
                continue
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            if res.returncode != 0:
                print(f"warning: {' '.join(cmd)}: {res.stderr.strip()}", file=sys.stderr)
    print(
        "next: put a config in /etc/tunconnector/NAME.toml (credentials in NAME.env, "
        "mode 0600), then `systemctl enable --now tunconnector@NAME`"
    )
    return 0
