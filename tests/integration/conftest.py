"""Fixtures for integration tests: namespaced labs and tunconnector daemons in them."""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import Env  # noqa: E402
from netns import can_netns, lab  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = can_netns()
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.privileged)
            item.add_marker(pytest.mark.netns)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@contextlib.contextmanager
def _env(n_links: int, ipv6: bool) -> Iterator[Env]:
    with lab(n_links, ipv6=ipv6) as lb, tempfile.TemporaryDirectory(prefix="tc-it-") as wd:
        e = Env(lb, Path(wd))
        try:
            yield e
        finally:
            for d in e.daemons:
                d.stop()


@pytest.fixture
def env() -> Iterator[Env]:
    """Hosts A and B joined by one veth pair (IPv4 192.168.100.0/24 + IPv6 fd00:100::/64)."""
    with _env(1, True) as e:
        yield e


@pytest.fixture
def env2() -> Iterator[Env]:
    """Two veth pairs between A and B (multi-link tests)."""
    with _env(2, False) as e:
        yield e
