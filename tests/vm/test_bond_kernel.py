"""Kernel bond management in a real 6.1 kernel (QEMU guest): every option read back.

One guest boot (shared by all VM tests) runs ``inner/vm_bond_kernel.py``; each of its
tests is mirrored here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tunconnector.testing.vm import (
    VM_HOST_TEST_TIMEOUT,
    PytestRun,
    check_case,
    inner_test_names,
)

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(VM_HOST_TEST_TIMEOUT)]

INNER = Path(__file__).parent / "inner" / "vm_bond_kernel.py"


@pytest.mark.parametrize("name", inner_test_names(INNER))
def test_in_guest(guest: PytestRun, name: str) -> None:
    check_case(guest, name, INNER.stem)


def test_boot_time(guest: PytestRun, record_property: Callable[[str, object], None]) -> None:
    """Boot to the command must stay fast: that is what keeps the VM suite affordable."""
    assert guest.vm.boot_seconds is not None, guest.vm.describe()
    record_property("boot_seconds", round(guest.vm.boot_seconds, 2))
    print(
        f"VM boot to command: {guest.vm.boot_seconds:.2f}s (guest uptime "
        f"{guest.vm.guest_uptime}s), whole run {guest.vm.elapsed:.1f}s"
    )
    assert guest.vm.boot_seconds < 30
