"""OpenVPN static-key mode (``--secret``) as a sans-I/O :class:`Connection`.

Wire format of one data-channel packet (no opcode byte in this mode; on TCP each packet
follows a 2-byte big-endian length):

- ``cipher none``: ``HMAC(packet id, time, payload) | packet id | time | payload``
- CBC cipher: ``HMAC(IV | ciphertext) | IV | CBC(packet id | time | payload + PKCS#7)``
- ``auth none`` leaves the HMAC out.

The packet id (u32, from 1) and time (u32, the sender's start time in wall-clock seconds)
drive replay protection as in openvpn: a later time restarts the window, an earlier one
is refused, the same time is a sliding window over packet ids.

Control messages travel as payloads: ping (sent when nothing else was sent for
``keepalive`` seconds, swallowed on receipt) and OCC (REQUEST answered with our options
string; EXIT sent on a clean shutdown and taken as the peer leaving). ``dead_after``
seconds without any authentic packet is openvpn's ping-restart.

A server without a fixed remote takes the first peer that authenticates. While that peer
is alive, packets from any other address are refused unless ``allow_float`` (openvpn's
``--float``), which follows the peer to a new address that sends an authentic,
non-replayed packet; once it is dead (``dead_after``, or its OCC EXIT), the next peer that
authenticates is taken. A client only accepts packets from its remote.

Reflection: without a key direction both directions use the same keys, so our own
datagrams, sent back to us, authenticate. A packet under one of our own time values is
refused (``reflected``): it never moves the peer nor the replay state. Two ends that
picked the same time value (started in the same second) tell it apart by the packet id:
a packet id we have not sent yet under that time cannot be ours, and our time moves on.

A client that goes down (``dead_after`` of silence) or is not answered for ``dead_after``
restarts its session as openvpn's ping-restart does: a new time value (which any server's
replay state accepts) and a fresh receive window. "Answered": once the peer has answered
an OCC REQUEST, the client sends one every ``keepalive`` seconds; no REPLY for
``dead_after`` means the peer does not take our packets (its pings alone prove nothing).
"""

from __future__ import annotations

import collections
import hmac
import logging
import os
import struct
from typing import Any, Literal

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ...errors import ConfigError, RemoteProtocolError
from ..connection import (
    Addr,
    AddressChanged,
    Connected,
    ConnectionDefaults,
    ConnectionEvent,
    DatagramBatch,
    Disconnected,
)
from ..framing import SimpletunDecoder
from ..replay import ReplayWindow
from .common import (
    OCC_EXIT,
    OCC_MAGIC,
    OCC_REPLY,
    OCC_REQUEST,
    PING_MAGIC,
    occ_message,
    seal_one,
)
from .keyfile import StaticKey

log = logging.getLogger("tunconnector.openvpn")

#: name -> (key bytes, IV/block bytes)
CIPHERS: dict[str, tuple[int, int]] = {"none": (0, 0), "AES-128-CBC": (16, 16),
                                       "AES-256-CBC": (32, 16)}
#: name -> (hashlib name, digest bytes)
DIGESTS: dict[str, tuple[str | None, int]] = {"none": (None, 0), "SHA1": ("sha1", 20),
                                              "SHA256": ("sha256", 32),
                                              "SHA512": ("sha512", 64)}
_PID = struct.Struct("!II")
_LEN = struct.Struct("!H")
PID_LEN = _PID.size
#: openvpn's extra room for a TAP frame in the link-mtu it announces (TAP_MTU_EXTRA_DEFAULT)
TAP_MTU_EXTRA = 32
#: hello cadence while the peer has not answered (OCC REQUEST, which the peer answers)
HELLO_INTERVAL = 1.0
#: after the peer answered: our OCC REQUEST is retried this often until a REPLY comes
OCC_RETRY = 10.0
OCC_TRIES = 12
#: copies of OCC EXIT sent on close (UDP may lose one)
EXIT_COPIES = 2
PACKET_ID_MAX = 0xFFFFFFFF
#: PKCS#7 padding by length
_PADS = [bytes((n,)) * n for n in range(17)]
#: replay window over packet ids within one time value (openvpn's default is 64)
REPLAY_BLOCKS = 64
#: our own time values remembered to recognise our datagrams sent back to us
OWN_TIMES = 16


