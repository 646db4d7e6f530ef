"""memory.py: the daemon keeps freed heap instead of handing it back per buffer.

Each case runs in a fresh interpreter: mallopt changes the whole process.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                reason="needs glibc (mallopt)")

# Grow the heap by ~6 MiB of 96 KiB blocks (below the mmap threshold), free them all,
# and print how far the program break fell.
PROBE = r"""
import ctypes, sys
from tunconnector import memory
if sys.argv[1] == "tune":
    assert memory.tune(), memory.state
libc = ctypes.CDLL(None)
libc.sbrk.restype = ctypes.c_void_p
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
blocks = [libc.malloc(96 << 10) for _ in range(64)]
top = libc.sbrk(0)
for b in reversed(blocks):
    libc.free(b)
print(top - libc.sbrk(0))
"""


def _shrunk(mode: str, **env: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         timeout=30, env={**os.environ, **env}, check=True)
    return int(out.stdout.strip())


def test_defaults_give_freed_heap_back() -> None:
    # the churn the tuning removes: glibc trims the heap as soon as the blocks are freed
    assert _shrunk("plain") > 4 << 20


def test_tuned_process_keeps_freed_heap() -> None:
    assert _shrunk("tune") == 0


def test_switches() -> None:
    code = ("from tunconnector import memory; import sys; "
            "print(memory.tune(), memory.state)")
    for env, want in (({"TUNCONNECTOR_MALLOC_TUNE": "0"}, "False off"),
                      ({"GLIBC_TUNABLES": "glibc.malloc.top_pad=0"}, "False left to"),
                      ({}, "True tuned")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=30, env={**os.environ, **env}, check=True).stdout
        assert out.startswith(want), (env, out)


def test_freeze_gc() -> None:
    code = ("import gc; from tunconnector import memory; ok = memory.freeze_gc(); "
            "print(ok, gc.get_freeze_count() > 1000, gc.get_threshold()[0])")
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=30, check=True).stdout.split()
    assert on == ["True", "True", "50000"]
    off = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True,
                         env={**os.environ, "TUNCONNECTOR_GC_TUNE": "0"}).stdout.split()
    assert off == ["False", "False", "700"]
