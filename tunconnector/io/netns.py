"""Network namespace switching for one thread (``setns`` through libc).

A network namespace belongs to a thread, not a process: a thread that enters one
creates its sockets there, and threads it starts afterwards inherit it. Used to open
probe sockets inside a tunnel's namespace, by the demo's traffic threads, and by tests
that run a Node inside a lab host.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

from ..errors import DeviceError

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
NETNS_DIR = "/run/netns"


def _path(name: str) -> str:
    return name if name.startswith("/") else f"{NETNS_DIR}/{name}"


def _setns_fd(fd: int, what: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise DeviceError(f"cannot enter network namespace {what}: {os.strerror(err)}")


def setns(name: str) -> None:
    """Move the calling thread into network namespace ``name`` (for good)."""
    try:
        fd = os.open(_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise DeviceError(f"network namespace {name!r}: {exc.strerror}") from exc
    try:
        _setns_fd(fd, repr(name))
    finally:
        os.close(fd)


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run the body with this thread inside ``name``, then come back."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(name)
        try:
            yield
        finally:
            _setns_fd(own, "of origin")
    finally:
        os.close(own)


def run_in(name: str | None, fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Call ``fn`` on a throwaway thread inside ``name`` (the caller's thread stays put)."""
    if name is None:
        return fn()
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            setns(name)
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            error.append(exc)

    t = threading.Thread(target=run, name=f"netns-{name}", daemon=True)
    t.start()
    t.join(timeout)
    if error:
        raise error[0]
    if not result:
        raise DeviceError(f"work inside netns {name!r} timed out after {timeout:.0f}s")
    return result[0]
