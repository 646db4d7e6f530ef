"""The scheduler's slice for the daemon's thread (Linux ``sched_setattr``, EEVDF).

On a kernel with the EEVDF scheduler (Linux 6.6+; a slice of one's own since 6.12) a
normal task may ask for a shorter time slice than the default (0.7-3 ms, scaled by the
CPU count). Its share of the CPU stays what its nice value gives it; what changes is when
its turn comes: a task that wakes with a short slice gets an early deadline and runs
before a busy task with a long one. A tunnel daemon wakes for one packet at a time and
runs for tens of microseconds: where it shares CPUs with busy processes, a short slice
cuts the time its packets wait for the scheduler (docs/operations.md has the figures).

Python has no binding for ``sched_setattr``: one ``syscall`` through ctypes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct

from .errors import TunconnectorError

#: the kernel's bounds for a custom slice (kernel/sched: 0.1 ms .. 100 ms)
MIN_SLICE_US = 100
MAX_SLICE_US = 100_000
_SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274, "armv7l": 380, "riscv64": 274,
                      "ppc64le": 355, "s390x": 345, "i686": 351}
#: struct sched_attr, SCHED_ATTR_SIZE_VER1: size, policy, flags, nice, priority,
#: runtime, deadline, period, util_min, util_max
_ATTR = struct.Struct("=IIQiIQQQII")
_SCHED_OTHER = 0


class SchedError(TunconnectorError):
    """The scheduler refused the request (or the kernel has no such call)."""


def current_slice_us(tid: int | None = None) -> int | None:
    """The slice the scheduler gives a thread of this process (the calling one by
    default), in microseconds; None where the kernel does not say (no EEVDF)."""
    path = f"/proc/{tid}/sched" if tid else "/proc/thread-self/sched"
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith("se.slice"):
                    return int(line.split(":")[1]) // 1000
    except (OSError, ValueError):
        return None
    return None


def set_slice(us: int, tid: int = 0) -> int | None:
    """Ask for a slice of ``us`` microseconds for thread ``tid`` (0: the calling thread),
    keeping its policy (normal) and nice value. Returns the slice the kernel then reports
    (None where it does not report one: a kernel without EEVDF takes the call and keeps
    its own timing). Threads the thread starts later inherit it."""
    if not MIN_SLICE_US <= us <= MAX_SLICE_US:
        raise SchedError(f"a slice of {us} us is outside {MIN_SLICE_US}..{MAX_SLICE_US}")
    nr = _SYS_SCHED_SETATTR.get(platform.machine())
    if nr is None:
        raise SchedError(f"sched_setattr: unknown system call number on {platform.machine()}")
    nice = os.getpriority(os.PRIO_PROCESS, tid)
    attr = ctypes.create_string_buffer(
        _ATTR.pack(_ATTR.size, _SCHED_OTHER, 0, nice, 0, us * 1000, 0, 0, 0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(nr, tid, attr, 0) != 0:
        err = ctypes.get_errno()
        raise SchedError(f"sched_setattr: {os.strerror(err)}")
    return current_slice_us(tid or None)
