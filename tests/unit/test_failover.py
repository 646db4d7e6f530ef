"""Multi-path state machine with injected time: two MultiPath cores joined by a
simulated network (per-path, per-direction delay, cut and loss), a 1 kpps data stream
with counters, and a duplicate filter at the receiver."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from tunconnector.errors import LocalProtocolError, RemoteProtocolError
from tunconnector.proto.dedup import DuplicateFilter
from tunconnector.proto.failover import (
    ActivePathChanged,
    MultiPath,
    MultiPathEvent,
    PathDown,
    PathSpec,
    PathState,
    PathUp,
)
from tunconnector.proto.framing import HEADER_LEN, MsgType, encode_native, parse_header

STEP = 0.0005


@dataclass
class Link:
    """One path; ``ab`` is the A->B direction."""

    delay: float = 0.001
    up_ab: bool = True
    up_ba: bool = True
    loss: float = 0.0
    delay_fn: Callable[[float], float] | None = None


@dataclass
class Side:
    mp: MultiPath
    events: list[MultiPathEvent] = field(default_factory=list)
    dedup: DuplicateFilter = field(default_factory=DuplicateFilter)
    delivered: set[int] = field(default_factory=set)
    rx_copies: int = 0


class Sim:
    def __init__(self, a: MultiPath, b: MultiPath, links: list[Link], seed: int = 1) -> None:
        self.sides = {"a": Side(a), "b": Side(b)}
        self.links = links
        self.now = 0.0
        self.rng = random.Random(seed)
        self._q: list[tuple[float, int, str, int, bytes]] = []
        self._n = 0
        self.counter = 0
        self.data_pps = 0  # A -> B data stream rate (0: off)
        self._next_data = 0.0
        self.sent_at: dict[int, float] = {}

    @property
    def a(self) -> MultiPath:
        return self.sides["a"].mp

    @property
    def b(self) -> MultiPath:
        return self.sides["b"].mp

    def send(self, src: str, path: int, frame: bytes) -> None:
        link = self.links[path]
        up = link.up_ab if src == "a" else link.up_ba
        if not up or (link.loss and self.rng.random() < link.loss):
            return
        delay = link.delay_fn(self.now) if link.delay_fn else link.delay
        dst = "b" if src == "a" else "a"
        self._n += 1
        heapq.heappush(self._q, (self.now + delay, self._n, dst, path, frame))

    def _deliver(self, dst: str, path: int, frame: bytes) -> None:
        side = self.sides[dst]
        hdr = parse_header(frame)
        payload = frame[HEADER_LEN:]
        if hdr.type == MsgType.PROBE:
            ack = side.mp.receive_probe(path, hdr, payload, self.now)
            self.send(dst, path, ack)
        elif hdr.type == MsgType.PROBE_ACK:
            side.mp.receive_ack(path, hdr, payload, self.now)
        elif hdr.type == MsgType.DATA:
            side.mp.note_data_received(path, self.now, len(frame))
            side.rx_copies += 1
            if side.dedup.accept(hdr.counter):
                assert hdr.counter not in side.delivered
                side.delivered.add(hdr.counter)

    def run_until(self, t_end: float) -> None:
        while self.now < t_end - 1e-12:
            while self._q and self._q[0][0] <= self.now:
                _, _, dst, path, frame = heapq.heappop(self._q)
                self._deliver(dst, path, frame)
            for name, side in self.sides.items():
                t = side.mp.get_timer()
                if t is not None and t <= self.now:
                    side.mp.handle_timer(self.now)
                    for path, frame in side.mp.probes_to_send(self.now):
                        self.send(name, path, frame)
                while (ev := side.mp.next_event()) is not None:
                    side.events.append(ev)
            if self.data_pps and self.now >= self._next_data:
                self._next_data += 1.0 / self.data_pps
                self.counter += 1
                self.sent_at[self.counter] = self.now
                frame = encode_native(MsgType.DATA, b"x" * 20, counter=self.counter)
                for path in self.a.paths_for_data(self.now):
                    self.a.note_data_sent(path, 1, len(frame))
                    self.send("a", path, frame)
            self.now = round(self.now + STEP, 9)

    def stream(self, pps: int) -> None:
        """Start (or stop, with 0) the A -> B data stream at ``pps`` packets/s."""
        self.data_pps = pps
        self._next_data = self.now

    def lost(self, since: float = 0.0, until: float | None = None) -> list[int]:
        got = self.sides["b"].delivered
        if until is None:
            until = self.now - 0.01  # still in flight
        return [c for c, t in self.sent_at.items()
                if since <= t < until and c not in got]


def make(policy: str = "active-backup", *, server_learns: bool = False,
         n: int = 2, **kw: Any) -> tuple[MultiPath, MultiPath]:
    params: dict[str, Any] = dict(probe_interval=0.02, down_after=3, up_after=3,
                                     failback_delay=1.0, loss_threshold=0.2)
    params.update(kw)
    prios = [10 * (n - i) for i in range(n)]
    a = MultiPath([PathSpec(f"p{i}", prios[i]) for i in range(n)], policy,
                  **params)
    b = MultiPath([PathSpec(f"p{i}", prios[i], remote_known=not server_learns)
                   for i in range(n)], policy, **params)
    return a, b


def changes(side: Side) -> list[ActivePathChanged]:
    return [e for e in side.events if isinstance(e, ActivePathChanged)]


def up_sim(policy: str = "active-backup", n: int = 2, **kw: Any) -> Sim:
    a, b = make(policy, n=n, **kw)
    sim = Sim(a, b, [Link() for _ in range(n)])
    sim.run_until(0.2)
    return sim


# -- coming up ---------------------------------------------------------------------------

def test_paths_come_up_and_highest_priority_is_active() -> None:
    sim = up_sim()
    for side in sim.sides.values():
        assert [s.state for s in side.mp.path_stats()] == ["up", "up"]
        assert side.mp.active == 0
        assert side.mp.paths_for_data(sim.now) == [0]
        ups = [e for e in side.events if isinstance(e, PathUp)]
        assert sorted(e.index for e in ups) == [0, 1]
        first = changes(side)[0]
        assert first.reason == "initial" and first.old is None
    st = sim.a.path_stats()[0]
    assert st.rtt is not None and 0.0015 < st.rtt < 0.003  # 2 x 1 ms link delay
    assert st.loss == 0.0 and st.probes_acked > 5


def test_up_needs_up_after_answers() -> None:
    a, b = make(up_after=5)
    sim = Sim(a, b, [Link(), Link()])
    sim.run_until(0.075)  # probes at 0, 20, 40, 60 ms: 4 answers
    assert a.state(0) is PathState.UNKNOWN
    assert a.paths_for_data(sim.now) == [0, 1]  # nothing known to work: send everywhere
    sim.run_until(0.1)
    assert a.state(0) is PathState.UP


def test_server_learns_paths_from_client_probes() -> None:
    a, b = make(server_learns=True)
    sim = Sim(a, b, [Link(), Link()])
    assert b.get_timer() is None
    assert b.probes_to_send(0.0) == []
    assert b.paths_for_data(0.0) == []
    sim.run_until(0.2)
    assert b.paths_for_data(sim.now) == [0]
    assert all(s.probes_sent > 0 for s in b.path_stats())
    assert b.state(1) is PathState.UP


def test_server_learns_from_data() -> None:
    _, b = make(server_learns=True)
    b.note_data_received(1, 0.5, 100)
    assert b.paths_for_data(0.5) == [1]
    assert [i for i, _ in b.probes_to_send(0.5)] == [1]


# -- failover ----------------------------------------------------------------------------

@pytest.mark.parametrize("cut_at", [1.0, 1.0013, 1.0071, 1.0149, 1.0197])
def test_cut_active_path_fails_over_within_budget(cut_at: float) -> None:
    sim = up_sim()
    sim.stream(1000)
    sim.run_until(cut_at)
    sim.links[0].up_ab = sim.links[0].up_ba = False
    sim.run_until(cut_at + 0.5)
    for side in sim.sides.values():
        downs = [e for e in side.events if isinstance(e, PathDown)]
        assert [e.index for e in downs] == [0]
        # first miss after <= 1 interval, then fast re-probes: 2..3 intervals in all
        assert 0.02 <= downs[0].at - cut_at <= 0.055
        ch = changes(side)[-1]
        assert (ch.old, ch.new, ch.reason) == (0, 1, "failover")
        assert side.mp.failovers == 1
    lost = sim.lost()
    assert 0 < len(lost) <= 70  # 1 kpps: one packet = 1 ms
    assert all(cut_at - 0.002 <= sim.sent_at[c] <= cut_at + 0.07 for c in lost)


def test_one_way_cut_is_detected_by_both_ends() -> None:
    sim = up_sim()
    sim.stream(1000)
    sim.run_until(1.0)
    sim.links[0].up_ab = False  # A -> B only
    sim.run_until(1.5)
    for side in sim.sides.values():
        assert side.mp.active == 1
        down = next(e for e in side.events if isinstance(e, PathDown))
        assert down.at - 1.0 <= 0.1
    assert len(sim.lost()) <= 70


def test_duplicate_mode_loses_nothing_on_cut() -> None:
    sim = up_sim("duplicate")
    assert sim.a.paths_for_data(sim.now) == [0, 1]
    sim.stream(1000)
    sim.run_until(1.0)
    sim.links[0].up_ab = sim.links[0].up_ba = False
    sim.run_until(1.5)
    # path 0 is down, but duplicate mode keeps a copy on it: a health verdict (which a
    # stalled process can get wrong) never decides which copies exist
    assert sim.a.path_stats()[0].state == "down"
    assert sim.a.paths_for_data(sim.now) == [0, 1]
    sim.links[0].up_ab = sim.links[0].up_ba = True
    sim.run_until(3.0)
    assert sim.a.paths_for_data(sim.now) == [0, 1]
    sim.stream(0)
    sim.run_until(3.1)
    assert sim.lost() == []
    b = sim.sides["b"]
    assert b.dedup.stats.duplicates > 1000
    assert b.rx_copies == b.dedup.stats.delivered + b.dedup.stats.duplicates


# -- failback ----------------------------------------------------------------------------

def test_failback_after_failback_delay() -> None:
    sim = up_sim(failback_delay=1.0)
    sim.run_until(1.0)
    sim.links[0].up_ab = sim.links[0].up_ba = False
    sim.run_until(1.5)
    assert sim.a.active == 1
    sim.links[0].up_ab = sim.links[0].up_ba = True
    sim.run_until(4.0)
    for side in sim.sides.values():
        up = [e for e in side.events if isinstance(e, PathUp) and e.index == 0][-1]
        assert 1.5 <= up.at < 1.6
        back = changes(side)[-1]
        assert (back.old, back.new, back.reason) == (1, 0, "failback")
        assert back.at == pytest.approx(up.at + 1.0, abs=0.002)
        assert side.mp.failbacks == 1


def test_failback_delay_zero_is_immediate() -> None:
    sim = up_sim(failback_delay=0.0)
    sim.links[0].up_ab = sim.links[0].up_ba = False
    sim.run_until(0.5)
    sim.links[0].up_ab = sim.links[0].up_ba = True
    sim.run_until(1.0)
    ups = [e for e in sim.sides["a"].events if isinstance(e, PathUp) and e.index == 0]
    assert changes(sim.sides["a"])[-1].at == ups[-1].at
    assert sim.a.active == 0


def test_flapping_primary_does_not_ping_pong() -> None:
    sim = up_sim(failback_delay=1.0)
    # primary flaps: 150 ms down, 300 ms up, for 4 s
    t = 0.3
    while t < 4.3:
        sim.run_until(t)
        sim.links[0].up_ab = sim.links[0].up_ba = False
        sim.run_until(t + 0.15)
        sim.links[0].up_ab = sim.links[0].up_ba = True
        t += 0.45
    sim.run_until(t)
    side = sim.sides["a"]
    downs = [e for e in side.events if isinstance(e, PathDown)]
    assert len(downs) >= 5  # it did flap
    assert sim.a.failovers == 1 and sim.a.failbacks == 0
    assert sim.a.active == 1
    sim.run_until(t + 1.2)  # stable again: one failback after the delay
    assert sim.a.active == 0 and sim.a.failbacks == 1


# -- slow paths, all down ---------------------------------------------------------------

def test_rising_rtt_is_tracked_not_declared_down() -> None:
    a, b = make()
    # primary RTT climbs from 2 ms to 2 x 150 ms over 3 s: far above the 20 ms interval
    slow = Link(delay_fn=lambda now: 0.001 + min(now, 3.0) * 0.05)
    sim = Sim(a, b, [slow, Link()])
    sim.run_until(4.0)
    assert not [e for e in sim.sides["a"].events if isinstance(e, PathDown)]
    st = a.path_stats()[0]
    assert st.state == "up" and a.active == 0
    assert st.rtt is not None and 0.25 < st.rtt < 0.33
    assert st.loss == 0.0


def test_sudden_rtt_jump_recovers() -> None:
    a, b = make(failback_delay=0.5)
    link = Link()
    sim = Sim(a, b, [link, Link()])
    sim.run_until(1.0)
    link.delay = 0.2  # 2 ms -> 400 ms RTT at once: missed, then relearned
    sim.run_until(6.0)
    st = a.path_stats()[0]
    assert st.state == "up" and a.active == 0
    assert st.probes_late > 0
    assert st.rtt is not None and 0.35 < st.rtt < 0.45


def test_all_paths_down_then_recovery() -> None:
    sim = up_sim()
    sim.stream(1000)
    sim.run_until(1.0)
    for link in sim.links:
        link.up_ab = link.up_ba = False
    sim.run_until(1.5)
    for side in sim.sides.values():
        ch = changes(side)[-1]
        assert ch.new is None and ch.reason == "all_down"
        assert side.mp.active is None
        # nothing is known to work: data goes on every path
        assert side.mp.paths_for_data(sim.now) == [0, 1]
    sim.links[1].up_ab = sim.links[1].up_ba = True
    sim.run_until(1.8)
    for side in sim.sides.values():
        ch = changes(side)[-1]
        assert (ch.new, ch.reason) == (1, "recovered")
    lost = sim.lost(since=1.0)
    # the broadcast while all were down delivers as soon as path 1 works again
    assert lost and max(sim.sent_at[c] for c in lost) < 1.51


def test_probe_timer_keeps_phase_and_does_not_burst() -> None:
    a, _ = make()
    assert len(a.probes_to_send(0.0)) == 2
    assert a.probes_to_send(0.01) == []
    assert a.get_timer() == pytest.approx(0.02)
    assert len(a.probes_to_send(0.5)) == 2  # late by 480 ms: one probe per path
    assert a.probes_to_send(0.5) == []
    assert a.get_timer() == pytest.approx(0.52)


# -- loss ----------------------------------------------------------------------------------

def test_loss_threshold_moves_off_lossy_path() -> None:
    a, b = make(loss_threshold=0.1)
    sim = Sim(a, b, [Link(), Link()], seed=7)
    sim.run_until(0.5)
    sim.links[0].loss = 0.3  # each direction: about half the probes go unanswered
    sim.run_until(4.0)
    for side in sim.sides.values():
        ch = [c for c in changes(side) if c.reason in ("loss", "failover")]
        assert ch and ch[0].old == 0 and ch[0].new == 1
        assert side.mp.active == 1
    st = a.path_stats()[0]
    assert st.degraded or st.state == "down"
    assert st.loss > 0.1
    # healed: loss falls under half the threshold, then failback after the delay
    sim.links[0].loss = 0.0
    sim.run_until(9.0)
    assert a.active == 0 and not a.path_stats()[0].degraded


def test_loss_threshold_disabled() -> None:
    a, b = make(loss_threshold=0)
    sim = Sim(a, b, [Link(loss=0.1), Link()], seed=3)
    sim.run_until(5.0)
    assert not any(c.reason == "loss" for c in changes(sim.sides["a"]))


def test_duplicate_mode_under_random_loss_delivers() -> None:
    a, b = make("duplicate")
    sim = Sim(a, b, [Link(loss=0.05), Link()], seed=11)
    sim.run_until(0.2)
    sim.stream(1000)
    sim.run_until(5.2)
    sim.stream(0)
    sim.run_until(5.3)
    assert len(sim.lost()) == 0


def test_data_received_defers_down_on_lost_probes() -> None:
    """Probe answers lost while data keeps arriving: down only at 2 x down_after."""
    sim = up_sim()
    mp = sim.a
    t = sim.now
    # stop everything reaching A on path 0 except data we inject by hand
    sim.links[0].up_ba = False
    end = t + 0.2
    while sim.now < end:
        mp.note_data_received(0, sim.now, 100)
        sim.run_until(sim.now + 0.001)
        if mp.state(0) is PathState.DOWN:
            break
    downs = [e for e in sim.sides["a"].events if isinstance(e, PathDown)]
    assert downs and downs[0].reason == "6 probes missed"  # not 3: data kept arriving
    assert downs[0].at - t >= 0.035


# -- balance ------------------------------------------------------------------------------

def test_balance_spreads_by_weight() -> None:
    a = MultiPath([PathSpec("x", 1, weight=3.0), PathSpec("y", 1, weight=1.0)], "balance")
    b = MultiPath([PathSpec("x", 1), PathSpec("y", 1)], "balance")
    sim = Sim(a, b, [Link(), Link()])
    sim.run_until(0.2)
    picks = [a.paths_for_data(sim.now)[0] for _ in range(400)]
    assert picks.count(0) == 300 and picks.count(1) == 100
    assert max(len(s) for s in "".join(map(str, picks)).split("1")) <= 3  # smooth


# -- bad input ---------------------------------------------------------------------------

def test_bad_input_raises_remote_protocol_error() -> None:
    a, _ = make()
    hdr = parse_header(encode_native(MsgType.PROBE))
    with pytest.raises(RemoteProtocolError):
        a.receive_probe(0, hdr, b"\x00" * 3, 0.0)
    with pytest.raises(RemoteProtocolError):
        a.receive_probe(9, hdr, b"\x00" * 16, 0.0)
    ack_hdr = parse_header(encode_native(MsgType.PROBE_ACK))
    a.receive_ack(0, ack_hdr, b"\x00" * 20, 0.0)  # unknown seq: ignored
    assert a.state(0) is PathState.UNKNOWN


def test_forged_ack_with_wrong_timestamp_is_ignored() -> None:
    a, _ = make(up_after=1)
    (i, frame), _ = a.probes_to_send(0.0)
    hdr = parse_header(frame)
    from tunconnector.proto.framing import encode_probe, parse_probe
    seq, sent_us, epoch = parse_probe(frame[HEADER_LEN:])
    assert epoch == a.epoch
    stale = encode_probe(seq, sent_us, ack=True, epoch=epoch ^ 1)  # a previous run of ours
    a.receive_ack(i, parse_header(stale), stale[HEADER_LEN:], 0.001)
    assert a.state(i) is PathState.UNKNOWN
    bad = encode_probe(seq, sent_us + 1, ack=True, epoch=epoch)
    a.receive_ack(i, parse_header(bad), bad[HEADER_LEN:], 0.001)
    assert a.state(i) is PathState.UNKNOWN
    good = encode_probe(seq, sent_us, ack=True, epoch=epoch)
    a.receive_ack(i, parse_header(good), good[HEADER_LEN:], 0.001)
    assert a.state(i) is PathState.UP
    assert hdr.type == MsgType.PROBE


def test_constructor_rejects_nonsense() -> None:
    with pytest.raises(LocalProtocolError):
        MultiPath([], "active-backup")
    with pytest.raises(LocalProtocolError):
        MultiPath([PathSpec("a")], "round-robin")
    with pytest.raises(LocalProtocolError):
        MultiPath([PathSpec("a")], probe_interval=0)


def test_stats_and_counters_shape() -> None:
    sim = up_sim()
    sim.stream(1000)
    sim.run_until(0.5)
    st = sim.a.path_stats()
    assert st[0].active and not st[1].active
    assert st[0].tx_packets == 300 and st[1].tx_packets == 0
    assert 298 <= sim.b.path_stats()[0].rx_packets <= 300
    assert set(sim.a.counters()) >= {"failovers", "failbacks", "path_ups", "path_downs"}


def test_send_error_takes_path_down_at_once() -> None:
    sim = up_sim()
    a = sim.a
    assert a.note_send_error(0, sim.now, "send failed: Network is unreachable")
    assert a.state(0) is PathState.DOWN and a.active == 1
    assert a.paths_for_data(sim.now) == [1]
    ev = [e for e in sim.sides["a"].events + [a.next_event(), a.next_event()]
          if isinstance(e, PathDown)]
    assert ev[-1].reason.startswith("send failed")
    assert not a.note_send_error(0, sim.now)  # already down: nothing changes
    sim.run_until(sim.now + 0.2)  # the link works again: probes bring it back
    assert a.state(0) is PathState.UP


def test_lossy_path_that_blinks_stays_avoided() -> None:
    """A down/up blink of a lossy path must not wipe its loss record (no ping-pong)."""
    a, b = make(loss_threshold=0.05, failback_delay=0.3)
    sim = Sim(a, b, [Link(), Link()], seed=5)
    sim.run_until(0.3)
    sim.links[0].loss = 0.15
    sim.run_until(3.0)
    assert a.active == 1 and a.path_stats()[0].degraded
    sim.links[0].up_ab = sim.links[0].up_ba = False  # blink
    sim.run_until(3.2)
    sim.links[0].up_ab = sim.links[0].up_ba = True
    sim.run_until(6.0)
    st = a.path_stats()[0]
    assert st.state == "up" and st.degraded and st.loss > 0.05
    assert a.active == 1 and a.failbacks == 0


def test_outage_is_not_counted_as_loss_after_recovery() -> None:
    a, b = make(loss_threshold=0.05, failback_delay=0.3)
    sim = Sim(a, b, [Link(), Link()])
    sim.run_until(1.0)
    sim.links[0].up_ab = sim.links[0].up_ba = False
    sim.run_until(1.5)
    sim.links[0].up_ab = sim.links[0].up_ba = True
    # back: up_after answers, then the clean run that proves it, then failback_delay
    sim.run_until(1.5 + 0.02 * (a.clean_run + 10) + 0.3)
    st = a.path_stats()[0]
    assert st.loss == 0.0 and not st.degraded and a.active == 0


def test_peer_restart_is_reported_once() -> None:
    from tunconnector.proto.failover import PeerRestarted
    from tunconnector.proto.framing import encode_probe

    sim = up_sim()
    b = sim.b
    sim.run_until(0.3)  # a short first run: only a few probes went out
    fresh = make()[0]  # A restarted: new epoch, sequence from 1 again
    assert fresh.epoch != sim.a.epoch
    sim.sides["a"].mp = fresh
    sim.run_until(0.5)
    ev = [e for e in sim.sides["b"].events if isinstance(e, PeerRestarted)]
    assert len(ev) == 1 and b.counters()["peer_restarts"] == 1  # once, not per path
    assert fresh.state(0) is PathState.UP and fresh.state(1) is PathState.UP
    # the same epoch again, whatever the sequence number, is no restart
    probe = encode_probe(1, 1, path=0, epoch=fresh.epoch)
    b.receive_probe(0, parse_header(probe), probe[HEADER_LEN:], 0.6)
    assert b.counters()["peer_restarts"] == 1


@pytest.mark.parametrize("seed", range(8))
def test_steady_loss_above_threshold_never_fails_back(seed: int) -> None:
    """5 % loss each way against a 2 % threshold: the path leaves once and stays left.

    A loss window that happens to hold few losses must not count as healed: healing
    needs a whole window of answers measured after the path was judged lossy.
    """
    a, b = make(loss_threshold=0.02, failback_delay=0.5)
    sim = Sim(a, b, [Link(), Link()], seed=seed)
    sim.run_until(1.0)
    sim.links[0].loss = 0.05
    sim.run_until(60.0)
    for side in (a, b):
        assert side.active == 1
        assert side.failbacks == 0, [c for c in changes(sim.sides["a"])]


@pytest.mark.parametrize("seed", range(8))
def test_lossy_path_back_from_an_outage_is_not_failed_back_to(seed: int) -> None:
    """The loss starts with a short outage (3 probes lost in a row on a loaded host):
    the path goes down before the loss is measured, comes back, and must still not get
    the traffic back while it loses more than the threshold."""
    a, b = make(loss_threshold=0.02, failback_delay=0.5)
    sim = Sim(a, b, [Link(), Link()], seed=seed)
    sim.run_until(1.0)
    sim.links[0].up_ab = sim.links[0].up_ba = False
    sim.run_until(1.2)
    assert a.state(0) is PathState.DOWN and a.active == 1
    sim.links[0].up_ab = sim.links[0].up_ba = True
    sim.links[0].loss = 0.05
    sim.run_until(30.0)
    for side in (a, b):
        assert side.active == 1
        assert side.failbacks == 0, changes(sim.sides["a"])


def test_a_clean_path_back_from_an_outage_is_failed_back_to() -> None:
    """Proof costs a run of clean answers (3 / threshold probes), then failback_delay."""
    a, b = make(loss_threshold=0.02, failback_delay=0.5)
    sim = Sim(a, b, [Link(), Link()], seed=3)
    sim.run_until(1.0)
    sim.links[0].up_ab = sim.links[0].up_ba = False
    sim.run_until(1.2)
    assert a.active == 1
    sim.links[0].up_ab = sim.links[0].up_ba = True
    proven = 1.2 + 0.02 * (a.clean_run + 5)
    sim.run_until(proven - 0.5)
    assert a.active == 1  # not before the proof
    sim.run_until(proven + 0.5 + 0.1)
    assert a.active == 0 and b.active == 0
    assert a.clean_run == 149


def test_clean_run_scales_with_the_threshold() -> None:
    from tunconnector.proto.failover import clean_run

    assert clean_run(None, 3) == 3
    assert clean_run(0.2, 3) == 14
    assert clean_run(0.02, 3) == 149
    assert clean_run(1.0, 3) == 3



def test_probes_of_the_silence_before_up_are_not_loss() -> None:
    """The first probes wait a whole second (no RTT yet): those sent while the peer was
    not answering expire after the path came up, and must not make it look lossy."""
    a, b = make(loss_threshold=0.02)
    sim = Sim(a, b, [Link(), Link(up_ab=False, up_ba=False)])
    sim.run_until(0.3)
    sim.links[1].up_ab = sim.links[1].up_ba = True
    sim.run_until(3.0)
    for side in (a, b):
        st = side.path_stats()[1]
        assert st.state == "up" and not st.degraded and st.loss == 0.0, st
