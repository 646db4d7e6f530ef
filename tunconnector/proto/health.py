"""Reachability verdict over a sliding window of probes (sans-I/O).

Seed 000 pinged a far host 5 times every 10 s and called the link ``OK`` when more than
half answered. Here the probes are spread evenly (``interval / probes`` apart) and the
verdict is taken over the last ``probes`` results after *every* result, so a change is
seen within one interval instead of up to two, with the same meaning: "more than
``threshold`` of the last ``probes`` probes answered".

The adapter (``tunconnector.health``) asks :meth:`HealthCheck.send_probe` for a sequence
number when :attr:`HealthCheck.next_probe_at` is due, sends an echo, and reports the RTT
(or ``None`` on timeout) with :meth:`HealthCheck.probe_result`. State changes come out of
:meth:`HealthCheck.next_event`. Time is always passed in as ``now``.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field

from ..errors import LocalProtocolError


class HealthState(enum.Enum):
    UNKNOWN = "UNKNOWN"
    OK = "OK"
    NOT_OK = "NOT_OK"


@dataclass(frozen=True, slots=True)
class ProbeRecord:
    """One finished probe: ``rtt`` is ``None`` when it timed out or failed."""

    seq: int
    sent_at: float
    rtt: float | None

    @property
    def answered(self) -> bool:
        return self.rtt is not None


@dataclass(frozen=True, slots=True)
class HealthChanged:
    """Emitted when the verdict changes (UNKNOWN -> OK counts as a change)."""

    old: HealthState
    new: HealthState
    at: float
    answered: int
    window: int


@dataclass(slots=True)
class HealthCheck:
    """Sliding-window health verdict; see the module docstring."""

    interval: float = 10.0
    probes: int = 5
    threshold: float = 0.5
    now: float = 0.0
    history_len: int = 64
    state: HealthState = HealthState.UNKNOWN
    next_probe_at: float = field(init=False)
    sent: int = 0
    answered_total: int = 0
    lost_total: int = 0
    transitions: int = 0
    last_change_at: float | None = None
    last_rtt: float | None = None
    _seq: int = 0
    _outstanding: dict[int, float] = field(default_factory=dict)
    _window: deque[ProbeRecord] = field(init=False)
    _history: deque[ProbeRecord] = field(init=False)
    _changes: deque[HealthChanged] = field(init=False)
    _events: deque[HealthChanged] = field(default_factory=deque)

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.probes <= 0:
            raise LocalProtocolError("interval and probes must be > 0")
        if not 0.0 <= self.threshold < 1.0:
            raise LocalProtocolError("threshold must be in [0, 1)")
        self.next_probe_at = self.now
        self._window = deque(maxlen=self.probes)
        self._history = deque(maxlen=self.history_len)
        self._changes = deque(maxlen=self.history_len)

    # -- derived numbers -----------------------------------------------------------------
    @property
    def spacing(self) -> float:
        """Seconds between two probes: ``probes`` of them per ``interval``."""
        return self.interval / self.probes

    @property
    def needed(self) -> int:
        """Answers needed in a full window for OK: strictly more than ``threshold``."""
        return math.floor(self.threshold * self.probes) + 1

    # -- driving -------------------------------------------------------------------------
    def get_timer(self) -> float:
        return self.next_probe_at

    def send_probe(self, now: float) -> int:
        """Allocate the next probe's sequence number and schedule the one after it."""
        self._seq = (self._seq + 1) & 0xFFFF
        seq = self._seq
        self._outstanding[seq] = now
        self.sent += 1
        nxt = self.next_probe_at + self.spacing
        # after a stall (suspend, blocked loop) do not fire a burst of catch-up probes
        self.next_probe_at = nxt if nxt > now else now + self.spacing
        return seq

    def probe_result(self, seq: int, rtt: float | None, now: float) -> None:
        """Record a finished probe; unknown or duplicate ``seq`` is ignored."""
        sent_at = self._outstanding.pop(seq, None)
        if sent_at is None:
            return
        rec = ProbeRecord(seq, sent_at, rtt)
        self._history.append(rec)
        self._judge(rec)
        if rtt is None:
            self.lost_total += 1
        else:
            self.answered_total += 1
            self.last_rtt = rtt
        self._evaluate(now)

    def _judge(self, rec: ProbeRecord) -> None:
        """Put ``rec`` into the window in the order the probes were *sent*.

        Probes overlap when the timeout exceeds the spacing, so a probe sent while the link
        was down can time out after newer probes were answered. The verdict is about the
        last ``probes`` probes sent: a result older than every probe in a full window is
        counted but not judged, and an older one lands in its place, not at the end
        (appending it once flipped a recovered link back to NOT_OK).
        """
        window = self._window
        if not window or rec.sent_at >= window[-1].sent_at:
            window.append(rec)
            return
        if len(window) == window.maxlen and rec.sent_at < window[0].sent_at:
            return
        ordered = sorted([*window, rec], key=lambda r: r.sent_at)
        window.clear()
        window.extend(ordered[-self.probes:])

    def reset(self, now: float) -> None:
        """Forget the window (tunnel restarted): verdict back to UNKNOWN, probe now."""
        self._outstanding.clear()
        self._window.clear()
        self.next_probe_at = now
        self._set(HealthState.UNKNOWN, now)

    def next_event(self) -> HealthChanged | None:
        return self._events.popleft() if self._events else None

    # -- reading -------------------------------------------------------------------------
    @property
    def window_answered(self) -> int:
        return sum(1 for r in self._window if r.answered)

    @property
    def window_rtt_avg(self) -> float | None:
        rtts = [r.rtt for r in self._window if r.rtt is not None]
        return sum(rtts) / len(rtts) if rtts else None

    @property
    def history(self) -> list[ProbeRecord]:
        return list(self._history)

    @property
    def changes(self) -> list[HealthChanged]:
        return list(self._changes)

    def snapshot(self) -> dict[str, object]:
        """JSON-ready summary for the API and ``status``."""
        return {
            "state": self.state.value,
            "window": len(self._window),
            "window_answered": self.window_answered,
            "probes": self.probes,
            "interval": self.interval,
            "threshold": self.threshold,
            "sent": self.sent,
            "answered": self.answered_total,
            "lost": self.lost_total,
            "rtt_last": self.last_rtt,
            "rtt_avg": self.window_rtt_avg,
            "transitions": self.transitions,
            "last_change_at": self.last_change_at,
        }

    # -- internals -----------------------------------------------------------------------
    def _evaluate(self, now: float) -> None:
        answered = self.window_answered
        lost = len(self._window) - answered
        if answered >= self.needed:
            self._set(HealthState.OK, now)
        elif lost > self.probes - self.needed:
            self._set(HealthState.NOT_OK, now)
        # else: window not full and not yet decidable; keep the previous verdict

    def _set(self, new: HealthState, now: float) -> None:
        old = self.state
        if new is old:
            return
        self.state = new
        self.last_change_at = now
        if new is not HealthState.UNKNOWN:
            self.transitions += 1
        ev = HealthChanged(old, new, now, self.window_answered, len(self._window))
        self._events.append(ev)
        self._changes.append(ev)
