"""Drop root after set-up, keeping only the capabilities the daemon still needs.

With ``[privileges] user = "tunconnector"`` the daemon opens its devices, sockets and the
API as root, then switches to that user and keeps only ``keep_caps`` (default
CAP_NET_ADMIN for carrier changes, addresses, bonds and tunnel restarts, and CAP_NET_RAW
for the ICMP health check's raw-socket fallback) in its permitted and effective sets.

Linux credentials are per thread. glibc's ``setresuid`` is applied to every thread of the
process, but ``PR_SET_KEEPCAPS`` and ``capset`` act on the calling thread only, so the
sequence is run on the main thread *and* on the netlink worker thread (the other thread
that talks to the kernel); every other thread loses all capabilities at the uid switch.

Not covered (documented in docs/operations.md): tunnels with ``netns`` need CAP_SYS_ADMIN
to restart (``setns``); ports below 1024 need CAP_NET_BIND_SERVICE to rebind.
With systemd prefer ``User=`` + ``AmbientCapabilities=`` (the shipped unit does).
"""

from __future__ import annotations

import ctypes
import grp
import logging
import os
import pwd
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from .errors import ConfigError, TunconnectorError

log = logging.getLogger(__name__)

PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
CAPS = {
    "CAP_CHOWN": 0,
    "CAP_DAC_OVERRIDE": 1,
    "CAP_SETGID": 6,
    "CAP_SETUID": 7,
    "CAP_NET_BIND_SERVICE": 10,
    "CAP_NET_BROADCAST": 11,
    "CAP_NET_ADMIN": 12,
    "CAP_NET_RAW": 13,
    "CAP_SYS_ADMIN": 21,
}


class PrivilegeError(TunconnectorError):
    """Switching user or setting capabilities failed."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise PrivilegeError(f"{what}: {os.strerror(err)}")


def cap_bits(names: Iterable[str]) -> int:
    bits = 0
    for n in names:
        key = n.upper() if n.upper().startswith("CAP_") else "CAP_" + n.upper()
        if key not in CAPS:
            raise ConfigError(f"privileges.keep_caps: unknown capability {n!r}")
        bits |= 1 << CAPS[key]
    return bits


def thread_caps(kind: str = "CapEff") -> int:
    """This thread's capability set from /proc (``CapEff``, ``CapPrm``...)."""
    for line in Path("/proc/thread-self/status").read_text().splitlines():
        if line.startswith(kind + ":"):
            return int(line.split()[1], 16)
    raise PrivilegeError(f"{kind} not in /proc/thread-self/status")


def set_keepcaps(on: bool) -> None:
    _check(_libc.prctl(PR_SET_KEEPCAPS, int(on), 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")


def set_caps(bits: int) -> None:
    """Set this thread's effective = permitted = ``bits``, inheritable empty."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    lo, hi = bits & 0xFFFFFFFF, bits >> 32
    data[0].effective = data[0].permitted = lo
    data[1].effective = data[1].permitted = hi
    _check(_libc.capset(ctypes.byref(hdr), ctypes.byref(data)), "capset")


def finish_thread(bits: int) -> int:
    set_caps(bits)
    set_keepcaps(False)
    return thread_caps()


def resolve(user: str, group: str | None) -> tuple[int, int]:
    try:
        pw = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
    except KeyError as exc:
        raise ConfigError(f"privileges.user: no such user {user!r}") from exc
    gid = pw.pw_gid
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
        except KeyError as exc:
            raise ConfigError(f"privileges.group: no such group {group!r}") from exc
    return pw.pw_uid, gid


def drop(uid: int, gid: int, keep: int) -> None:
    """Main-thread part: keep caps over the uid switch, then trim them to ``keep``.

    Other threads that must keep ``keep`` call :func:`set_keepcaps` (True) before and
    :func:`finish_thread` after this.
    """
    if os.geteuid() != 0:
        raise PrivilegeError("privilege drop needs to start as root")
    set_keepcaps(True)
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise PrivilegeError(f"switching to uid {uid} gid {gid}: {exc}") from exc
    finish_thread(keep)
    if os.getuid() != uid or os.geteuid() != uid:
        raise PrivilegeError("uid did not change")
    try:
        os.setresuid(0, 0, 0)
    except OSError:
        pass
    else:  # pragma: no cover - would be a kernel/libc bug
        raise PrivilegeError("could regain root after dropping it")


def _chown(paths: Iterable[str | None], uid: int, gid: int) -> None:
    for p in paths:
        if p and os.path.lexists(p):
            try:
                os.chown(p, uid, gid, follow_symlinks=False)
            except OSError as exc:
                log.warning("cannot hand %s to uid %d: %s", p, uid, exc)


async def privileges_service(node: Any) -> Callable[[], Awaitable[None]] | None:
    """Node service (last): drop to ``[privileges] user`` once everything is set up."""
    cfg = node.config.privileges
    if cfg is None or cfg.user is None:
        return None
    uid, gid = resolve(cfg.user, cfg.group)
    keep = cap_bits(cfg.keep_caps)
    # files the daemon rewrites later must belong to the new user (sticky /tmp, sockets)
    owned: list[str | None] = [node.config.control_dir]
    for t in node.config.tunnel:
        if t.health is not None:
            owned.append(t.health.status_file)
    if node.config.api is not None:
        owned.append(node.config.api.state_file)
    _chown(owned, uid, gid)
    tun = "/dev/net/tun"
    if os.path.exists(tun) and not keep & (1 << CAPS["CAP_DAC_OVERRIDE"]):
        st = os.stat(tun)
        if not (st.st_mode & 0o006 == 0o006 or (st.st_uid == uid and st.st_mode & 0o600)
                or (st.st_gid == gid and st.st_mode & 0o060 == 0o060)):
            log.warning(
                "%s is mode %o: after dropping to %s, tunnels cannot be restarted (make it "
                "0666, the usual default, or add CAP_DAC_OVERRIDE to keep_caps)",
                tun, st.st_mode & 0o777, cfg.user,
            )
    netlink = getattr(node, "netlink", None)
    if netlink is not None:
        await netlink.call(set_keepcaps, True)
    drop(uid, gid, keep)
    if netlink is not None:
        worker = await netlink.call(finish_thread, keep)
        if worker != keep:
            raise PrivilegeError(f"netlink thread kept caps {worker:#x}, wanted {keep:#x}")
    log.info(
        "dropped privileges to %s (uid %d gid %d), keeping %s",
        cfg.user, uid, gid, ", ".join(cfg.keep_caps) or "no capabilities",
    )
    return None
