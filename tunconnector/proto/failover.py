"""Userspace multi-path: path health and the data-path policy (sans-I/O).

One tunnel, several underlay paths. Every ``probe_interval`` each path sends a native
PROBE (sequence number + sender timestamp); the peer answers with a PROBE_ACK echoing
both. From that come, per path:

- RTT: RFC 6298 smoothing (``srtt``, ``rttvar``); a probe is *missed* when no ack came
  within ``max(interval, srtt + 4 * rttvar)``, so a slow path (RTT above the interval)
  is not mistaken for a dead one, and a late ack still counts as an answer. After a miss
  on a live path the next probe leaves at once and the spacing (and timeout floor) drop
  to a quarter interval until an answer comes back: with 20 ms probes and
  ``down_after = 3`` a dead path is declared 30-50 ms after it died, not 60-80 ms.
- loss: the share of unanswered probes among the last ``loss_window`` settled ones.
- state, with hysteresis: ``down`` after ``down_after`` consecutive misses, ``up`` after
  ``up_after`` consecutive answers. Data received on a path is a liveness signal: while
  data keeps arriving, ``down`` needs twice ``down_after`` misses, so a random burst of
  lost probes on a busy path does not flap it, yet a one-way outage is still caught
  (the peer stops sending data on a path it declared down, or the longer limit hits).

Policies decide which path(s) carry the next data packet:

- ``active-backup``: the highest-priority ``up`` path whose loss is under
  ``loss_threshold``; on failure the next one at once; back to a higher-priority path
  only after it has been healthy for ``failback_delay`` (no ping-pong on a flapping link).
  Healthy means proven, not merely "no longer judged lossy": a path leaving an outage or
  a lossy spell must first answer a run of :func:`clean_run` probes in a row, a run a
  path still losing ``loss_threshold`` of its probes makes only 5 % of the time. A
  sliding loss window alone would not do: on a path losing a little more than the
  threshold, some window holds few losses by chance, and the traffic would go back.
- ``duplicate``: every ``up`` path; the receiver drops copies by the header counter
  (see :mod:`tunconnector.proto.dedup`).
- ``balance``: smooth weighted round robin over the ``up`` paths by ``weight``.

With no path ``up`` at all, data goes on every path whose remote is known: nothing is
known to work, so the copy that gets through wins and recovery loses nothing.

Both ends run one :class:`MultiPath`. A server does not know its peer's addresses
beforehand: its paths start with ``remote_known=False`` and are learned from the
client's probes (the adapter records the source address; the core only needs to know
that it may now probe that path).

Driving it (aioquic style, time always passed in)::

    mp.handle_timer(now)                         # when now >= mp.get_timer()
    for index, frame in mp.probes_to_send(now):  # send frame on path index
    ack = mp.receive_probe(index, header, payload, now)   # send ack back on index
    mp.receive_ack(index, header, payload, now)
    mp.note_data_received(index, now, nbytes)
    targets = mp.paths_for_data(now)             # path indexes for the next packet
    while (ev := mp.next_event()) is not None: ...
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from ..errors import LocalProtocolError, RemoteProtocolError
from .framing import Header, MsgType, encode_probe, parse_probe

Policy = Literal["active-backup", "duplicate", "balance"]
POLICIES: tuple[str, ...] = ("active-backup", "duplicate", "balance")

#: how long a probe may stay unanswered before the first RTT sample exists
INITIAL_TIMEOUT = 1.0
#: upper bound of the probe timeout however noisy the RTT gets
MAX_TIMEOUT = 3.0
#: a path losing ``p`` of its probes answers n in a row with probability (1-p)^n; for
#: (1-p)^n <= 5 %, n >= ln(20) / -ln(1-p) ~ 3 / p
PROOF_CONFIDENCE = 0.05
#: after a miss on a live path, probe (and time out) this many times faster until the
#: path answers or is declared down: the first miss waits a whole interval (rare false
#: alarms), the confirmation is quick
SUSPECT_SPEEDUP = 4


class PathState(enum.Enum):
    UNKNOWN = "unknown"  # never answered yet
    UP = "up"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class PathSpec:
    """What the core needs to know about one path (addresses stay in the adapter)."""

    name: str
    priority: int = 0
    weight: float = 1.0
    remote_known: bool = True


@dataclass(frozen=True, slots=True)
class PathUp:
    index: int
    name: str
    at: float
    rtt: float | None


@dataclass(frozen=True, slots=True)
class PathDown:
    index: int
    name: str
    at: float
    reason: str


@dataclass(frozen=True, slots=True)
class ActivePathChanged:
    """The path carrying data changed; ``new is None`` means no path is up."""

    old: int | None
    new: int | None
    old_name: str | None
    new_name: str | None
    at: float
    reason: str  # initial | failover | loss | failback | recovered | all_down


@dataclass(frozen=True, slots=True)
class PeerRestarted:
    """The peer's probes carry a new epoch: its process restarted, so its data counters
    did too (plaintext duplicate filters and reorder buffers must reset)."""

    index: int
    name: str
    at: float


MultiPathEvent = PathUp | PathDown | ActivePathChanged | PeerRestarted



@dataclass(frozen=True, slots=True)
class PathStats:
    """Snapshot of one path for status output and metrics."""

    index: int
    name: str
    priority: int
    state: str
    active: bool
    degraded: bool
    rtt: float | None
    rttvar: float | None
    min_rtt: float | None
    loss: float
    probes_sent: int
    probes_acked: int
    probes_missed: int
    probes_late: int
    probes_received: int
    tx_packets: int
    tx_bytes: int
    rx_packets: int
    rx_bytes: int
    last_rx: float | None
    transitions: int


@dataclass(slots=True)
class _Probe:
    seq: int
    sent: float
    sent_us: int
    deadline: float
    acked: bool = False
    missed: bool = False


@dataclass(slots=True)
class _Path:
    index: int
    spec: PathSpec
    remote_known: bool
    state: PathState = PathState.UNKNOWN
    degraded: bool = False
    good: int = 0  # consecutive answered probes
    missed: int = 0  # consecutive missed probes
    last_miss_sent: float = 0.0  # send time of the latest missed probe
    streak_seq: int = 0  # first probe of the current miss streak
    outage_seq: int = 0  # first probe of the last outage (not counted as loss after it)
    stable_since: float = 0.0  # when it last became up / changed degraded
    srtt: float | None = None
    rttvar: float = 0.0
    min_rtt: float | None = None
    next_probe_at: float = 0.0
    next_seq: int = 1
    pending: dict[int, _Probe] = field(default_factory=dict)
    history: deque[_Probe] = field(default_factory=deque)
    probes_sent: int = 0
    probes_acked: int = 0
    probes_missed: int = 0
    probes_late: int = 0
    probes_received: int = 0
    bad_acks: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    rx_packets: int = 0
    rx_bytes: int = 0
    last_data_rx: float | None = None
    last_rx: float | None = None
    transitions: int = 0
    ever_up: bool = False
    proving: bool = False  # back from an outage: not a failback target until proven
    swrr: float = 0.0  # smooth weighted round robin credit

    def timeout(self, interval: float) -> float:
        if self.srtt is None:
            return max(interval, INITIAL_TIMEOUT)
        return min(max(interval, self.srtt + 4.0 * self.rttvar), MAX_TIMEOUT)

    def loss(self, min_samples: int = 1) -> float:
        settled = 0
        lost = 0
        for p in self.history:
            if p.acked:
                settled += 1
            elif p.missed:
                settled += 1
                lost += 1
        if settled < min_samples:
            return 0.0
        return lost / settled

    def settled(self) -> int:
        return sum(1 for p in self.history if p.acked or p.missed)


def clean_run(loss_threshold: float | None, up_after: int = 1) -> int:
    """Answers in a row that prove a path's loss is under ``loss_threshold``: a path
    losing exactly the threshold makes such a run with probability PROOF_CONFIDENCE."""
    if loss_threshold is None or loss_threshold >= 1.0:
        return up_after
    n = math.log(PROOF_CONFIDENCE) / math.log1p(-loss_threshold)
    return max(up_after, math.ceil(n))


class MultiPath:
    """Path health and data-path selection for one multi-path tunnel."""

    def __init__(
        self,
        paths: list[PathSpec],
        policy: str = "active-backup",
        probe_interval: float = 0.02,
        down_after: int = 3,
        up_after: int = 3,
        failback_delay: float = 1.0,
        loss_threshold: float | None = 0.2,
        *,
        loss_window: int = 100,
        loss_min_samples: int = 20,
        now: float = 0.0,
        epoch: int | None = None,
    ) -> None:
        if not paths:
            raise LocalProtocolError("multi-path needs at least one path")
        if len(paths) > 255:
            raise LocalProtocolError("at most 255 paths (one header byte)")
        if policy not in POLICIES:
            raise LocalProtocolError(f"unknown multi-path policy {policy!r}")
        if probe_interval <= 0 or down_after < 1 or up_after < 1 or failback_delay < 0:
            raise LocalProtocolError("probe_interval, down_after, up_after must be positive")
        if loss_threshold is not None and not 0.0 < loss_threshold <= 1.0:
            loss_threshold = None  # 0 (or out of range) disables the loss switch
        self.policy = policy
        self.probe_interval = probe_interval
        self.down_after = down_after
        self.up_after = up_after
        self.failback_delay = failback_delay
        self.loss_threshold = loss_threshold
        self.loss_window = loss_window
        self.loss_min_samples = min(loss_min_samples, loss_window)
        self.clean_run = clean_run(loss_threshold, up_after)
        self._paths = [
            _Path(i, spec, spec.remote_known, next_probe_at=now, stable_since=now,
                  history=deque(maxlen=loss_window))
            for i, spec in enumerate(paths)
        ]
        self._active: int | None = None
        self._ever_active = False
        self._events: deque[MultiPathEvent] = deque()
        self._failback_at: float | None = None
        self._data_paths: list[int] = []
        self._recompute_data_paths()
        self.failovers = 0
        self.failbacks = 0
        self.path_ups = 0
        self.path_downs = 0
        self.active_changes = 0
        self.peer_restarts = 0
        self.epoch = random.getrandbits(32) if epoch is None else epoch & 0xFFFFFFFF
        self._peer_epoch: int | None = None

    # -- read side ---------------------------------------------------------------------
    @property
    def active(self) -> int | None:
        """Index of the preferred path (the one carrying data in active-backup)."""
        return self._active

    @property
    def paths(self) -> list[PathSpec]:
        return [p.spec for p in self._paths]

    def state(self, index: int) -> PathState:
        return self._paths[index].state

    def next_event(self) -> MultiPathEvent | None:
        return self._events.popleft() if self._events else None

    def get_timer(self) -> float | None:
        """Absolute time at which :meth:`handle_timer` / :meth:`probes_to_send` is due."""
        t: float | None = self._failback_at
        for p in self._paths:
            if p.remote_known and (t is None or p.next_probe_at < t):
                t = p.next_probe_at
            for pr in p.pending.values():
                if t is None or pr.deadline < t:
                    t = pr.deadline
        return t

    def path_stats(self) -> list[PathStats]:
        out = []
        for p in self._paths:
            out.append(PathStats(
                index=p.index, name=p.spec.name, priority=p.spec.priority,
                state=p.state.value, active=p.index in self._data_paths_view(),
                degraded=p.degraded, rtt=p.srtt, rttvar=p.rttvar if p.srtt else None,
                min_rtt=p.min_rtt, loss=p.loss(), probes_sent=p.probes_sent,
                probes_acked=p.probes_acked, probes_missed=p.probes_missed,
                probes_late=p.probes_late, probes_received=p.probes_received,
                tx_packets=p.tx_packets, tx_bytes=p.tx_bytes, rx_packets=p.rx_packets,
                rx_bytes=p.rx_bytes, last_rx=p.last_rx, transitions=p.transitions,
            ))
        return out

    def counters(self) -> dict[str, int]:
        return {
            "failovers": self.failovers,
            "failbacks": self.failbacks,
            "path_ups": self.path_ups,
            "path_downs": self.path_downs,
            "active_changes": self.active_changes,
            "peer_restarts": self.peer_restarts,
        }

    # -- probes ------------------------------------------------------------------------
    def probes_to_send(self, now: float) -> list[tuple[int, bytes]]:
        """Probes due now, as ``(path_index, frame)``; each path probes every interval."""
        out: list[tuple[int, bytes]] = []
        for p in self._paths:
            if not p.remote_known or now < p.next_probe_at:
                continue
            seq = p.next_seq
            p.next_seq += 1
            sent_us = int(now * 1_000_000)
            interval = self._interval(p)
            probe = _Probe(seq, now, sent_us, now + p.timeout(interval))
            p.pending[seq] = probe
            p.history.append(probe)
            p.probes_sent += 1
            # keep the phase when on time; after a stall, one probe and a fresh interval
            p.next_probe_at += interval
            if p.next_probe_at <= now:
                p.next_probe_at = now + interval
            out.append((p.index, encode_probe(seq, sent_us, path=p.index, epoch=self.epoch)))
        return out

    def receive_probe(self, index: int, header: Header, payload: bytes | memoryview,
                      now: float) -> bytes:
        """The peer's PROBE arrived on path ``index``: learn the path, return the ack."""
        p, seq, sent_us, epoch = self._probe_in(index, header, payload, MsgType.PROBE, "probe")
        p.probes_received += 1
        p.last_rx = now
        if self._peer_epoch is None:
            self._peer_epoch = epoch
        elif epoch != self._peer_epoch:  # seen once, on whichever path brings it first
            self._peer_epoch = epoch
            self.peer_restarts += 1
            self._events.append(PeerRestarted(index, p.spec.name, now))
        self._learn(p, now)
        return encode_probe(seq, sent_us, path=index, ack=True, epoch=epoch)

    def receive_ack(self, index: int, header: Header, payload: bytes | memoryview,
                    now: float) -> None:
        """A PROBE_ACK arrived on path ``index``: RTT sample and one good answer."""
        p, seq, sent_us, epoch = self._probe_in(index, header, payload,
                                                MsgType.PROBE_ACK, "probe ack")
        p.last_rx = now
        if epoch != self.epoch:
            p.bad_acks += 1  # an answer to a previous run of ours
            return
        probe = p.pending.get(seq)
        if probe is None:
            probe = next((pr for pr in p.history if pr.seq == seq), None)
            if probe is None or not probe.missed or probe.acked or probe.sent_us != sent_us:
                p.bad_acks += 1  # unknown, too old, repeated or forged: ignore
                return
            p.probes_late += 1
            probe.missed = False
            p.probes_missed -= 1
        elif probe.sent_us != sent_us:
            p.bad_acks += 1
            return
        else:
            del p.pending[seq]
        probe.acked = True
        p.probes_acked += 1
        self._rtt_sample(p, max(now - probe.sent, 0.0))
        p.missed = 0
        p.good += 1
        if p.state is not PathState.UP and p.good >= self.up_after:
            self._set_up(p, now, seq)
        elif p.state is PathState.UP:
            self._check_loss(p, now)
        if p.proving and p.good >= self.clean_run:
            p.proving = False
        self._reselect(now)

    def note_data_received(self, index: int, now: float, nbytes: int = 0) -> None:
        """A data packet arrived on path ``index`` (liveness signal; rx counters)."""
        p = self._paths[index]
        p.rx_packets += 1
        p.rx_bytes += nbytes
        p.last_rx = now
        p.last_data_rx = now
        if not p.remote_known:
            self._learn(p, now)

    def note_data_sent(self, index: int, packets: int = 1, nbytes: int = 0) -> None:
        p = self._paths[index]
        p.tx_packets += packets
        p.tx_bytes += nbytes

    def note_send_error(self, index: int, now: float, reason: str = "send failed") -> bool:
        """The kernel refused to send on path ``index`` (interface down, no route).

        That is certain, unlike a missed probe, so the path goes down at once instead of
        after ``down_after`` probe intervals. Returns True when this changed the state
        (the caller should re-pick the data paths and resend).
        """
        p = self._paths[index]
        if p.state is PathState.DOWN:
            return False
        p.good = 0
        self._set_down(p, now, reason)
        self._reselect(now)
        return True

    def set_remote_known(self, index: int, known: bool, now: float) -> None:
        """The adapter learned (or forgot) where path ``index``'s peer is."""
        p = self._path(index)
        if known:
            self._learn(p, now)
        else:
            p.remote_known = False
            p.pending.clear()
            if p.state is PathState.UP:
                self._set_down(p, now, "remote forgotten")
            self._reselect(now)

    # -- time --------------------------------------------------------------------------
    def handle_timer(self, now: float) -> None:
        """Settle probes past their deadline, apply down/loss rules, failback."""
        for p in self._paths:
            if not p.pending:
                continue
            expired = [pr for pr in p.pending.values() if pr.deadline <= now]
            for pr in sorted(expired, key=lambda x: x.seq):
                del p.pending[pr.seq]
                pr.missed = True
                p.probes_missed += 1
                p.last_miss_sent = pr.sent
                if p.missed == 0:
                    p.streak_seq = pr.seq
                p.missed += 1
                p.good = 0
            if expired and p.state is not PathState.DOWN:
                # suspect: confirm (or clear) it at once rather than a whole interval later
                p.next_probe_at = min(p.next_probe_at, now)
            if expired:
                self._check_down(p, now)
                if p.state is PathState.UP:
                    self._check_loss(p, now)
        self._reselect(now)

    # -- data path ---------------------------------------------------------------------
    def paths_for_data(self, now: float) -> list[int]:
        """Path index(es) that carry the next data packet (empty: no path known at all).

        The list is shared and stays valid until the next state change; do not mutate.
        """
        if self.policy == "balance" and len(self._data_paths) > 1:
            return [self._swrr_pick()]
        return self._data_paths

    # -- internals ---------------------------------------------------------------------
    def _path(self, index: int) -> _Path:
        if not 0 <= index < len(self._paths):
            raise RemoteProtocolError("bad_path", f"path index {index}")
        return self._paths[index]

    def _probe_in(self, index: int, header: Header, payload: bytes | memoryview,
                  want: MsgType, what: str) -> tuple[_Path, int, int, int]:
        """The path and ``(seq, sent_us, epoch)`` of an arriving PROBE or PROBE_ACK;
        a bad index, type or body raises before anything is counted."""
        p = self._path(index)
        if header.type != want:
            raise RemoteProtocolError("bad_type", f"not a {what}")
        seq, sent_us, epoch = parse_probe(payload)
        return p, seq, sent_us, epoch

    def _data_paths_view(self) -> list[int]:
        return self._data_paths

    def _interval(self, p: _Path) -> float:
        """Probe spacing: quartered while a live path has unanswered probes (suspect)."""
        if p.missed and p.state is not PathState.DOWN:
            return self.probe_interval / SUSPECT_SPEEDUP
        return self.probe_interval

    def _learn(self, p: _Path, now: float) -> None:
        if not p.remote_known:
            p.remote_known = True
            p.next_probe_at = now  # probe it at once
            self._recompute_data_paths()

    def _rtt_sample(self, p: _Path, rtt: float) -> None:
        if p.srtt is None:
            p.srtt = rtt
            p.rttvar = rtt / 2
        else:
            p.rttvar = 0.75 * p.rttvar + 0.25 * abs(p.srtt - rtt)
            p.srtt = 0.875 * p.srtt + 0.125 * rtt
        if p.min_rtt is None or rtt < p.min_rtt:
            p.min_rtt = rtt

    def _check_down(self, p: _Path, now: float) -> None:
        if p.state is PathState.DOWN or p.missed < self.down_after:
            return
        # data that arrived after the latest unanswered probe left: inbound still works
        data_alive = p.last_data_rx is not None and p.last_data_rx > p.last_miss_sent
        if data_alive and p.missed < 2 * self.down_after:
            return
        self._set_down(p, now, f"{p.missed} probes missed")

    def _check_loss(self, p: _Path, now: float) -> None:
        thr = self.loss_threshold
        if thr is None:
            return
        if p.settled() < self.loss_min_samples:
            return
        loss = p.loss()
        if not p.degraded and loss > thr:
            p.degraded = True
            p.stable_since = now
        elif p.degraded and loss <= thr / 2 and p.good >= self.clean_run:
            p.degraded = False
            p.stable_since = now

    def _set_up(self, p: _Path, now: float, acked_seq: int) -> None:
        # probes sent before the answers that brought it up, still unanswered, belong to
        # the silence it leaves (start-up, outage): expiring later they are not its loss
        for old in [q for q in p.pending if q < acked_seq]:
            del p.pending[old]
        p.state = PathState.UP
        p.transitions += 1
        p.stable_since = now
        # an outage says nothing about the loss after it: prove it before failing back
        # (failback_delay 0 asks for no failback hysteresis at all)
        p.proving = p.ever_up and self.loss_threshold is not None and self.failback_delay > 0
        p.ever_up = True
        # judge the loss of the path without the outage it just left, but keep what came
        # before: a lossy path that blinked stays judged lossy (no loss/failback ping-pong)
        keep = [pr for pr in p.history
                if not ((pr.missed and pr.seq >= p.outage_seq)
                        or (not pr.acked and not pr.missed and pr.seq < acked_seq))]
        p.history.clear()
        p.history.extend(keep)
        self.path_ups += 1
        self._events.append(PathUp(p.index, p.spec.name, now, p.srtt))
        self._recompute_data_paths()

    def _set_down(self, p: _Path, now: float, reason: str) -> None:
        was_unknown = p.state is PathState.UNKNOWN
        p.state = PathState.DOWN
        p.transitions += 1
        p.good = 0
        p.outage_seq = p.streak_seq if p.missed else p.next_seq
        self.path_downs += 1
        self._events.append(
            PathDown(p.index, p.spec.name, now, "never answered" if was_unknown else reason)
        )
        self._recompute_data_paths()

    @staticmethod
    def _rank(p: _Path) -> tuple[bool, int]:
        return (not p.degraded, p.spec.priority)

    def _reselect(self, now: float) -> None:
        ups = [p for p in self._paths if p.state is PathState.UP]
        best = max(ups, key=lambda p: (self._rank(p), -p.index)) if ups else None
        cur = self._paths[self._active] if self._active is not None else None
        self._failback_at = None
        if best is None:
            if cur is not None:
                self._switch(None, now, "all_down")
            return
        if cur is None:
            self._switch(best, now, "recovered" if self._ever_active else "initial")
        elif cur.state is not PathState.UP:
            self._switch(best, now, "failover")
        elif cur.degraded and not best.degraded:
            self._switch(best, now, "loss")
        elif best is not cur and self._rank(best) > self._rank(cur) and not best.proving:
            due = best.stable_since + self.failback_delay
            if now >= due:
                self._switch(best, now, "failback")
            else:
                self._failback_at = due
        self._recompute_data_paths()

    def _switch(self, new: _Path | None, now: float, reason: str) -> None:
        old = self._active
        self._active = None if new is None else new.index
        if new is not None:
            self._ever_active = True
        if old == self._active:
            return
        self.active_changes += 1
        if reason in ("failover", "loss"):
            self.failovers += 1
        elif reason == "failback":
            self.failbacks += 1
        self._events.append(ActivePathChanged(
            old, self._active,
            None if old is None else self._paths[old].spec.name,
            None if new is None else new.spec.name,
            now, reason,
        ))
        self._recompute_data_paths()

    def _recompute_data_paths(self) -> None:
        ups = [p.index for p in self._paths if p.state is PathState.UP]
        if not ups or self.policy == "duplicate":
            # duplicate: every path with a known remote, whatever its health says (as
            # engarde): a probe verdict delayed by a stalled process must never leave
            # the one working path out; copies on a dead path cost nothing but bytes
            new = [p.index for p in self._paths if p.remote_known]
        elif self.policy == "active-backup":
            new = [self._active] if self._active is not None else ups[:1]
        else:
            new = ups
        if new != self._data_paths:
            self._data_paths = new

    def _swrr_pick(self) -> int:
        """Smooth weighted round robin (nginx): even spread, proportional to weight."""
        total = 0.0
        best: _Path | None = None
        for i in self._data_paths:
            p = self._paths[i]
            p.swrr += p.spec.weight
            total += p.spec.weight
            if best is None or p.swrr > best.swrr:
                best = p
        if best is None:  # pragma: no cover - callers check _data_paths first
            raise LocalProtocolError("no path to balance over")
        best.swrr -= total
        return best.index
