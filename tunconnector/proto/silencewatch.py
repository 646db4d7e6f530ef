"""When to move an active-backup bond's active slave, from how long each tunnel is silent.

Why: the kernel's ARP monitor needs ``(arp_missed_max + 1/2) x arp_interval`` of silence
(250-350 ms at ``arp_interval=100``) to drop the active slave, and a tunnel's own
``dead_after`` must stay long (about a second), or a stall of either daemon (a loaded
host, an emulated CPU) flaps carriers. This watch compares instead: the active slave is
abandoned when it has been silent for ``switch_after`` *while another slave has heard
from its peer within* ``fresh_within``. A stall of the peer daemon silences every path
at once and moves nothing; a path that alone went quiet (a firewall drop, a dead hop
behind a live link) is left within ``switch_after`` plus one tick.

Failback (``primary_reselect=always``): the primary is made active again once it has
been fresh continuously for ``hold`` seconds, so one stray message cannot bounce it.

Sans-I/O: fed slave silences (seconds since the last valid message) and the kernel's
active slave; returns the slave to make active, or None.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class SilenceWatch:
    def __init__(self, *, switch_after: float, fresh_within: float | None = None,
                 hold: float | None = None, primary: str | None = None,
                 failback: bool = False) -> None:
        if switch_after <= 0:
            raise ValueError("switch_after must be positive")
        self.switch_after = switch_after
        self.fresh_within = fresh_within if fresh_within is not None else switch_after * 2 / 3
        self.hold = hold if hold is not None else 2 * switch_after
        self.primary = primary
        self.failback = failback
        self._fresh_since: dict[str, float] = {}
        self._orphan_try = float("-inf")
        self.moves = 0

    def _fresh(self, silence: Mapping[str, float], tap: str) -> bool:
        return silence.get(tap, float("inf")) < self.fresh_within

    def decide(self, now: float, active: str | None, silence: Mapping[str, float],
               usable: Iterable[str], *, primary_kernel_up: bool = True) -> str | None:
        """The slave to make active now, or None.

        ``silence``: seconds since each slave's tunnel last heard its peer (missing:
        never); ``usable``: slaves that may carry traffic (tunnel up, not forced down,
        underlay up); ``primary_kernel_up``: the bond's own monitor counts the primary
        up (hearing the peer does not prove our sends arrive: a one-way drop is the
        ARP monitor's to see, and failback must not undo its verdict).
        """
        usable = [u for u in usable]
        for tap in silence:
            if self._fresh(silence, tap):
                self._fresh_since.setdefault(tap, now)
            else:
                self._fresh_since.pop(tap, None)
        if active is None:
            # the bond has no active slave: its ARP monitor dropped the last one (say
            # while this process was stalled) and has not picked another yet; give it a
            # fresh one, at most once per switch_after (the kernel refuses a slave its
            # monitor does not count up yet)
            fresh = [u for u in usable if self._fresh(silence, u)]
            if not fresh or now - self._orphan_try < self.switch_after:
                return None
            self._orphan_try = now
            if self.primary in fresh:
                return self._move(self.primary)
            return self._move(min(fresh, key=lambda u: silence[u]))
        if active not in silence:
            return None
        if silence[active] >= self.switch_after:
            fresh = [u for u in usable if u != active and self._fresh(silence, u)]
            if not fresh:
                return None  # every path is quiet: a stall or a total outage, not ours to fix
            if self.primary in fresh:
                return self._move(self.primary)
            return self._move(min(fresh, key=lambda u: silence[u]))
        p = self.primary
        since = self._fresh_since.get(p) if p is not None else None
        if (self.failback and p is not None and p != active and p in usable
                and primary_kernel_up and since is not None and now - since >= self.hold):
            return self._move(p)
        return None

    def _move(self, tap: str | None) -> str | None:
        if tap is not None:
            self.moves += 1
        return tap


__all__ = ["SilenceWatch"]
