"""Keepalive and dead-peer detection, OpenVPN ``--keepalive N M`` semantics.

Alive: send a keepalive when nothing was sent for ``keepalive`` seconds; declare the
peer dead when nothing valid was received for ``dead_after`` seconds.
Not (yet) alive, as initiator: say hello (a keepalive) every ``hello_interval`` seconds
whatever else is sent, so a restarted server learns our address within a second even
while data keeps flowing. Plain class, time passed in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PeerUp:
    at: float


@dataclass(frozen=True, slots=True)
class PeerDown:
    at: float
    silent_for: float
    #: ``silent`` (nothing for dead_after) or ``exit`` (the peer said it stops)
    reason: str = "silent"


LivenessEvent = PeerUp | PeerDown


class Liveness:
    def __init__(self, keepalive: float, dead_after: float, hello_interval: float = 1.0) -> None:
        self.keepalive = keepalive
        self.dead_after = dead_after
        self.hello_interval = min(hello_interval, keepalive)
        self.initiator = False
        self.alive = False
        self.last_rx: float | None = None
        self.last_tx: float = 0.0
        self.last_keepalive_tx: float | None = None
        self._events: list[LivenessEvent] = []
        self._due = False

    def start(self, now: float, *, send_first: bool) -> None:
        """Arm timers; an initiator (client) says hello at once."""
        self.initiator = send_first
        self.last_tx = now
        self.last_keepalive_tx = None if send_first else now

    def on_receive(self, now: float) -> None:
        self.last_rx = now
        if not self.alive:
            self.alive = True
            self._events.append(PeerUp(now))

    def on_exit(self, now: float) -> None:
        """The peer told us it stops (an authenticated EXIT): down now, not after
        dead_after of silence."""
        if self.alive:
            self.alive = False
            silent = 0.0 if self.last_rx is None else now - self.last_rx
            self._events.append(PeerDown(now, silent, "exit"))

    def on_send(self, now: float) -> None:
        self.last_tx = now

    def on_keepalive_sent(self, now: float) -> None:
        self.last_tx = now
        self.last_keepalive_tx = now

    def _next_keepalive(self) -> float:
        if not self.alive and self.initiator:
            if self.last_keepalive_tx is None:
                return float("-inf")
            return self.last_keepalive_tx + self.hello_interval
        return self.last_tx + self.keepalive

    def get_timer(self) -> float | None:
        t = self._next_keepalive()
        if self.alive and self.last_rx is not None:
            t = min(t, self.last_rx + self.dead_after)
        return t

    def handle_timer(self, now: float) -> None:
        if self.alive and self.last_rx is not None and now >= self.last_rx + self.dead_after:
            self.alive = False
            self._events.append(PeerDown(now, now - self.last_rx))
        if now >= self._next_keepalive():
            self._due = True

    def keepalive_due(self) -> bool:
        """True once per due keepalive; the caller sends one and calls on_keepalive_sent."""
        due, self._due = self._due, False
        return due

    def has_events(self) -> bool:
        return bool(self._events)

    def next_event(self) -> LivenessEvent | None:
        return self._events.pop(0) if self._events else None
