"""Fixtures for tests that need a real kernel bond: a Debian 6.1 guest under QEMU (TCG).

Host-side tests (``test_*.py`` here) boot one guest per inner module and run it with
pytest there (``inner/vm_*.py``: not collected on the host, they need the guest kernel);
each inner case is then reported as its own host test. Skips, with the reason, when QEMU,
busybox-static or the kernel package cannot be had.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tunconnector.testing.vm import VM_SUITE_TIMEOUT, PytestRun, run_pytest_in_vm, vm_available

INNER = Path(__file__).parent / "inner"
_TIMINGS: list[tuple[str, float | None, float]] = []
_RUNS: dict[Path, PytestRun] = {}


@pytest.fixture(scope="session")
def vm_ready() -> None:
    if os.environ.get("TUNCONNECTOR_IN_VM") == "1":
        pytest.skip("already inside the VM")
    ok, why = vm_available()
    if not ok:
        pytest.skip(f"VM unavailable: {why}")


@pytest.fixture(scope="session")
def vm_suite(vm_ready: None, tmp_path_factory: pytest.TempPathFactory) -> PytestRun:
    """Every ``inner/vm_*.py`` in ONE guest boot (boot and interpreter start-up are the
    expensive part under TCG); host tests pick their cases by module and name."""
    share = tmp_path_factory.mktemp("vm-suite")
    modules = sorted(INNER.glob("vm_*.py"))
    res = run_pytest_in_vm(modules, share, timeout=VM_SUITE_TIMEOUT)
    _TIMINGS.append(("+".join(m.stem for m in modules), res.vm.boot_seconds, res.vm.elapsed))
    _RUNS[INNER] = res
    return res


@pytest.fixture(scope="session")
def vm_pytest(vm_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., PytestRun]:
    """``vm_pytest(path, timeout)``: run an inner module once per session in a guest."""

    def run(path: Path, timeout: float = 240.0, **kwargs: object) -> PytestRun:
        path = path.resolve()
        if path not in _RUNS:
            share = tmp_path_factory.mktemp(f"vm-{path.stem}")
            res = run_pytest_in_vm([path], share, timeout, **kwargs)  # type: ignore[arg-type]
            _TIMINGS.append((path.name, res.vm.boot_seconds, res.vm.elapsed))
            _RUNS[path] = res
        return _RUNS[path]

    return run


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _TIMINGS:
        return
    terminalreporter.section("VM runs")
    for name, boot, total in _TIMINGS:
        boot_text = f"{boot:.1f}s" if boot is not None else "n/a"
        terminalreporter.write_line(f"{name}: boot to command {boot_text}, total {total:.1f}s")
    for run in _RUNS.values():
        for key, value in sorted(run.properties.items()):
            terminalreporter.write_line(f"  {key} = {value}")


@pytest.fixture(scope="module")
def guest(vm_suite: PytestRun) -> PytestRun:
    """The shared guest run, under the name the host-side mirror tests use."""
    return vm_suite
