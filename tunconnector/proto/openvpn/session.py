"""What both ends of an OpenVPN TLS session do alike: key states, the control channel's
reliability and packets, and the data channel.

One session (our session id, the peer's) holds up to a few key states, one per key_id:
each has its own reliability layer and TLS session. A key state begins with a reset,
runs TLS, carries both key-method messages and then control messages (PUSH_REQUEST,
PUSH_REPLY, AUTH_FAILED ...). Its data key becomes the one we send with when the side
decides (:meth:`OpenVPNSession._make_primary`); the previous key keeps decrypting for
``tran_window`` so a renegotiation loses nothing.

:class:`OpenVPNSession` does the bookkeeping; the client (client.py) and the server's
session (server.py) subclass it and keep their own side's decisions: which messages
they write and what they make of the peer's.
"""

from __future__ import annotations

import abc
import collections
import logging
import secrets
import struct
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from OpenSSL import SSL

from ...errors import RemoteProtocolError
from ..connection import Addr, ConnectionDefaults, ConnectionEvent, Disconnected, Rekeyed
from .common import (
    OCC_EXIT,
    OCC_MAGIC,
    OCC_REPLY,
    OCC_REQUEST,
    PING_MAGIC,
    is_ping,
    occ_message,
    occ_opcode,
)
from .compress import Framing
from .datav2 import DataKey
from .keymethod import (
    EKM_LABEL,
    KEY_MATERIAL_LEN,
    ClientKeyMessage,
    KeySource,
    ServerKeyMessage,
    prf_key_material,
    split_key_material,
)
from .mss import clamp as clamp_mss
from .mss import mss_value
from .packet import (
    DATA_OPCODES,
    P_ACK_V1,
    P_CONTROL_SOFT_RESET_V1,
    P_CONTROL_V1,
    ControlPacket,
    parse_body,
    parse_header,
    split_opcode,
)
from .reliable import ReliableReceiver, ReliableSender
from .tls import TlsContext, TlsServerContext, TlsSession
from .tlsauth import TlsAuth, TlsCrypt, Wrapper

#: first bytes of PING_MAGIC and OCC_MAGIC
_MAGIC_FIRST = (PING_MAGIC[:1], OCC_MAGIC[:1])
log = logging.getLogger(__name__)

#: TLS bytes per control packet: the whole packet stays under OpenVPN's 1250-byte tls-mtu
CONTROL_CHUNK = 1100
#: acks piggybacked or sent in one ACK_V1 (the receiver accepts up to 8)
ACKS_PER_PACKET = 4

# key-state phases
RESET, TLS, KEYS_SENT, ACTIVE = "reset", "tls", "key-exchange", "active"


class SessionOptions(Protocol):
    """The options both ClientOptions and ServerOptions have."""

    auth: str
    tap: bool
    proto: str
    tun_mtu: int
    tun_mtu_extra: int
    mssfix: int
    mssfix_encap: bool
    mssfix_fixed: bool
    tls_auth: bytes | None
    tls_crypt: bytes | None
    key_direction: int | None
    reneg_sec: int
    hand_window: float
    tran_window: float


#: the peer's key-method-2 message: the server's (in the client) or the client's
M = TypeVar("M", ServerKeyMessage, ClientKeyMessage)


def make_wrapper(options: SessionOptions, client: bool, epoch: int) -> Wrapper:
    """The control channel's wrapping: tls-crypt, tls-auth or none."""
    if options.tls_crypt is not None:
        return TlsCrypt(options.tls_crypt, client=client, epoch=epoch)
    if options.tls_auth is not None:
        return TlsAuth(options.tls_auth, options.key_direction, options.auth, epoch=epoch)
    return Wrapper(epoch)


