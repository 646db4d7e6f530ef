"""The state every tunnel adapter shows: stopped, starting, down, up, failed.

Written once for the point-to-point tunnel, the connection tunnel, the hub and the
OpenVPN server: the current state and since when, listeners called on each change, and
``wait_state`` for tests and the library face. A device-owning adapter may hold a state
back (up while its device is missing) through :meth:`StateFace._admits`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from typing import Any

from .errors import TunconnectorError


class State(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    DOWN = "down"
    UP = "up"
    FAILED = "failed"


Listener = Callable[[Any, State, State], None]


class StateFace:
    """State, listeners and waiting; the adapter calls :meth:`_init_state` in its
    ``__init__`` and :meth:`_set_state` on every change."""

    name: str
    error: str | None
    log: logging.LoggerAdapter[logging.Logger]

    def _init_state(self) -> None:
        self.state = State.STOPPED
        self.since = time.time()
        self.error = None
        self._listeners: list[Listener] = []
        self._state_changed: asyncio.Event | None = None

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(tunnel, old, new)`` on every state change."""
        self._listeners.append(callback)

    async def wait_state(self, state: State, timeout: float | None = None) -> None:
        """Wait for ``state``; a failed tunnel raises instead of waiting on."""
        async def _wait() -> None:
            while self.state != state:
                if self.state == State.FAILED and state != State.FAILED:
                    raise TunconnectorError(f"tunnel {self.name} failed: {self.error}")
                ev = self._event()
                ev.clear()
                await ev.wait()

        await asyncio.wait_for(_wait(), timeout)

    async def wait_up(self, timeout: float | None = None) -> None:
        """Wait until the tunnel is up (a peer heard, a client connected)."""
        await self.wait_state(State.UP, timeout)

    @property
    def is_running(self) -> bool:
        return self.state in (State.STARTING, State.DOWN, State.UP)

    def _admits(self, new: State) -> bool:
        """Whether ``new`` may be shown now (a device adapter: not up without its device)."""
        return True

    def _entered(self, new: State) -> None:
        """What the adapter keeps of a state it entered (counters)."""

    def _event(self) -> asyncio.Event:
        if self._state_changed is None:
            self._state_changed = asyncio.Event()
        return self._state_changed

    def _set_state(self, new: State) -> None:
        old = self.state
        if not self._admits(new):
            return  # shown once the adapter admits it (its device back)
        if old == new:
            return
        self.state = new
        self.since = time.time()
        self._entered(new)
        if new in (State.UP, State.DOWN):
            self.log.info("tunnel %s %s -> %s", self.name, old.value, new.value)
        self._event().set()
        for cb in list(self._listeners):
            try:
                cb(self, old, new)
            except Exception:  # a listener bug must not break the data path
                self.log.exception("state listener failed")
