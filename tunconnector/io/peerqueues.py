"""The receive policy of one UDP socket serving many peers: fair share, own queues.

A hub reads its one socket in rounds. The decisions are sans-I/O
(:class:`~..proto.fairshare.RoundBudget`: who loses what in a round;
:class:`~..proto.fairshare.FloodJudge`: whether a sender ignores loss); this is the
socket side of them:

- a round beyond ROUND_CAPACITY is cut per sender before any decryption (``admit``);
- a peer that keeps sending beyond its budget as it loses (judged like a flood, on its
  cuts) gets a receive queue of its own (a socket connected to it,
  ``open_connected_twin``), read ISOLATED_BATCH datagrams per loop turn: the kernel
  then drops its excess for free and the shared socket stays free for the others;
- a peer whose own queue keeps overflowing floods: its queue goes on a ration;
- once the shared queue overflows or carries a stranger's flood, every peer that is up
  gets its own queue (protected), and the shared socket goes on a ration.

The adapter hands every batch, from any of the sockets, to one handler; peers are its
objects (``name``, ``raw``: the address as recvfrom() returns it, ``up``, ``stats.drops``).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from ..errors import TunconnectorError
from ..proto.fairshare import FloodJudge, RoundBudget
from ..proto.switch import Port
from .udp import Addr, UdpEndpoint, open_connected_twin, socket_drops

#: datagrams read from the socket per round at most (reading is cheap: drain it all)
READ_BATCH = 2048
#: rounds of READ_BATCH read at once from the shared queue when it goes on its ration
#: (its content then: up to 16,384 datagrams)
DRAIN_ROUNDS = 8
#: datagrams a round processes before the senders above their fair share lose their
#: excess (counted ``peer_budget``), and the least every sender keeps of a round
ROUND_CAPACITY = 128
MIN_SHARE = 8
#: a peer that goes on sending beyond its budget while it is cut (more than FLOOD_RATIO
#: of what it sent cut in FLOOD_WINDOWS windows in a row: the flood judge applied to the
#: shared socket's budgets) gets a receive queue of its own (a connected socket): the
#: kernel then drops its excess for free, and it is read this much per loop turn (a
#: turn of 64 tunnelled 64-byte packets took ~1.2 ms, which the other peers' datagrams
#: waited behind). A peer that backs off when cut (TCP inside the tunnel) stays on the
#: shared socket, read in GRO runs: four bulk TCP clients moved to queues of their own
#: at their first cut, read one datagram per read, went 0.84x of one client's speed
#: together (and one was judged a flood there now and then)
MAX_ISOLATED = 64
ISOLATED_BATCH = 16
ISOLATED_RCVBUF = 1 << 20
#: a peer whose own queue keeps losing more than FLOOD_RATIO of what it sends (in
#: FLOOD_WINDOWS windows of FLOOD_WINDOW s in a row) ignores loss: a flood (see
#: proto/fairshare.FloodJudge). Its queue is then read FLOOD_BATCH datagrams at a time
#: with a FLOOD_REST pause after a full read (at most 8,000 datagrams/s; short stints, as
#: another peer's packet arriving during one waits for its end), so the process
#: stays idle often enough to answer the other peers at once; the ration ends after a
#: window without loss
FLOOD_WINDOW = 0.1
FLOOD_RATIO = 0.2
FLOOD_WINDOWS = 3
FLOOD_BATCH = 16
FLOOD_REST = 0.002
#: once the shared socket's queue overflows (a flood, from strangers as well), every peer
#: that is up gets such a queue too (protected, within MAX_ISOLATED), and the shared
#: socket, left to strangers and handshakes, is read SHARED_BATCH datagrams per loop turn
#: with a SHARED_REST pause after a full one: a flood there cannot starve the peers'
#: queues, and costs a bounded share of a core
SHARED_BATCH = 32
SHARED_REST = 0.002
#: ... or once the shared socket carries more than this many datagrams a second (measured
#: over SHARED_WINDOW s): a hub fast enough to keep its queue from overflowing would
#: otherwise spend a core reading a stranger's flood while its peers wait behind it; a
#: short window, as the peers' datagrams queue behind the flood until then
SHARED_PROTECT_RATE = 20_000
SHARED_WINDOW = 0.05

Batch = list[tuple[Any, Addr]]


class QueuedPeer(Port, Protocol):
    """A peer as its queue sees it: a switch port with a name and a source address."""

    @property
    def name(self) -> str: ...

    @property
    def raw(self) -> Any: ...


P = TypeVar("P", bound=QueuedPeer)


@dataclass(slots=True)
class OwnQueue:
    """A peer's own receive queue, once it sent beyond its share (see ``isolate``)."""

    endpoint: UdpEndpoint
    #: the peer's address it is connected to (a move leaves it behind)
    raw: Any
    #: whether its sender floods (it keeps sending beyond what it loses)
    judge: FloodJudge
    #: the kernel's drop count there already added to the peer's ``peer_budget`` drops
    drops: int = 0
    #: datagrams read from it
    read: int = 0


