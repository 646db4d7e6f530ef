"""The VM harness gives up on a guest whose kernel wedged, and runs the suite once more.

A soft lockup of the emulated guest's kernel cannot be produced on demand, so a stand-in
process prints the kernel's report (as QEMU's serial console carries it) and then hangs;
for the retry, ``run_in_vm`` is replaced by one that reports a lockup first. Both are
stand-ins for a real QEMU guest, which the VM tests in tests/vm run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tunconnector.testing import vm


def test_a_wedged_guest_is_cut_short_with_its_first_report(tmp_path: Path) -> None:
    (tmp_path / ".tcvm").mkdir()
    script = ("echo 'Linux booting'; echo '[ 30.1] watchdog: BUG: soft lockup - CPU#0 "
              "stuck for 23s! [python:204]'; echo ' Call Trace: bond_whatever+0x1'; "
              "echo '[ 140.2] watchdog: BUG: soft lockup - CPU#0 stuck for 130s! "
              "[python:204]'; sleep 60")
    t0 = time.monotonic()
    res = vm._drive(["sh", "-c", script], 50.0, tmp_path, ["true"], False)
    assert time.monotonic() - t0 < 20  # not the 50 s timeout
    assert res.guest_lockup and res.returncode is None
    text = res.describe()
    assert "cut after a guest kernel lockup" in text
    assert "first lockup report" in text and "bond_whatever" in text


def test_a_short_stall_report_is_not_a_lockup(tmp_path: Path) -> None:
    (tmp_path / ".tcvm").mkdir()
    script = ("echo '[ 30.1] watchdog: BUG: soft lockup - CPU#1 stuck for 23s! [py:1]'; "
              "echo done")
    res = vm._drive(["sh", "-c", script], 30.0, tmp_path, ["true"], False)
    assert not res.guest_lockup and not res.timed_out


def test_a_lockup_run_is_made_once_more(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                        ) -> None:
    calls: list[int] = []

    def fake_run_in_vm(command: Any, timeout: float, share: Path, **kw: Any) -> vm.VmResult:
        calls.append(1)
        locked = len(calls) <= 5 if "always" in share.name else len(calls) == 1
        return vm.VmResult(returncode=None if locked else 0,
                           console="watchdog: BUG: soft lockup - CPU#0 stuck for 150s!\nX",
                           output="", share=share, elapsed=1.0, timed_out=locked,
                           guest_lockup=locked)

    monkeypatch.setattr(vm, "run_in_vm", fake_run_in_vm)
    run = vm.run_pytest_in_vm(["t.py"], tmp_path / "once", timeout=60)
    assert len(calls) == 2 and run.vm.ok and len(run.vm.earlier_lockups) == 1
    assert "earlier run 1 given up after a guest kernel lockup" in run.vm.describe()
    calls.clear()
    run = vm.run_pytest_in_vm(["t.py"], tmp_path / "always", timeout=60)
    assert len(calls) == 1 + vm.LOCKUP_RETRIES and run.vm.guest_lockup  # then it stands
