"""Between the device and the peers: where a frame goes, and what a peer may send.

Sans-I/O. The adapter hands :meth:`Forwarder.outbound` the frames it read from the
device and gets them back grouped by peer; it hands :meth:`Forwarder.inbound` the
frames its peers' connections decoded and gets what goes to the device and what goes
on to other peers (client to client). The decisions are the
:class:`~.router.Router`'s (TUN: longest prefix, anti-spoofing) or the
:class:`~.mactable.MacTable`'s (TAP: learning, pins, flooding); here they are applied
to batches, with each peer's counters kept on its ``stats``. Point to point needs none
of this: its one connection takes every frame as it is.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from ..errors import RemoteProtocolError
from .mactable import FLOOD, LOCAL, MacTable
from .offload import VNET_HDR_LEN, GsoFrame
from .router import FORWARD, TO_DEVICE, Router


class PortStats(Protocol):
    rx_bytes: int
    rx_packets: int
    drops: collections.Counter[str]


class Port(Protocol):
    """A peer as the switch sees it: its counters, and whether it is up (floods)."""

    @property
    def stats(self) -> PortStats: ...

    @property
    def up(self) -> bool: ...

    def __hash__(self) -> int: ...


P = TypeVar("P", bound=Port)
#: frames grouped by destination peer, in first-seen order (keyed by ``id``: cheap)
Groups = dict[int, tuple[P, list[Any]]]


@dataclass(slots=True)
class Switched(Generic[P]):
    """What :meth:`Forwarder.inbound` decided for a batch."""

    #: frames (and whole super-packets, :class:`GsoFrame`) for the device
    to_device: list[Any] = field(default_factory=list)
    #: packets the super-packets in ``to_device`` stand for beyond one each (counters)
    extra: int = 0
    #: frames for other peers
    forward: dict[int, tuple[P, list[Any]]] = field(default_factory=dict)


class Forwarder(Protocol[P]):
    def outbound(self, frames: list[Any], now: float,
                 drops: collections.Counter[str]) -> Iterable[tuple[P, list[Any]]]:
        """Device frames grouped by the peer they go to; the rest counted in ``drops``."""

    def inbound(self, items: list[tuple[P, Any]], now: float, *, whole: bool) -> Switched[P]:
        """Frames from peers (``(peer, frame)``, a frame may be a :class:`GsoFrame`):
        ``whole``: the device takes super-packets as they are."""


def _segments(p: Port, frame: GsoFrame, tap: bool) -> list[Any]:
    """A super-packet cut into the frames it carries (software segmentation)."""
    try:
        return frame.segments(tap=tap)
    except RemoteProtocolError:
        p.stats.drops["bad_gso"] += 1
        return []


def segment_count(data: Any) -> int:
    """Packets a super-packet (virtio_net_hdr + packet) stands for, for the counters."""
    gso_type, hdr_len, size = data[1], data[2] | data[3] << 8, data[4] | data[5] << 8
    if gso_type == 0 or size == 0:
        return 1
    return max(1, -(-(len(data) - VNET_HDR_LEN - hdr_len) // size))


class IpRoutes(Generic[P]):
    """TUN: the :class:`Router`'s longest-prefix match out, anti-spoofing in."""

    def __init__(self, router: Router) -> None:
        self.router = router

    def outbound(self, frames: list[Any], now: float,
                 drops: collections.Counter[str]) -> Iterable[tuple[P, list[Any]]]:
        groups: Groups[P] = {}
        lookup = self.router.outbound
        for f in frames:
            r: Any = lookup(f)
            if r is None:
                drops["no_route"] += 1
                continue
            groups.setdefault(id(r), (r, []))[1].append(f)
        return groups.values()

    def inbound(self, items: list[tuple[P, Any]], now: float, *, whole: bool) -> Switched[P]:
        out: Switched[P] = Switched()
        to_dev, fwd = out.to_device, out.forward
        router = self.router
        for p, frame in items:
            st = p.stats
            if type(frame) is GsoFrame:
                if whole:
                    # the super-packet's IP header is its segments' header: the same
                    # anti-spoofing and routing verdict, for all of them at once
                    data = frame.data
                    v = router.inbound(p, memoryview(data)[VNET_HDR_LEN:])
                    n = segment_count(data)
                    if v.action == TO_DEVICE:  # written whole: the kernel segments it
                        st.rx_packets += n
                        st.rx_bytes += len(frame)
                        to_dev.append(frame)
                        out.extra += n - 1
                        continue
                    if v.action != FORWARD:
                        st.drops[v.reason] += n
                        continue
                    # to another peer (client to client): segmented
                segs = _segments(p, frame, False)
            else:
                segs = [frame]
            for f in segs:
                st.rx_packets += 1
                st.rx_bytes += len(f)
                v = router.inbound(p, f)
                if v.action == TO_DEVICE:
                    to_dev.append(f)
                elif v.action == FORWARD:
                    q: Any = v.peer
                    fwd.setdefault(id(q), (q, []))[1].append(f)
                else:
                    st.drops[v.reason] += 1
        return out


class MacSwitch(Generic[P]):
    """TAP: a learning switch (the :class:`MacTable`) with the device as its LOCAL port;
    floods reach the peers that are up (``ports()``), and each other only with
    ``client_to_client``."""

    def __init__(self, macs: MacTable, ports: Callable[[], Iterable[P]], *,
                 client_to_client: bool) -> None:
        self.macs = macs
        self.ports = ports
        self.client_to_client = client_to_client

    def outbound(self, frames: list[Any], now: float,
                 drops: collections.Counter[str]) -> Iterable[tuple[P, list[Any]]]:
        groups: Groups[P] = {}
        decide = self.macs.decide
        up = [q for q in self.ports() if q.up]
        for f in frames:
            egress, refused = decide(f, LOCAL, now)
            if refused is not None:
                drops[refused] += 1
            elif egress == FLOOD:
                for q in up:
                    groups.setdefault(id(q), (q, []))[1].append(f)
            elif egress is not None and egress is not LOCAL:
                r: Any = egress
                groups.setdefault(id(r), (r, []))[1].append(f)
        return groups.values()

    def inbound(self, items: list[tuple[P, Any]], now: float, *, whole: bool) -> Switched[P]:
        out: Switched[P] = Switched()
        to_dev, fwd = out.to_device, out.forward
        decide = self.macs.decide
        c2c = self.client_to_client
        for p, frame in items:
            st = p.stats
            segs = _segments(p, frame, True) if type(frame) is GsoFrame else [frame]
            for f in segs:
                st.rx_packets += 1
                st.rx_bytes += len(f)
                egress, refused = decide(f, p, now)
                if refused is not None:  # a pinned or busy MAC, or beyond the peer's cap
                    st.drops[refused] += 1
                elif egress is None:
                    st.drops["hairpin"] += 1
                elif egress is LOCAL:
                    to_dev.append(f)
                elif egress == FLOOD:
                    to_dev.append(f)
                    if c2c:
                        for q in self.ports():
                            if q is not p and q.up:
                                fwd.setdefault(id(q), (q, []))[1].append(f)
                elif not c2c:
                    st.drops["client_to_client"] += 1
                else:
                    dest: Any = egress
                    fwd.setdefault(id(dest), (dest, []))[1].append(f)
        return out


__all__ = ["Forwarder", "IpRoutes", "MacSwitch", "Port", "Switched", "segment_count"]