def check_cipher(cipher: str, auth: str) -> None:
    """Refuse what we cannot speak with a message naming the choices."""
    if cipher.upper() == "BF-CBC":
        raise ConfigError("BF-CBC is not supported (64-bit block cipher, refused by openvpn 2.6 "
                          "without OpenSSL's legacy provider): use AES-256-CBC on both ends")
    if cipher not in CIPHERS:
        raise ConfigError(f"cipher {cipher!r} is not one of {' | '.join(CIPHERS)}")
    if auth not in DIGESTS:
        raise ConfigError(f"auth {auth!r} is not one of {' | '.join(DIGESTS)}")


class StaticKeyCrypto:
    """Seal and open packets of one static-key tunnel (both directions)."""

    def __init__(self, key: StaticKey | None, direction: int | None,
                 cipher: str = "AES-256-CBC", auth: str = "SHA1", *,
                 slices: tuple[Any, Any] | None = None, pid_len: int = PID_LEN) -> None:
        """``slices``: (send, receive) keys with ``.cipher``/``.hmac`` instead of a key
        file's (the TLS mode's data channel, whose packet id is 4 bytes: ``pid_len``)."""
        check_cipher(cipher, auth)
        self.cipher = cipher
        self.auth = auth
        self.pid_len = pid_len
        if slices is not None:
            send, recv = slices
        elif key is not None:
            send, recv = key.directional(direction)
        else:
            raise ValueError("StaticKeyCrypto needs a key or key slices")
        klen, self.block = CIPHERS[cipher]
        self.digest, self.hlen = DIGESTS[auth]
        self._enc_key = send.cipher[:klen]
        self._dec_key = recv.cipher[:klen]
        self._tx_hmac = send.hmac[:self.hlen]
        self._rx_hmac = recv.hmac[:self.hlen]
        #: smallest valid packet
        self.min_len = self.hlen + (2 * self.block if self.block else pid_len)
        # One CBC context per direction for the tunnel's life (making one per packet costs
        # more than the AES itself). Sending: each packet's plaintext is preceded by a
        # random block; its ciphertext, E(previous block XOR random), is the packet's IV:
        # unpredictable, as TLS 1.1's explicit-IV construction. Receiving: the packet's
        # IV is fed first and its output block dropped; CBC then decrypts the rest
        # against that IV, whatever came before.
        self._encryptor: Any = None
        self._decryptor: Any = None
        self._random = b""
        self._rpos = 0
        if self.block:
            self._encryptor = Cipher(algorithms.AES(self._enc_key),
                                     modes.CBC(os.urandom(self.block))).encryptor()
            self._decryptor = Cipher(algorithms.AES(self._dec_key),
                                     modes.CBC(bytes(self.block))).decryptor()

    def _randomizer(self) -> bytes:
        pos = self._rpos
        if pos + self.block > len(self._random):
            self._random, pos = os.urandom(4096), 0
        self._rpos = pos + self.block
        return self._random[pos:pos + self.block]

    def overhead(self) -> int:
        """Worst-case bytes added to a payload (HMAC, IV, packet id, padding)."""
        return self.hlen + PID_LEN + (2 * self.block if self.block else 0)

    def seal(self, pid_time: bytes, payload: bytes | bytearray | memoryview) -> bytes:
        if self.block:
            pad = self.block - (len(pid_time) + len(payload)) % self.block
            body = self._encryptor.update(b"".join((self._randomizer(), pid_time, payload,
                                                    _PADS[pad])))
        else:
            body = b"".join((pid_time, payload))
        if self.digest is not None:
            return hmac.digest(self._tx_hmac, body, self.digest) + body
        return body

    def open(self, data: bytes | bytearray | memoryview) -> tuple[int, int, bytes] | str:
        """(packet id, time, payload), or the drop reason."""
        if len(data) < self.min_len:
            return "short"
        hlen = self.hlen
        mv = memoryview(data)
        if self.digest is not None:
            tag = hmac.digest(self._rx_hmac, mv[hlen:], self.digest)
            if not hmac.compare_digest(tag, mv[:hlen]):
                return "bad_hmac"
        if self.block:
            b = self.block
            ct = mv[hlen + b:]
            if len(ct) % b:
                return "bad_padding"
            plain = self._decryptor.update(mv[hlen:])[b:]  # IV block fed first, dropped
            pad = plain[-1]
            plen = self.pid_len
            if not 1 <= pad <= b or len(plain) - pad < plen \
                    or plain[-pad:] != bytes((pad,)) * pad:
                return "bad_padding"
            if plen != PID_LEN:  # TLS mode: a 4-byte packet id, no time
                return int.from_bytes(plain[:plen], "big"), 0, plain[plen:-pad]
            pid, ptime = _PID.unpack_from(plain, 0)
            return pid, ptime, plain[PID_LEN:-pad]
        if self.pid_len != PID_LEN:
            plen = self.pid_len
            return (int.from_bytes(mv[hlen:hlen + plen], "big"), 0,
                    bytes(mv[hlen + plen:]))
        pid, ptime = _PID.unpack_from(mv, hlen)
        return pid, ptime, bytes(mv[hlen + PID_LEN:])


