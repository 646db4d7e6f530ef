"""Issue 5's scenario in a real 6.1 kernel (QEMU guest): client and server daemons in two
namespaces joined by "eth0"/"wlan0" veth pairs, driven through the enabler REST API.

One guest boot (shared by all VM tests) runs ``inner/vm_multilink.py``; each of its
tests is mirrored here, and
the measured figures (failover loss in ms, failback, restart) are printed at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tunconnector.testing.vm import (
    VM_HOST_TEST_TIMEOUT,
    PytestRun,
    check_case,
    inner_test_names,
)

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.timeout(VM_HOST_TEST_TIMEOUT)]

INNER = Path(__file__).parent / "inner" / "vm_multilink.py"


@pytest.mark.parametrize("name", inner_test_names(INNER))
def test_in_guest(guest: PytestRun, name: str) -> None:
    check_case(guest, name, INNER.stem)
