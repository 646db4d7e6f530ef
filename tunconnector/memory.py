"""Process memory settings of the daemon: glibc malloc and the cyclic garbage collector.

Why: the data path allocates and frees buffers of 64-256 KiB (device reads of
super-packets, uvloop's TCP reads) tens of thousands of times a second. With glibc's
defaults a free that leaves more than 128 KiB at the top of the heap hands it back to
the kernel (``brk``), and the next allocation grows the heap and page-faults it in again.
That churn cost a third of a bulk stream's throughput here (same-moment A/B,
tc-tun-udp-plain: 4.45-5.1 Gbit/s at 2.2-2.5 CPU s/GB with the defaults, 6.6-7.2 Gbit/s
at 1.7-1.85 CPU s/GB with these settings). Keeping up to :data:`TRIM_THRESHOLD` free at
the top and growing the heap :data:`TOP_PAD` at a time removes it. The cost is that up
to 16 MiB freed after a burst stays mapped.

Only the daemon (``tunconnector`` CLI) calls :func:`tune` and :func:`freeze_gc`: they
change the whole process, so a program importing the library decides for itself.
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform

M_TRIM_THRESHOLD = -1  #: mallopt parameter numbers, from glibc's <malloc.h>
M_TOP_PAD = -2
TRIM_THRESHOLD = 16 << 20
TOP_PAD = 4 << 20
GC_YOUNG_THRESHOLD = 50_000

#: what :func:`tune` did, for ``status``: "tuned", or why not
state = "not tried"


def tune(trim_threshold: int = TRIM_THRESHOLD, top_pad: int = TOP_PAD) -> bool:
    """Apply the settings; False (with :data:`state` saying why) when skipped.

    Skipped when ``TUNCONNECTOR_MALLOC_TUNE=0``, when the operator set glibc malloc
    tunables themselves (``GLIBC_TUNABLES``), or when the C library is not glibc.
    """
    global state
    if os.environ.get("TUNCONNECTOR_MALLOC_TUNE", "1") == "0":
        state = "off (TUNCONNECTOR_MALLOC_TUNE=0)"
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        state = "left to GLIBC_TUNABLES"
        return False
    if platform.libc_ver()[0] != "glibc":
        state = "not glibc"
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        state = "no mallopt"
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if mallopt(M_TRIM_THRESHOLD, trim_threshold) != 1 or mallopt(M_TOP_PAD, top_pad) != 1:
        state = "mallopt refused"
        return False
    state = f"tuned (trim_threshold={trim_threshold >> 20} MiB, top_pad={top_pad >> 20} MiB)"
    return True


def freeze_gc() -> bool:
    """Move every object alive now out of the cyclic collector's reach, and collect the
    youngest generation less often.

    Why: the data path allocates tuples and small objects per packet (addresses,
    ancillary data), which triggers a young-generation collection every 700 of them and,
    every hundred of those, a pass over the whole heap (modules, config, tunnels). None
    of it is cyclic garbage. ``gc.freeze()`` after start-up takes the long-lived objects
    out of those passes; a young threshold of 50,000 makes the passes rarer. Cycles are
    still collected. ``TUNCONNECTOR_GC_TUNE=0`` turns this off.
    """
    if os.environ.get("TUNCONNECTOR_GC_TUNE", "1") == "0":
        return False
    gc.collect()
    gc.freeze()
    _, g1, g2 = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, g1, g2)
    return True


__all__ = ["tune", "freeze_gc", "state", "TRIM_THRESHOLD", "TOP_PAD", "GC_YOUNG_THRESHOLD"]