class PacketIdReplay:
    """openvpn's (time, packet id) rules: time back -> refuse; time forward -> a new
    window; same time -> a sliding window over packet ids (each accepted once)."""

    __slots__ = ("time", "window")

    def __init__(self) -> None:
        self.time: int | None = None
        self.window = ReplayWindow(blocks=REPLAY_BLOCKS)

    def check(self, pid: int, ptime: int) -> bool:
        if pid == 0:
            return False
        if self.time is None or ptime > self.time:
            return True
        if ptime < self.time:
            return False
        return self.window.check(pid)

    def snapshot(self) -> tuple[int, int] | None:
        """(time, highest packet id) accepted so far, for ``replay-persist``."""
        return None if self.time is None else (self.time, self.window.highest)

    def restore(self, ptime: int, pid: int) -> None:
        """Continue from a snapshot: nothing at or below it is accepted again."""
        self.time = ptime
        self.window.restore(pid)

    def update(self, pid: int, ptime: int) -> bool:
        if not self.check(pid, ptime):
            return False
        if self.time is None or ptime > self.time:
            self.time = ptime
            self.window.reset()
        return self.window.update(pid)


def options_string(*, dev_type: str, tun_mtu: int, proto: str, mode: str, cipher: str,
                   auth: str, direction: int | None = None) -> str:
    """What openvpn sends in an OCC REPLY for the same settings (compared by the peer,
    which only warns on a difference)."""
    klen, block = CIPHERS[cipher]
    hlen = DIGESTS[auth][1]
    link_mtu = tun_mtu + (TAP_MTU_EXTRA if dev_type == "tap" else 0) + hlen + PID_LEN
    if block:
        link_mtu += 2 * block
    if proto == "tcp":
        link_mtu += 2
        proto_s = "TCPv4_CLIENT" if mode == "client" else "TCPv4_SERVER"
    else:
        proto_s = "UDPv4"
    cipher_s = "[null-cipher]" if cipher == "none" else cipher
    auth_s = "[null-digest]" if auth == "none" else auth
    keydir = "" if direction is None else f"keydir {direction},"
    return (f"V4,dev-type {dev_type},link-mtu {link_mtu},tun-mtu {tun_mtu},proto {proto_s},"
            f"{keydir}cipher {cipher_s},auth {auth_s},keysize {klen * 8},secret")


