"""The control channel's reliability layer: message ids, acks, retransmission, reassembly.

OpenVPN carries TLS over UDP by numbering every control message (from 0 per key state),
acknowledging each one by id and retransmitting what stays unacknowledged, with a
doubling timeout. The receiver hands payloads to TLS strictly in message-id order. Our
send window stays below the peer's receive buffer so nothing we send is dropped for being
too far ahead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Outstanding:
    message_id: int
    opcode: int
    payload: bytes
    due: float
    rto: float
    sends: int = 0


class ReliableSender:
    """Numbered outgoing messages; :meth:`due` says which to (re)send now."""

    def __init__(self, window: int = 6, initial_rto: float = 1.0, max_rto: float = 8.0) -> None:
        self.window = window
        self.initial_rto = initial_rto
        self.max_rto = max_rto
        self._next_id = 0
        self._queue: list[tuple[int, bytes]] = []
        self._outstanding: dict[int, _Outstanding] = {}
        self.retransmits = 0

    def queue(self, opcode: int, payload: bytes) -> None:
        self._queue.append((opcode, payload))

    def skip(self, count: int) -> None:
        """Number the next message ``count``: the first ones were sent (and acknowledged)
        by someone else, e.g. the reset a stateless handshake gate answered with."""
        self._next_id = max(self._next_id, count)

    def ack(self, message_ids: tuple[int, ...] | list[int]) -> None:
        for mid in message_ids:
            self._outstanding.pop(mid, None)

    @property
    def empty(self) -> bool:
        return not self._queue and not self._outstanding

    def due(self, now: float) -> list[tuple[int, int, bytes]]:
        """(message id, opcode, payload) to put on the wire now, in id order."""
        while self._queue and len(self._outstanding) < self.window:
            opcode, payload = self._queue.pop(0)
            mid = self._next_id
            self._next_id += 1
            self._outstanding[mid] = _Outstanding(mid, opcode, payload, now, self.initial_rto)
        out = []
        for item in sorted(self._outstanding.values(), key=lambda o: o.message_id):
            if item.due <= now:
                if item.sends:
                    self.retransmits += 1
                    item.rto = min(item.rto * 2, self.max_rto)
                item.sends += 1
                item.due = now + item.rto
                out.append((item.message_id, item.opcode, item.payload))
        return out

    def next_due(self) -> float | None:
        if self._queue and len(self._outstanding) < self.window:
            return 0.0
        if not self._outstanding:
            return None
        return min(o.due for o in self._outstanding.values())


class ReliableReceiver:
    """Accepts messages in any order, acks each, releases payloads in id order."""

    def __init__(self, window: int = 12) -> None:
        self.window = window
        self._expected = 0
        self._buffer: dict[int, bytes] = {}
        self.pending_acks: list[int] = []

    def receive(self, message_id: int, payload: bytes) -> bool:
        """Record ``message_id``; False when it is beyond our window (not acked, dropped)."""
        if message_id >= self._expected + self.window:
            return False
        if message_id not in self.pending_acks:
            self.pending_acks.append(message_id)
        if message_id >= self._expected and message_id not in self._buffer:
            self._buffer[message_id] = payload
        return True

    def skip(self, count: int) -> None:
        """Treat messages below ``count`` as received and delivered (see ReliableSender.skip)."""
        if count > self._expected:
            self._buffer = {k: v for k, v in self._buffer.items() if k >= count}
            self._expected = count

    def take_acks(self, limit: int) -> tuple[int, ...]:
        acks = tuple(self.pending_acks[:limit])
        del self.pending_acks[:limit]
        return acks

    def pop_ready(self) -> list[bytes]:
        out = []
        while self._expected in self._buffer:
            out.append(self._buffer.pop(self._expected))
            self._expected += 1
        return out

    @property
    def expected(self) -> int:
        return self._expected