@dataclass(slots=True)
class CutTally:
    """A peer's datagrams kept and cut by the shared socket's round budgets (see
    ``_within_budget``): whether it goes on sending beyond its budget regardless."""

    judge: FloodJudge
    kept: int = 0
    cut: int = 0
    #: when it was last cut (a peer not cut for FLOOD_WINDOWS windows is forgotten)
    last: float = 0.0


class PeerQueues(Generic[P]):
    """Fair share and own queues for the shared socket ``attach``-ed to it."""

    def __init__(self, handle: Callable[[Batch], None], *, owner: Callable[[Any], P | None],
                 peers: Callable[[], Iterable[P]], drops: collections.Counter[str],
                 bind_interface: str | None, log: logging.LoggerAdapter[logging.Logger],
                 name: str) -> None:
        self._handle = handle  # the adapter's receive: every batch, any socket
        self._owner = owner  # the peer a raw source address belongs to
        self._peers = peers
        self._drops = drops  # the adapter's: what strangers lose
        self._bind_interface = bind_interface
        self.log = log
        self.name = name
        self.udp: UdpEndpoint | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._own: dict[P, OwnQueue] = {}
        self._cuts: dict[P | None, CutTally] = {}  # peers cut by round budgets, until judged
        self._budget = RoundBudget(ROUND_CAPACITY, MIN_SHARE)
        #: the shared queue overflowed (or carried a flood): peers get their own
        self.protecting = False
        self._since = 0.0  # the shared socket's rate window: start, datagrams
        self._count = 0

    def attach(self, udp: UdpEndpoint, loop: asyncio.AbstractEventLoop) -> None:
        """Start reading the shared socket."""
        self.udp, self._loop = udp, loop
        udp.start(self._on_shared_batch, max_batch=READ_BATCH)

    def close(self) -> None:
        """Close the own queues (the shared socket is the adapter's)."""
        for p in list(self._own):
            self.unisolate(p)
        self._cuts.clear()
        self.udp = None
        self.protecting = False

    # ------------------------------------------------------------------ receive
    def _on_shared_batch(self, batch: Batch) -> None:
        """The shared socket's datagrams: watch its rate (see SHARED_PROTECT_RATE)."""
        if not self.protecting and self._loop is not None:
            now = self._loop.time()
            self._count += len(batch)
            span = now - self._since
            if span >= SHARED_WINDOW:
                if self._count > SHARED_PROTECT_RATE * span:
                    self._protect(f"carries {self._count / span:.0f} datagrams/s")
                self._since, self._count = now, 0
        self._handle(batch)

    def admit(self, batch: Batch) -> Batch:
        """What of a round the adapter processes: first, a full read checks the shared
        queue for overflow; a round beyond ROUND_CAPACITY is then cut per sender."""
        if len(batch) >= SHARED_BATCH and not self.protecting:
            self._check_overflow()
        if len(batch) > ROUND_CAPACITY:
            return self._within_budget(batch)
        if self._cuts:
            self._count_kept(batch)
        return batch

    def _count_kept(self, batch: Batch) -> None:
        """What the peers under judgement (see ``_judge_cuts``) had kept in a round
        without cuts; those not cut for FLOOD_WINDOWS windows are forgotten."""
        tallies = self._cuts
        get = self._owner
        for _, raw in batch:
            t = tallies.get(get(raw))
            if t is not None:
                t.kept += 1
        if self._loop is not None:
            old = self._loop.time() - FLOOD_WINDOW * FLOOD_WINDOWS
            for p in [p for p, t in tallies.items() if t.last < old]:
                del tallies[p]

    def _within_budget(self, batch: Batch) -> Batch:
        """The round's datagrams each sender may have processed: a sender beyond its
        fair share loses the rest before any decryption (see proto/fairshare.py).
        Senders are peers by source address; unknown sources share one budget."""
        get = self._owner
        budget = self._budget
        if not budget.plan([get(raw) for _, raw in batch]):
            return batch
        kept = []
        admit = budget.admit
        cut: dict[int, P] = {}
        tallies = self._cuts
        for item in batch:
            p = get(item[1])
            if admit(p):
                kept.append(item)
                if tallies and (t := tallies.get(p)) is not None:
                    t.kept += 1
            elif p is not None:
                p.stats.drops["peer_budget"] += 1
                cut[id(p)] = p
            else:
                self._drops["peer_budget"] += 1
        if cut and self._loop is not None:
            self._judge_cuts(cut, budget.share, self._loop.time())
        return kept

    def _judge_cuts(self, cut: dict[int, P], share: int, now: float) -> None:
        """Peers cut in a round: one that keeps losing more than FLOOD_RATIO of what it
        sends to its budget, window after window, ignores the cuts (a flood) and gets a
        queue of its own; one that backs off (TCP) stays on the shared socket."""
        tallies = self._cuts
        for p in cut.values():
            t = tallies.get(p)
            if t is None:  # from now on its kept datagrams are counted
                t = tallies[p] = CutTally(FloodJudge(FLOOD_WINDOW, FLOOD_RATIO, FLOOD_WINDOWS),
                                          kept=share)
            t.cut, t.last = p.stats.drops["peer_budget"], now
            if t.judge.due(now) and t.judge.sample(now, t.kept, t.cut):
                del tallies[p]
                self.isolate(p, "keeps sending beyond its share")

    def _check_overflow(self) -> None:
        """A full read: did the kernel drop datagrams at the shared socket's full queue?
        Then protect the peers that are up (see SHARED_BATCH)."""
        udp = self.udp
        if udp is None:
            return
        before = self._drops["udp_queue_full"]
        udp.count_kernel_drops("udp_queue_full")
        if self._drops["udp_queue_full"] > before:
            self._protect("overflows")

    def _protect(self, why: str) -> None:
        """Peers that are up (and those that come up) get queues of their own; the shared
        socket is read within SHARED_BATCH per turn from now on."""
        udp = self.udp
        if udp is None or self.protecting:
            return
        self.protecting = True
        udp.budget(SHARED_BATCH, SHARED_REST)
        self.log.warning("hub %s: the shared socket %s: peers that are up get queues of "
                         "their own", self.name, why)
        for p in self._peers():
            if p.up:
                self.isolate(p, "protected from the shared queue")
        if self._loop is not None:
            self._loop.call_soon(self._drain_shared, udp, DRAIN_ROUNDS)

    def _drain_shared(self, udp: UdpEndpoint, rounds: int) -> None:
        """Once, as the shared queue goes on its ration: what it holds is read now, in
        rounds through the budgets (the flood cut before decryption), one round per loop
        turn so the peers' own queues are served between them. The peers' datagrams
        that were queued behind the flood before they had queues of their own would
        otherwise wait for the ration to reach them: a full queue at the ration's pace,
        most of a second."""
        if udp is not self.udp:
            return
        batch = udp.drain([], READ_BATCH)
        if batch:
            self._handle(batch)
        if len(batch) == READ_BATCH and rounds > 1 and self._loop is not None:
            self._loop.call_soon(self._drain_shared, udp, rounds - 1)

    # ------------------------------------------------------------------ own queues
    def peer_up(self, p: P) -> None:
        if self.protecting:
            self.isolate(p, "protected from the shared queue")

    def moved(self, p: P) -> None:
        """A peer moved: a queue of its own is bound to the old address (closed)."""
        own = self._own.get(p)
        if own is not None and own.raw != p.raw:
            self.unisolate(p)

    def isolated(self, p: P) -> bool:
        """Whether the peer is read from a queue of its own."""
        return p in self._own

    def rationed(self, p: P) -> bool:
        """Whether the peer's own queue is read on a ration (it floods)."""
        q = self._own.get(p)
        return q is not None and q.judge.flooding

    def isolate(self, p: P, why: str = "keeps sending beyond its share") -> None:
        """Give a peer that sent beyond its share a receive queue of its own (see
        ``open_connected_twin``), read at most ISOLATED_BATCH datagrams per loop turn:
        when it goes on, the kernel drops its excess before this process spends
        anything on it, and the shared socket stays free for the others. Also for
        every peer that is up once the shared queue overflows (``why``)."""
        udp = self.udp
        if p in self._own or p.raw is None or udp is None or len(self._own) >= MAX_ISOLATED:
            return
        try:
            sock = open_connected_twin(udp.sock, p.raw, rcvbuf=ISOLATED_RCVBUF,
                                       bind_interface=self._bind_interface)
        except TunconnectorError as exc:
            self._drops["isolate_failed"] += 1
            self.log.warning("hub %s: peer %s: %s", self.name, p.name, exc)
            return
        own = UdpEndpoint(sock, p.stats.drops)
        self._own[p] = OwnQueue(own, p.raw,
                                FloodJudge(FLOOD_WINDOW, FLOOD_RATIO, FLOOD_WINDOWS))
        own.start(functools.partial(self._on_own_batch, p), max_batch=ISOLATED_BATCH)
        self.log.info("hub %s: peer %s %s: own receive queue", self.name, p.name, why)

    def _on_own_batch(self, p: P, batch: Batch) -> None:
        """A batch from a peer's own queue; now and then, judge whether it floods."""
        self._handle(batch)
        q = self._own.get(p)
        if q is None or self._loop is None:
            return  # the batch ended its session
        q.read += len(batch)
        now = self._loop.time()
        judge = q.judge
        if not judge.due(now):
            return
        self.sync_drops(p)
        was = judge.flooding
        if judge.sample(now, q.read, q.drops) == was:
            return
        if judge.flooding:
            q.endpoint.budget(FLOOD_BATCH, FLOOD_REST)
            self.log.warning("hub %s: peer %s: its queue keeps overflowing (a flood): "
                             "read at most %d datagrams per %.0f ms", self.name, p.name,
                             FLOOD_BATCH, FLOOD_REST * 1000)
        else:
            q.endpoint.budget(ISOLATED_BATCH, 0.0)
            self.log.info("hub %s: peer %s: no more loss at its queue: read in full",
                          self.name, p.name)

    def unisolate(self, p: P) -> None:
        self._cuts.pop(p, None)
        if p not in self._own:
            return
        self.sync_drops(p)
        self._own.pop(p).endpoint.close()

    def sync_drops(self, p: P) -> None:
        """Add what the kernel dropped at the peer's own queue to its ``peer_budget``."""
        q = self._own.get(p)
        if q is None:
            return
        n = socket_drops(q.endpoint.sock)
        if n > q.drops:
            p.stats.drops["peer_budget"] += n - q.drops
            q.drops = n


__all__ = ["PeerQueues", "QueuedPeer"]
