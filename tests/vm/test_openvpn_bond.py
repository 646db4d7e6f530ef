"""A tunconnector client bond over links that end at real openvpn processes (the
Multi-link enabler's server config), in a real 6.1 kernel (QEMU guest): it fails over
when one link is cut. The guest runs ``inner/openvpn_bond.py`` in its own boot."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tunconnector.testing.vm import PytestRun, check_case, inner_test_names

pytestmark = [pytest.mark.vm, pytest.mark.slow, pytest.mark.openvpn, pytest.mark.timeout(700),
              pytest.mark.skipif(shutil.which("openvpn") is None, reason="needs openvpn")]

INNER = Path(__file__).parent / "inner" / "openvpn_bond.py"


@pytest.fixture(scope="module")
def run(vm_pytest: Callable[..., PytestRun]) -> PytestRun:
    return vm_pytest(INNER, timeout=540)


@pytest.mark.parametrize("name", inner_test_names(INNER))
def test_in_guest(run: PytestRun, name: str) -> None:
    check_case(run, name, INNER.stem)
