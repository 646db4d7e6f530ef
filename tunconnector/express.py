"""The express lane of a TCP tunnel: one small packet in, one out, little Python between.

Why: an idle tunnel wakes up once per packet (a ping, a game's update, a DNS query).
After a sleep the interpreter runs from cold caches, so every function, attribute and
object on the way costs several times its hot price: the general batch path (read until
EAGAIN, batch lists, the offload dispatcher, control-message flush, timer re-arm) cost
~140 us of user CPU per hop here against ~50 us for a bare read/send loop, which put
tunconnector's RTT at 2-3x OpenVPN's. The express lane handles exactly the common case
of an idle tunnel (one plain DATA packet, known peer, live session) in one short
function, and hands anything else, and every packet while traffic is dense, to the
general path in :class:`~tunconnector.tunnel.Tunnel` (which batches, so throughput is
unchanged).

A UDP point-to-point tunnel has the same lane as a plain path of the adapter
(``Tunnel._lane_device``/``_lane_udp``, over its connection's ``send_one``/``quick``);
this class serves TCP until its streams run on connections too, and holds the lane's
constants.

It never decides anything the general path would decide differently: a packet is either
taken whole (same checks, same counters) or passed on untouched.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .proto.framing import (
    FLAG_GSO,
    HEADER_LEN,
    SIMPLETUN_PREFIX,
    TCP_NATIVE_PREFIX,
    encode_native_stream,
    encode_simpletun,
)
from .proto.offload import F_NEEDS_CSUM, VNET_HDR_LEN

if TYPE_CHECKING:
    from .proto.native import NativeEndpoint
    from .tunnel import Tunnel

#: callbacks closer together than this (seconds) mean traffic is dense: batch instead
BUSY = 0.0005
#: checksum-offloaded (TCP/UDP) packets up to this size go express; bigger ones are data
#: segments the general path watches for retransmissions (loss-adaptive super-packets)
SMALL_CSUM = 300
MAX_READ = 65_600
PEEK = os.environ.get("TUNCONNECTOR_EXPRESS_PEEK", "1") != "0"
#: after this many read-after-writes in a row found nothing (the side whose device does
#: not answer, e.g. a ping client's), only one delivery in PEEK_PROBE tries again
PEEK_GIVE_UP = 8
PEEK_PROBE = 16


class Express:
    """TCP's lane: one small device frame written to the stream at once (:meth:`send`,
    called by ``Tunnel._lane_device``), one whole frame read from it delivered at once
    (:meth:`on_stream_data`); anything else goes to the batch path untouched."""

    __slots__ = ("t", "tx", "rx", "_wire_last", "enabled")

    def __init__(self, tunnel: Tunnel, *, enabled: bool | None = None) -> None:
        self.t = tunnel
        if enabled is None:
            enabled = os.environ.get("TUNCONNECTOR_EXPRESS", "1") != "0"
        self.enabled = enabled
        self.tx = 0  #: packets sent by the express lane
        self.rx = 0  #: packets delivered by the express lane
        self._wire_last = float("-inf")

    # ------------------------------------------------------------------ device -> wire
    def send(self, f: bytes, now: float) -> bool:
        """One frame read from the device onto the live stream, or False (untouched)."""
        t = self.t
        dev = t.device
        conn = t.stream
        if conn is None or dev is None:
            return False
        native = conn.native
        n = len(f)
        if dev.vnet_hdr:
            if native is None or n <= VNET_HDR_LEN or f[1] != 0:
                return False  # a super-packet (or nonsense): the offload path's job
            if f[0] & F_NEEDS_CSUM:
                if n > SMALL_CSUM:
                    return False
                payload: Any = f
                gso = True
            else:
                payload = memoryview(f)[VNET_HDR_LEN:]
                gso = False
            n -= VNET_HDR_LEN
        else:
            if n == 0:
                return False
            payload, gso = f, False
        if native is None:
            msg: Any = payload
        else:
            secure = native.secure
            quiet = secure is None or secure.unanswered_since is not None
            msg = native.encode_gso(payload, now) if gso else native.encode_data(payload, now)
            if msg is None or native.has_work():
                t.flush_native(native, now)  # queued for a handshake, or rekey started
            elif not quiet:
                t.arm_timer()  # first unanswered send: the stale-session timer starts
            if msg is None:
                t.stats.tx_packets += 1
                t.stats.tx_bytes += n
                return True
        if native is None:
            conn.proto.write(encode_simpletun(msg))
        else:
            conn.proto.write(encode_native_stream(msg))
        stats = t.stats
        stats.tx_packets += 1
        stats.tx_bytes += n
        stats.wire_tx += 1
        self.tx += 1
        return True

    # ------------------------------------------------------------------ wire -> device
    def on_stream_data(self, proto: Any, data: bytes) -> bool:
        """A TCP read holding exactly one whole frame of the current connection: take it.

        False (nothing consumed) for anything else: partial or several frames, a
        candidate connection, bytes already buffered, dense traffic.
        """
        t = self.t
        conn = t.stream
        loop = t.loop
        if conn is None or conn.proto is not proto or loop is None or conn.decoder.buffered:
            return False
        now = loop.time()
        busy = now - self._wire_last < BUSY
        self._wire_last = now
        prefix = SIMPLETUN_PREFIX if conn.native is None else TCP_NATIVE_PREFIX
        plen = prefix.size
        if busy or len(data) <= plen or prefix.unpack_from(data)[0] != len(data) - plen:
            return False
        return self._take(data[plen:], conn.native, None, now)

    def _take(self, data: Any, native: NativeEndpoint | None, source: Any, now: float) -> bool:
        """Deliver one message from the peer to the device, or refuse it untouched."""
        t = self.t
        dev = t.device
        if dev is None:
            return False
        frame: Any
        if native is None:
            if t.state.value != "up" or not data or len(data) > t.max_frame:
                return False
            frame = data
        else:
            if len(data) <= HEADER_LEN or data[2] & FLAG_GSO:
                return False  # a super-packet: the general path's (it writes GsoFrames)
            frame = native.quick(data, now, source)
            if frame is False:
                return False
            if native.has_work():
                t.flush_native(native, now)  # an opened message may start a rekey
        self.rx += 1
        t.lane_deliver(dev, frame, now)
        return True


__all__ = ["BUSY", "MAX_READ", "PEEK", "PEEK_GIVE_UP", "PEEK_PROBE", "SMALL_CSUM", "Express"]
