"""bench.hostile's attacker niceness and the daemons' slice: a process tree found from /proc,
every thread reached."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.hostile import process_tree, renice  # noqa: E402


def test_renice_reaches_the_children() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import subprocess, sys, time; c = subprocess.Popen(['sleep', '30']); "
         "print(c.pid, flush=True); time.sleep(30)"],
        stdout=subprocess.PIPE, text=True)
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        tree = process_tree(parent.pid)
        assert parent.pid in tree and child in tree
        assert renice(tree, 7) >= 2
        assert os.getpriority(os.PRIO_PROCESS, child) == 7
        assert os.getpriority(os.PRIO_PROCESS, parent.pid) == 7
    finally:
        if child:
            os.kill(child, signal.SIGKILL)
        parent.kill()
        parent.wait(10)


def test_slices_reach_every_thread() -> None:
    """--daemon-slice-us: every thread of the tree gets the slice (the daemons' key's call)."""
    import pytest

    from bench.hostile import set_slices
    from tunconnector.sched import current_slice_us

    if current_slice_us() is None:
        pytest.skip("this kernel reports no scheduler slice (no EEVDF)")
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        if set_slices(process_tree(proc.pid), 250) == 0:
            pytest.skip("this kernel takes no custom scheduler slice (Linux < 6.12)")
        assert current_slice_us(proc.pid) == 250
    finally:
        proc.kill()
        proc.wait(10)