class KeyState(Generic[M]):
    """One key_id: its reliability layer, TLS session, key-method messages and data key."""

    def __init__(self, key_id: int, tls: TlsSession, local: KeySource, now: float,
                 max_rto: float, reset_opcode: int | None) -> None:
        self.key_id = key_id
        self.tls = tls
        self.sender = ReliableSender(initial_rto=1.0, max_rto=max_rto)
        self.receiver = ReliableReceiver()
        if reset_opcode is not None:
            self.sender.queue(reset_opcode, b"")
        self.phase = RESET
        self.created = now
        self.peer_reset = False
        self.app_in = b""
        self.local = local
        #: the peer's key-method message, once it arrived
        self.peer_key: M | None = None
        self.data: DataKey | None = None


class OpenVPNSession(ConnectionDefaults, Generic[M], abc.ABC):
    """The shared half of :class:`~.client.OpenVPNClient` and
    :class:`~.server.OpenVPNServerSession` (see module docstring)."""

    #: our end and the peer's, as the options string and messages name them
    SIDE: str
    PEER: str
    #: the hard reset that opens the peer's session, and ours that answers it (if any)
    PEER_HARD_RESET: int
    ANSWER_HARD_RESET: int | None = None
    #: states that take no input / send nothing
    NO_INPUT: tuple[str, ...] = ("closed",)
    NO_OUTPUT: tuple[str, ...] = ("closed",)
    #: an authentic control packet counts as life from the peer (ping-restart)
    CONTROL_IS_LIFE = False
    #: a peer's control message without its end is refused beyond this size (None: never)
    MAX_APP_IN: int | None = None

    options: SessionOptions
    peer: Addr
    state: str
    session_id: bytes
    remote_session_id: bytes | None
    #: keepalive: ping after this many idle seconds; give up after ping_restart silent ones
    _ping: int | None
    _ping_restart: int | None

    def __init__(self, wrapper: Wrapper, tls: TlsContext | TlsServerContext,
                 parse_peer_key: Callable[[bytes], M | None], max_rto: float = 4.0) -> None:
        self._tls = tls
        #: the peer's key-method message at the start of the bytes, None if incomplete
        self._parse_peer_key: Callable[[bytes], M | None] = parse_peer_key
        self._max_rto = max_rto  # the control channel's retransmission cap
        self.drops: collections.Counter[str] = collections.Counter()
        self._events: collections.deque[ConnectionEvent] = collections.deque()
        self._frames: list[bytes] = []
        self._out: list[bytes] = []
        self._stream = bytearray()
        self.bytes_in = self.bytes_out = self.packets_in = self.packets_out = 0
        self.last_error: str | None = None
        self._wrapper = wrapper

    def _new_session(self, now: float) -> None:
        """Forget every key state: a new session (the side sets the session ids)."""
        #: authenticated packets received (data, or control under tls-auth/tls-crypt)
        self._authentic = 0
        self._keys: dict[int, KeyState[M]] = {}
        self._data_keys: dict[int, DataKey] = {}
        self._expiry: dict[int, float] = {}
        self._primary: DataKey | None = None
        self._current_key_id = 0
        self.cipher: str | None = None
        self.ekm: bool | None = None
        self.renegotiations = 0
        self._comp: Framing | None = None
        self._mss = 0  # the MSS clamp once the data channel's overhead is known
        self._last_sent = now
        self._last_received = now
        self._reneg_at: float | None = None
        self._hand_deadline: float | None = None
        self._stream.clear()

    # -- what each side decides ----------------------------------------------------------

    @property
    def _who(self) -> str:
        """Log prefix."""
        return "openvpn:"

    @abc.abstractmethod
    def _broken(self, reason: str, now: float) -> None:
        """The session cannot go on (the client restarts, the server forgets it)."""

    def _accept_data(self, data: bytes) -> None:
        """Raise RemoteProtocolError for data the side refuses before decrypting."""

    def _tls_established(self, ks: KeyState[M]) -> None:
        """The key state's TLS handshake is done (called until the phase moves on)."""

    def _bad_control_message(self, exc: RemoteProtocolError, now: float) -> None:
        raise exc

    @abc.abstractmethod
    def _peer_key_arrived(self, ks: KeyState[M], msg: M, now: float) -> bool:
        """Act on the peer's key-method message; False: read no control message yet."""

    @abc.abstractmethod
    def _control_message(self, ks: KeyState[M], text: str, now: float) -> None:
        """A NUL-terminated message on the control channel (PUSH_REQUEST, ...)."""

    @abc.abstractmethod
    def _tls_failed(self, ks: KeyState[M], exc: Exception, now: float) -> None:
        """The key state's TLS session failed (a refused certificate, say)."""

    def _silence_limit(self) -> int | None:
        """ping-restart: how long the peer may be silent, if that is watched now."""
        return self._ping_restart

    def _own_timers(self, now: float) -> bool:
        """The side's own timed work; False: the session ended."""
        return True

    def _own_times(self) -> list[float] | None:
        """The side's own deadlines; None: at once."""
        return []

    def _before_flush(self, now: float) -> None:
        """Key-state moves that wait for the peer's acks."""

    def _reneg_due(self, now: float) -> bool:
        return self._reneg_at is not None and now >= self._reneg_at

    # -- inputs --------------------------------------------------------------------------

    def receive_stream(self, data: bytes, now: float) -> None:
        if not data:
            self._broken(f"{self.PEER} closed the TCP connection", now)
            return
        buf = self._stream
        buf += data
        while len(buf) >= 2:
            (n,) = struct.unpack_from("!H", buf, 0)
            if len(buf) < 2 + n:
                break
            packet = bytes(buf[2 : 2 + n])
            del buf[: 2 + n]
            self._receive_packet(packet, now)
        self._flush(now)

    def send_frames(self, frames: list[bytes], now: float, offset: int = 0) -> None:
        if self._primary is None or self.state != "connected":
            self.drops["no_key"] += len(frames)
            return
        # _send_data inlined: this runs for every packet of the tunnel
        mss, tap, comp, out = self._mss, self.options.tap, self._comp, self._out
        encrypt = self._primary.encrypt
        self.bytes_out += sum(map(len, frames)) - offset * len(frames)
        self.packets_out += len(frames)
        frame: bytes | memoryview
        for frame in frames:
            if offset:  # the device's header: skipped, not copied (encrypt copies)
                frame = memoryview(frame)[offset:]
            if mss:
                frame = clamp_mss(frame, mss, tap=tap)
            if comp is not None:
                frame = comp.wrap(frame)
            try:
                out.append(encrypt(frame))
            except OverflowError:
                self.drops["key_exhausted"] += 1
        self._last_sent = now

    def _receive_packet(self, data: bytes, now: float) -> None:
        if self.state in self.NO_INPUT or not data:
            return
        opcode, key_id = split_opcode(data[0])
        try:
            if opcode in DATA_OPCODES:
                self._receive_data(key_id, data, now)
            else:
                self._receive_control(data, now)
        except RemoteProtocolError as exc:
            self.drops[exc.reason] += 1

    def _receive_elsewhere(self, data: bytes, now: float, allowed: bool) -> bool:
        """A packet from an address the peer is not known at; True if it authenticated
        (the peer moved). Only ``allowed`` ones are even looked at."""
        if not allowed:
            self.drops["unknown_peer"] += 1
            return False
        before = self._authentic
        self._receive_packet(data, now)
        return self._authentic != before

    def _receive_data(self, key_id: int, data: bytes, now: float) -> None:
        dk = self._data_keys.get(key_id)
        if dk is None:
            raise RemoteProtocolError("unknown_key", f"data for key_id {key_id}")
        self._accept_data(data)
        payload = dk.decrypt(data)
        self._authentic += 1
        self._last_received = now
        frame = self._payload(payload, now)
        if frame is not None:
            self._frames.append(frame)

    def _quick_open(self, dk: DataKey, data: bytes, now: float) -> bytes | None:
        """A quick path's data packet on a key in use: the frame to deliver, None when
        consumed (ping, OCC, or a drop counted)."""
        try:
            payload = dk.decrypt(data)
        except RemoteProtocolError as exc:
            self.drops[exc.reason] += 1
            return None
        self._authentic += 1
        self._last_received = now
        return self._payload(payload, now)

    def _payload(self, payload: bytes, now: float) -> bytes | None:
        """A decrypted data payload: the frame to deliver, or None (ping, OCC)."""
        if self._comp is not None:
            payload = self._comp.unwrap(payload)
        # the two magics start with 0x2a and 0x28: an IP packet never does
        occ = None
        if payload[:1] in _MAGIC_FIRST:
            if is_ping(payload):
                return None
            occ = occ_opcode(payload)
        if occ is not None:
            if occ == OCC_REQUEST:
                self._send_data(occ_message(OCC_REPLY, self._options_string().encode() + b"\0"),
                                now)
            elif occ == OCC_EXIT:
                self._broken(f"{self.PEER} sent explicit-exit-notify", now)
            return None
        self.bytes_in += len(payload)
        self.packets_in += 1
        if self._mss:
            payload = clamp_mss(payload, self._mss, tap=self.options.tap)
        return payload

    def _receive_control(self, data: bytes, now: float) -> None:
        opcode, key_id, sid = parse_header(data)
        if opcode not in (self.PEER_HARD_RESET, P_CONTROL_SOFT_RESET_V1, P_CONTROL_V1,
                          P_ACK_V1):
            raise RemoteProtocolError("bad_opcode", f"{self.SIDE} got control opcode {opcode}")
        if self.remote_session_id is not None and sid != self.remote_session_id:
            raise RemoteProtocolError("bad_session", "control packet from another session")
        body = self._wrapper.unwrap(data)
        if type(self._wrapper) is not Wrapper:  # tls-auth / tls-crypt: authenticated
            self._authentic += 1
        pkt = parse_body(opcode, key_id, sid, body)
        if pkt.acks and pkt.remote_session_id != self.session_id:
            raise RemoteProtocolError("bad_session", "acks for another session")
        if opcode == self.PEER_HARD_RESET:
            if key_id != 0 or 0 not in self._keys:
                raise RemoteProtocolError("unexpected_reset", "hard reset with a key_id")
            if self.remote_session_id is None:
                self.remote_session_id = sid
                if self.ANSWER_HARD_RESET is not None:
                    self._keys[0].sender.queue(self.ANSWER_HARD_RESET, b"")
        elif self.remote_session_id is None:
            raise RemoteProtocolError("no_session",
                                      f"control packet before the {self.PEER} reset")
        if self.CONTROL_IS_LIFE:
            self._last_received = now
        ks = self._keys.get(key_id)
        if opcode == P_CONTROL_SOFT_RESET_V1 and (
            ks is None or (ks.phase == ACTIVE and key_id != self._current_key_id)
        ):
            ks = self._peer_renegotiates(key_id, now)
        if ks is None:
            raise RemoteProtocolError("unknown_key", f"control for key_id {key_id}")
        ks.sender.ack(pkt.acks)
        if pkt.message_id is not None:
            if not ks.receiver.receive(pkt.message_id, pkt.payload):
                self.drops["control_window"] += 1
            for payload in ks.receiver.pop_ready():
                if not ks.peer_reset:
                    ks.peer_reset = True  # message 0 is the reset itself
                    continue
                try:
                    ks.tls.feed(payload)
                except SSL.Error as exc:
                    self._tls_failed(ks, exc, now)
                    return
        self._advance(ks, now)

    # -- key states ----------------------------------------------------------------------

    def _new_key_state(self, key_id: int, now: float,
                       reset_opcode: int | None = None) -> KeyState[M]:
        # only the client's key source has a pre-master secret
        local = KeySource(secrets.token_bytes(32), secrets.token_bytes(32),
                          secrets.token_bytes(48) if self.SIDE == "client" else b"")
        ks: KeyState[M] = KeyState(key_id, self._tls.session(), local, now, self._max_rto,
                                   reset_opcode)
        if key_id in self._keys:
            self._data_keys.pop(key_id, None)
        self._keys[key_id] = ks
        self._current_key_id = key_id
        return ks

    def _peer_renegotiates(self, key_id: int, now: float) -> KeyState[M]:
        log.info("%s %s started renegotiation (key_id %d)", self._who, self.PEER, key_id)
        return self._new_key_state(key_id, now, P_CONTROL_SOFT_RESET_V1)

    def _renegotiate(self, now: float) -> None:
        key_id = self._current_key_id % 7 + 1
        log.info("%s starting renegotiation (key_id %d)", self._who, key_id)
        self._new_key_state(key_id, now, P_CONTROL_SOFT_RESET_V1)
        self._reneg_at = now + max(self.options.reneg_sec, 10)

    def _advance(self, ks: KeyState[M], now: float) -> None:
        if self.state in self.NO_INPUT:
            return
        if ks.phase == RESET:
            if not (ks.peer_reset and ks.sender.empty):
                return
            ks.phase = TLS
        try:
            app = ks.tls.step()
            if ks.tls.handshake_done and ks.phase == TLS:
                self._tls_established(ks)
            ks.app_in += app
            self._process_app(ks, now)
            out = ks.tls.outgoing()
        except SSL.Error as exc:
            self._tls_failed(ks, exc, now)
            return
        except RemoteProtocolError as exc:
            self._bad_control_message(exc, now)
            return
        self._queue_tls(ks, out)

    def _process_app(self, ks: KeyState[M], now: float) -> None:
        if ks.peer_key is None:
            msg = self._parse_peer_key(ks.app_in)
            if msg is None:
                return
            ks.peer_key = msg
            ks.app_in = ks.app_in[msg.length :]
            if not self._peer_key_arrived(ks, msg, now):
                return
        while b"\0" in ks.app_in:
            raw, _, ks.app_in = ks.app_in.partition(b"\0")
            text = raw.decode(errors="replace").strip()
            if text:
                self._control_message(ks, text, now)
        if self.MAX_APP_IN is not None and len(ks.app_in) > self.MAX_APP_IN:
            raise RemoteProtocolError("oversize", "control message without an end")

    def _queue_tls(self, ks: KeyState[M], out: bytes) -> None:
        for i in range(0, len(out), CONTROL_CHUNK):
            ks.sender.queue(P_CONTROL_V1, out[i : i + CONTROL_CHUNK])

    def _send_tls(self, ks: KeyState[M], now: float) -> bool:
        """Queue what TLS has to send now (outside a packet's processing); False if TLS
        failed."""
        try:
            out = ks.tls.outgoing()
        except SSL.Error as exc:
            self._tls_failed(ks, exc, now)
            return False
        self._queue_tls(ks, out)
        return True

    def _derive(self, ks: KeyState[M], peer_id: int | None, now: float) -> bool:
        """Derive the key state's data key (TLS-EKM or the PRF) and receive with it at
        once; False if that is not possible (yet)."""
        if ks.peer_key is None or self.cipher is None or self.remote_session_id is None:
            return False
        try:
            if self.ekm:
                material = ks.tls.export(EKM_LABEL, KEY_MATERIAL_LEN)
            elif self.SIDE == "client":
                material = prf_key_material(ks.local, ks.peer_key.source, self.session_id,
                                            self.remote_session_id)
            else:
                material = prf_key_material(ks.peer_key.source, ks.local,
                                            self.remote_session_id, self.session_id)
        except SSL.Error as exc:
            self._broken(f"TLS key-material export failed: {exc}", now)
            return False
        c2s, s2c = split_key_material(material)
        send, recv = (c2s, s2c) if self.SIDE == "client" else (s2c, c2s)
        ks.data = DataKey(ks.key_id, self.cipher, send, recv, peer_id, now, self.options.auth)
        self._data_keys[ks.key_id] = ks.data
        return True

    def _make_primary(self, ks: KeyState[M], now: float) -> None:
        """Send with this key state's data key from now on; the previous one expires."""
        ks.phase = ACTIVE
        previous = self._primary
        self._primary = ks.data
        if previous is not None and previous.key_id != ks.key_id:
            self._expiry[previous.key_id] = now + self.options.tran_window
            self._reneg_at = now + self.options.reneg_sec
            self.renegotiations += 1
            log.info("%s renegotiated, now key_id %d", self._who, ks.key_id)
            self._events.append(Rekeyed(now, ks.key_id))

    # -- timers --------------------------------------------------------------------------

    def _out_of_time(self, now: float) -> bool:
        """A deadline passed (the handshake's): the session ended."""
        if self._hand_deadline is not None and now >= self._hand_deadline:
            self._broken(f"no TLS session with the {self.PEER} within "
                         f"{self.options.hand_window:g} s", now)
            return True
        return False

    def _expire_keys(self, now: float) -> None:
        for kid, at in list(self._expiry.items()):
            if now >= at:
                del self._expiry[kid]
                if self._primary is None or self._primary.key_id != kid:
                    self._data_keys.pop(kid, None)
                    if kid != self._current_key_id:
                        self._keys.pop(kid, None)

    def handle_timer(self, now: float) -> None:
        if self.state in self.NO_INPUT or self._out_of_time(now):
            return
        silence = self._silence_limit()
        if silence and now - self._last_received >= silence:
            self._broken(f"ping-restart: nothing from the {self.PEER} for {silence} s", now)
            return
        self._expire_keys(now)
        if not self._own_timers(now):
            return
        if self.state == "connected":
            primary = self._primary
            if self._reneg_due(now) and (primary is None
                                         or self._current_key_id == primary.key_id):
                self._renegotiate(now)
            if self._ping and now - self._last_sent >= self._ping:
                self._send_data(PING_MAGIC, now)
        self._flush(now)

    def get_timer(self) -> float | None:
        if self.state in self.NO_OUTPUT:
            return None
        times: list[float] = []
        for ks in self._keys.values():
            if ks.receiver.pending_acks:
                return 0.0
            t = ks.sender.next_due()
            if t is not None:
                times.append(t)
        own = self._own_times()
        if own is None:
            return 0.0
        times += own
        if self._hand_deadline is not None:
            times.append(self._hand_deadline)
        silence = self._silence_limit()
        if silence:
            times.append(self._last_received + silence)
        times.extend(self._expiry.values())
        if self.state == "connected":
            if self._reneg_at is not None:
                times.append(self._reneg_at)
            if self._ping:
                times.append(self._last_sent + self._ping)
        return min(times) if times else None

    # -- outputs -------------------------------------------------------------------------

    def _stop(self, state: str, reason: str, now: float, restart: bool) -> None:
        """The session is over (``restart``: the client starts a new one)."""
        self.state = state
        self.last_error = reason
        self._primary = None
        self._events.append(Disconnected(now, reason, restart))

    def _send_exit(self, count: int, now: float) -> None:
        """explicit-exit-notify: the peer learns at once that we are gone (UDP only)."""
        if self._primary is not None and self.options.proto == "udp":
            for _ in range(count):
                self._send_data(occ_message(OCC_EXIT), now)

    def _send_data(self, payload: bytes | memoryview, now: float) -> None:
        dk = self._primary
        if dk is None:
            return
        if self._comp is not None:
            payload = self._comp.wrap(payload)
        try:
            self._out.append(dk.encrypt(payload))
        except OverflowError:
            self.drops["key_exhausted"] += 1
            return
        self._last_sent = now

    def _control(self, ks: KeyState[M], opcode: int, message_id: int | None,
                 payload: bytes) -> bytes:
        acks = ks.receiver.take_acks(ACKS_PER_PACKET) if self.remote_session_id else ()
        pkt = ControlPacket(opcode, ks.key_id, self.session_id, acks,
                            self.remote_session_id if acks else None, message_id, payload)
        return self._wrapper.wrap(pkt.header(), pkt.body())

    def _send_due(self, ks: KeyState[M], now: float) -> None:
        for mid, opcode, payload in ks.sender.due(now):
            self._out.append(self._control(ks, opcode, mid, payload))
            self._last_sent = now

    def _flush(self, now: float) -> None:
        if self.state in self.NO_OUTPUT:
            return
        self._before_flush(now)
        for ks in list(self._keys.values()):
            self._send_due(ks, now)
            while ks.receiver.pending_acks and self.remote_session_id is not None:
                self._out.append(self._control(ks, P_ACK_V1, None, b""))

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        out, self._out = self._out, []
        return [(p, self.peer) for p in out]

    def stream_to_send(self, now: float) -> list[bytes]:
        out, self._out = self._out, []
        return [struct.pack("!H", len(p)) + p for p in out]

    def frames_to_deliver(self) -> list[bytes]:
        out, self._frames = self._frames, []
        return out

    def next_event(self) -> ConnectionEvent | None:
        return self._events.popleft() if self._events else None

    @property
    def last_heard(self) -> float | None:
        """Loop time of the last authentic packet from the peer (pings included)."""
        return self._last_received if self.state == "connected" else None

    def _mss_for(self, peer_id: bool) -> int:
        """The MSS clamp (0: none) for this session's frame: openvpn's
        ``frame_calculate_mssfix``; ``peer_id``: the data channel carries one (DATA_V2)."""
        o = self.options
        host = str(self.peer[0]) if isinstance(self.peer, tuple) else ""
        return mss_value(mssfix=o.mssfix, encap=o.mssfix_encap, fixed=o.mssfix_fixed,
                         tap=o.tap, tcp=o.proto == "tcp",
                         ipv6_underlay=":" in host and not host.startswith("::ffff:"),
                         cipher=self.cipher or "", auth=o.auth, peer_id=peer_id,
                         compress=self._comp.kind if self._comp else None,
                         tap_extra=o.tun_mtu_extra)

    def _link_status(self) -> dict[str, Any]:
        return {"peer": None if self.peer is None else str(self.peer), "state": self.state,
                # what `tunconnector status` and the metrics read for every tunnel
                "established": self.state == "connected" and self._primary is not None}

    def _key_status(self, now: float) -> dict[str, Any]:
        dk = self._primary
        return {
            "cipher": self.cipher,
            "key_id": dk.key_id if dk else None,
            "key_age": round(now - dk.created, 1) if dk else None,
            "key_derivation": None if self.ekm is None else ("tls-ekm" if self.ekm else "prf"),
        }

    def _counters(self) -> dict[str, Any]:
        return {"bytes_in": self.bytes_in, "bytes_out": self.bytes_out,
                "packets_in": self.packets_in, "packets_out": self.packets_out,
                "drops": dict(self.drops)}

    def _options_string(self) -> str:
        """The OCC / key-method options string openvpn compares (it warns on mismatch)."""
        o = self.options
        proto = "UDPv4" if o.proto == "udp" else f"TCPv4_{self.SIDE.upper()}"
        parts = ["V4", f"dev-type {'tap' if o.tap else 'tun'}", f"link-mtu {o.tun_mtu + 49}",
                 f"tun-mtu {o.tun_mtu}", f"proto {proto}"]
        if self.cipher:
            parts.append(f"cipher {self.cipher}")
        parts += ["auth [null-digest]", "keysize 256"]
        if o.tls_auth is not None:
            parts.append("tls-auth")
        parts += ["key-method 2", f"tls-{self.SIDE}"]
        return ",".join(parts)