class StaticKeyConnection(ConnectionDefaults):
    """One OpenVPN static-key peer. See the module docstring for the rules."""

    last_heard: float | None = None
    lane = True
    follows_answer = outlives_stream = peer_socket = reports_crypto = True

    def __init__(
        self,
        key: StaticKey,
        *,
        direction: int | None = None,
        cipher: str = "AES-256-CBC",
        auth: str = "SHA1",
        mode: str = "client",
        remote: Addr = None,
        stream: bool = False,
        keepalive: float = 10.0,
        dead_after: float = 60.0,
        max_frame: int = 1518,
        dev_type: str = "tun",
        tun_mtu: int = 1500,
        clock_offset: float = 0.0,
        allow_float: bool = False,
        persisted: dict[str, Any] | None = None,
    ) -> None:
        self.crypto = StaticKeyCrypto(key, direction, cipher, auth)
        self.direction = direction
        #: both directions share the keys: our own datagrams would authenticate here
        self.symmetric = direction is None
        self.allow_float = allow_float
        self.mode = mode
        self.stream = stream
        self.keepalive = keepalive
        self.dead_after = dead_after
        self.max_frame = max_frame
        self.clock_offset = clock_offset
        self.options = options_string(dev_type=dev_type, tun_mtu=tun_mtu,
                                      proto="tcp" if stream else "udp", mode=mode,
                                      cipher=cipher, auth=auth, direction=direction)
        #: what the peer should answer: the opposite key direction and TCP role
        self.expected_options = options_string(
            dev_type=dev_type, tun_mtu=tun_mtu, proto="tcp" if stream else "udp",
            mode="server" if mode == "client" else "client", cipher=cipher, auth=auth,
            direction=None if direction is None else 1 - direction)
        self.drops: collections.Counter[str] = collections.Counter()
        self.counters: collections.Counter[str] = collections.Counter()
        #: where packets go (client: its remote; server: the peer it follows)
        self.peer: Addr = remote
        self._fixed = remote is not None and mode == "client"
        self.alive = False
        self.last_heard = None
        self.peer_options: str | None = None
        self._pid = 0
        self._time = 0
        self._own_times: collections.deque[int] = collections.deque(maxlen=OWN_TIMES)
        self._replay = PacketIdReplay()
        self._restart_at: float | None = None  # client: a new session if still unanswered
        #: replay-persist is on (the adapter saves :meth:`persist_state`)
        self.persistent = persisted is not None
        if persisted:  # replay-persist: what an earlier process accepted and sent
            self.restore(persisted)
        self._replied_at: float | None = None  # client: the peer's last OCC REPLY
        self._probe_next: float | None = None  # client: next OCC REQUEST while up
        self._last_tx = 0.0
        self._next_hello: float | None = None
        self._occ_tries = 0
        self._occ_next: float | None = None
        self._closed = False
        self._started = False
        self._out: list[bytes] = []
        self._frames: list[bytes] = []
        self._events: collections.deque[ConnectionEvent] = collections.deque()
        self._decoder = SimpletunDecoder(max_frame=65535) if stream else None
        self._stream_open = False
        self._exit_time: int | None = None  # time value of the peer that sent OCC EXIT

    # -- replay-persist -------------------------------------------------------------
    def persist_state(self) -> dict[str, Any]:
        """What survives a restart (openvpn's ``replay-persist``): the peer's (time,
        highest packet id), so its old packets are refused by a new process, and our own
        time values, so our old packets sent back to us are recognised."""
        snap = self._replay.snapshot()
        return {"peer_time": snap[0] if snap else None, "peer_pid": snap[1] if snap else None,
                "own_times": list(self._own_times)}

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`persist_state`'s output (values of the wrong type are ignored)."""
        t, pid = state.get("peer_time"), state.get("peer_pid")
        if isinstance(t, int) and isinstance(pid, int) and 0 <= t <= PACKET_ID_MAX \
                and 0 <= pid <= PACKET_ID_MAX:
            self._replay.restore(t, pid)
        own = state.get("own_times")
        if isinstance(own, list):
            self._own_times.extend(x for x in own[-OWN_TIMES:] if isinstance(x, int))

    # -- lifecycle ------------------------------------------------------------------
    def start(self, now: float) -> None:
        self._started = True
        self._time = int(now + self.clock_offset) & PACKET_ID_MAX
        if self._own_times:  # persisted: never below what an earlier process used
            self._time = max(self._time, max(self._own_times) + 1) & PACKET_ID_MAX
        self._own_times.append(self._time)
        self._last_tx = now
        if self.mode == "client":
            self._restart_at = now + self.dead_after
        if self.crypto.cipher == "none":
            log.warning("openvpn static key with cipher none: packets are authenticated, "
                        "not encrypted")
        if self.mode == "client" and self._can_send():
            self._hello(now)

    def close(self, now: float) -> None:
        if self._closed:
            return
        if self._can_send() and self._started:
            for _ in range(EXIT_COPIES):
                self._send_payload(occ_message(OCC_EXIT), now)
        self._closed = True

    def connection_made(self, now: float) -> None:
        """A (new) TCP stream: decode from scratch; a client says hello on it."""
        if self.stream:
            self._decoder = SimpletunDecoder(max_frame=65535)
            self._stream_open = True
            self._out.clear()  # what was queued for the old stream is stale
            if self.mode == "client":
                self._hello(now)

    # -- input ----------------------------------------------------------------------
    def quick_datagram(self, data: bytes, addr: Addr, now: float
                       ) -> bytes | None | Literal[False]:
        """One datagram of the live peer from where it is, decoded by the usual rules,
        its frame returned (the latency lane); False for anything else, untouched."""
        if not self.alive or self.stream or addr != self.peer:
            return False
        frames = self._frames
        n = len(frames)
        self._receive_packet(data, addr, now)
        return frames.pop() if len(frames) > n else None

    def send_one(self, frame: bytes | memoryview, now: float, *, vnet_hdr: bool
                 ) -> bytes | None | Literal[False]:
        """The latency lane: one frame sealed at once (UDP, nothing queued before it);
        the device's header is all zero (no TUNSETOFFLOAD)."""
        if self.stream or self._out or not self.alive or self._closed:
            return False
        return seal_one(self.send_frames, self._out, frame, now, vnet_hdr)

    def has_work(self) -> bool:
        # a packet in or out moves the liveness deadlines later, never earlier
        return bool(self._out or self._events)

    has_output = has_work

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        if self._fixed and addr != self.peer:
            self.drops["unknown_peer"] += 1
            return
        self._receive_packet(data, addr, now)

    def receive_stream(self, data: bytes, now: float) -> None:
        dec = self._decoder
        if dec is None:
            return
        try:
            dec.receive_data(data)
            packets = dec.frames()
        except RemoteProtocolError as exc:
            self.drops[exc.reason] += 1
            self._decoder = None
            self._go_down(now, f"stream error: {exc}", restart=True)
            return
        for p in packets:
            self._receive_packet(p, None, now)
        if not data:  # EOF: the stream is gone (openvpn restarts on that)
            self._stream_open = False
            self._decoder = None
            self._go_down(now, "connection closed", restart=True)

    def _receive_packet(self, data: bytes | bytearray | memoryview, addr: Addr,
                        now: float) -> None:
        opened = self.crypto.open(data)
        if isinstance(opened, str):
            self.drops[opened] += 1
            return
        pid, ptime, payload = opened
        if self.symmetric and ptime in self._own_times:
            if ptime == self._time and pid > self._pid:
                # not one we sent: the peer's clock gave it our time value; ours moves on
                self._own_times.remove(ptime)
                self._new_time(now)
            else:
                self.drops["reflected"] += 1
                return
        if not self._replay.check(pid, ptime):
            self.drops["replay"] += 1
            return
        if not self.stream and addr != self.peer and self.alive and not self.allow_float:
            self.drops["float_refused"] += 1  # the peer is alive where it was: no move
            return
        self._replay.update(pid, ptime)
        if len(payload) == 17 and payload[16] == OCC_EXIT and payload[:16] == OCC_MAGIC:
            self.counters["occ_rx"] += 1  # the peer leaves: not a sign of life
            self._exit_time = ptime
            self._go_down(now, "peer exit (OCC EXIT)", restart=True)
            return
        if self._exit_time is not None and ptime <= self._exit_time:
            # the departing process still sends for a moment (openvpn's exit-notify
            # wait): its packets are delivered but do not bring the peer back; a
            # restarted peer sends under a later time value
            self._payload(payload, now)
            return
        self._exit_time = None
        self.last_heard = now
        if not self.stream and addr != self.peer:
            old = self.peer
            self.peer = addr
            if old is not None:
                self._events.append(AddressChanged(now, addr))
        if not self.alive:
            self.alive = True
            self._next_hello = None
            self._restart_at = None
            if self._replied_at is not None:  # a new session: answers are counted afresh
                self._replied_at = now
                self._probe_next = now + self.keepalive
            self._events.append(Connected(now, addr))
            if self.peer_options is None:  # ask for the peer's options (and retry)
                self._occ_next = now + (OCC_RETRY if self._occ_tries else 0.0)
        self._payload(payload, now)
        if self._occ_next is not None and self._occ_next <= now:
            self._occ_request(now)

    def _payload(self, payload: bytes, now: float) -> None:
        n = len(payload)
        if n == 16 and payload == PING_MAGIC:
            self.counters["ping_rx"] += 1
            return
        if n > 16 and payload[:16] == OCC_MAGIC:
            self._occ(payload[16], payload[17:], now)
            return
        if n == 0:
            self.drops["empty"] += 1
        elif n > self.max_frame:
            self.drops["oversize"] += 1
        else:
            self._frames.append(payload)

    def _occ(self, opcode: int, body: bytes, now: float) -> None:
        self.counters["occ_rx"] += 1
        if opcode == OCC_REQUEST:
            self._send_payload(occ_message(OCC_REPLY, self.options.encode() + b"\0"), now)
        elif opcode == OCC_REPLY:
            text = body.split(b"\0", 1)[0].decode("ascii", "replace")
            self._occ_next = None
            if self.mode == "client":
                self._replied_at = now
                if self._probe_next is None:
                    self._probe_next = now + self.keepalive
            if text != self.peer_options:
                self.peer_options = text
                if text != self.expected_options:
                    log.warning("openvpn peer options differ: theirs %r, expected %r",
                                text, self.expected_options)
        elif opcode == OCC_EXIT:
            self._go_down(now, "peer exit (OCC EXIT)", restart=True)
        else:
            self.drops["occ_unsupported"] += 1

    def _go_down(self, now: float, reason: str, *, restart: bool) -> None:
        if self.alive:
            self.alive = False
            self._events.append(Disconnected(now, reason, restart))
            if self.mode == "client" and restart and not self._closed:
                self._restart_session(now)
        if self.mode == "client" and self._can_send() and not self._closed:
            self._next_hello = now + HELLO_INTERVAL
        self._occ_tries = 0

    def _restart_session(self, now: float) -> None:
        """openvpn's ping-restart on a client: a new time value, which the server's replay
        state takes whatever it holds, and a fresh receive window."""
        self._new_time(now)
        if not self.persistent:  # with replay-persist the receive state is kept
            self._replay = PacketIdReplay()
        self._exit_time = None
        self._restart_at = now + self.dead_after
        self.counters["restarts"] += 1

    # -- output ---------------------------------------------------------------------
    def _can_send(self) -> bool:
        return self._stream_open if self.stream else self.peer is not None

    def send_frames(self, frames: list[bytes], now: float, offset: int = 0) -> None:
        if not self._can_send() or self._closed:
            self.drops["no_peer" if self.last_heard is not None else "no_peer_yet"] \
                += len(frames)
            return
        seal = self.crypto.seal
        pack = _PID.pack
        out = self._out
        pid, ptime = self._pid, self._time
        for f in frames:
            if pid >= PACKET_ID_MAX:
                pid, ptime = self._wrap(now)
            pid += 1
            # the device's header: skipped, not copied (sealing copies)
            out.append(seal(pack(pid, ptime), memoryview(f)[offset:] if offset else f))
        self._pid = pid
        self._last_tx = now

    def _wrap(self, now: float) -> tuple[int, int]:
        """The packet id ran out: a new time value restarts it (long form)."""
        self._new_time(now)
        return 0, self._time

    def _new_time(self, now: float) -> None:
        """A later time value for what we send (packet ids from 1 again), never the
        peer's current one."""
        t = max(self._time + 1, int(now + self.clock_offset)) & PACKET_ID_MAX
        if t == self._replay.time:
            t = (t + 1) & PACKET_ID_MAX
        self._time = t
        self._pid = 0
        self._own_times.append(t)

    def _send_payload(self, payload: bytes, now: float) -> None:
        if not self._can_send() or self._closed:
            return
        if self._pid >= PACKET_ID_MAX:
            self._wrap(now)
        self._pid += 1
        self._out.append(self.crypto.seal(_PID.pack(self._pid, self._time), payload))
        self._last_tx = now

    def _occ_request(self, now: float) -> None:
        if self._occ_tries < OCC_TRIES:
            self._occ_tries += 1
            self._send_payload(occ_message(OCC_REQUEST), now)
            self._occ_next = now + OCC_RETRY
        else:
            self._occ_next = None

    def _hello(self, now: float) -> None:
        """Ask the peer to answer (an OCC REQUEST): it tells a server our address and
        proves the path at once instead of after the peer's next ping."""
        self._send_payload(occ_message(OCC_REQUEST), now)
        self._occ_tries = max(self._occ_tries, 1)
        self._next_hello = now + HELLO_INTERVAL if not self.alive else None

    def batches_to_send(self, now: float) -> list[tuple[DatagramBatch, Addr]]:
        """All that is queued, in order, as one run for the peer (not a tuple each)."""
        if not self._out or self.stream or self.peer is None:
            return []
        out, self._out = self._out, []
        return [(out, self.peer)]

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        if not self._out or self.stream:
            return []
        out, self._out = self._out, []
        peer = self.peer
        return [(m, peer) for m in out]

    def stream_to_send(self, now: float) -> list[bytes]:
        if not self._out or not self.stream:
            return []
        out, self._out = self._out, []
        pack = _LEN.pack
        return [pack(len(m)) + m for m in out]

    def frames_to_deliver(self) -> list[bytes]:
        frames, self._frames = self._frames, []
        return frames

    # -- time -----------------------------------------------------------------------
    def get_timer(self) -> float | None:
        if self._closed or not self._started:
            return None
        times: list[float] = []
        if self._can_send():
            times.append(self._last_tx + self.keepalive)
        if self._next_hello is not None:
            times.append(self._next_hello)
        if self._occ_next is not None:
            times.append(self._occ_next)
        if self.alive and self.last_heard is not None:
            times.append(self.last_heard + self.dead_after)
        if self._restart_at is not None and not self.alive:
            times.append(self._restart_at)
        if self.alive and self._replied_at is not None and self._probe_next is not None:
            times.append(min(self._probe_next, self._replied_at + self.dead_after))
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        if self._closed or not self._started:
            return
        if self.alive and self.last_heard is not None \
                and now >= self.last_heard + self.dead_after:
            self._go_down(now, f"ping-restart: nothing received for "
                               f"{now - self.last_heard:.1f}s", restart=True)
        if self._restart_at is not None and now >= self._restart_at and not self.alive:
            self._restart_session(now)  # not answered for dead_after: a new session
        if self._next_hello is not None and now >= self._next_hello and not self.alive:
            self._hello(now)
        if self._occ_next is not None and now >= self._occ_next and self.alive:
            self._occ_request(now)
        if self._can_send() and now >= self._last_tx + self.keepalive:
            self.counters["ping_tx"] += 1
            self._send_payload(PING_MAGIC, now)
        if self.alive and self._replied_at is not None and self._probe_next is not None:
            if now >= self._replied_at + self.dead_after:
                self._go_down(now, f"not answered: no OCC reply for "
                                   f"{now - self._replied_at:.1f}s", restart=True)
            elif now >= self._probe_next:
                self._probe_next = now + self.keepalive
                self._send_payload(occ_message(OCC_REQUEST), now)

    def next_event(self) -> ConnectionEvent | None:
        return self._events.popleft() if self._events else None

    def status(self, now: float) -> dict[str, Any]:
        return {
            "protocol": "openvpn static key",
            "cipher": self.crypto.cipher,
            "auth": self.crypto.auth,
            "key_direction": self.direction,
            "established": self.alive,
            "last_rx_age": round(now - self.last_heard, 3) if self.last_heard else None,
            "peer_options": self.peer_options,
            "pings_rx": self.counters["ping_rx"],
            "pings_tx": self.counters["ping_tx"],
            "float": self.allow_float,
            "restarts": self.counters["restarts"],
        }
