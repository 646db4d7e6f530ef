"""The OpenVPN TLS client as a :class:`~tunconnector.proto.connection.Connection`.

Key states, the control channel and the data channel are session.py's; this module keeps
the client's decisions. Key state 0 starts with a hard reset, later ones with a soft
reset sent by either side (``reneg-sec``); a key state's data key becomes the one we send
with as soon as the server's key-method message arrived.

The first key additionally asks for the server's configuration (PUSH_REQUEST); the reply
decides the cipher, the peer id and whether data keys come from TLS-EKM or the PRF, and
becomes a :class:`ConfigAssigned` event, then :class:`Connected`. A failed session
restarts itself (UDP) after a backoff, from the next ``remote``.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from OpenSSL import SSL

from ...errors import RemoteProtocolError
from ..backoff import Backoff
from ..connection import Addr, ConfigAssigned, Connected, DatagramBatch
from . import push as pushmod
from .common import OCC_REQUEST, occ_message, seal_one
from .compress import Framing
from .compress import from_option as compress_option
from .datav2 import CIPHERS, canonical_cipher
from .keymethod import ServerKeyMessage, client_message, parse_server_message
from .packet import (
    DATA_OPCODES,
    P_CONTROL_HARD_RESET_CLIENT_V2,
    P_CONTROL_HARD_RESET_SERVER_V2,
    split_opcode,
)
from .pullfilter import filter_pushed
from .session import KEYS_SENT, KeyState, OpenVPNSession, make_wrapper
from .tls import TlsContext, TlsSettings
from .tlsauth import Wrapper

log = logging.getLogger(__name__)

#: IV_PROTO bits: DATA_V2 (1), request-push (2), TLS key-material export (3)
IV_PROTO = (1 << 1) | (1 << 2) | (1 << 3)
PUSH_RETRY = 2.0


@dataclass(slots=True)
class ClientOptions:
    """What a client needs from its ``.ovpn`` (already read from files and inline blocks)."""

    ca_pem: bytes
    cert_pem: bytes | None = None
    key_pem: bytes | None = None
    tls_auth: bytes | None = None
    key_direction: int | None = None
    tls_crypt: bytes | None = None
    auth: str = "SHA1"
    remote_cert_tls: str | None = None
    verify_x509_name: tuple[str, str] | None = None
    data_ciphers: tuple[str, ...] = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
    cipher_fallback: str | None = None
    tap: bool = False
    proto: str = "udp"
    ping: int | None = None
    ping_restart: int | None = None
    reneg_sec: int = 3600
    username: str | None = None
    password: str | None = None
    explicit_exit_notify: int = 0
    hand_window: float = 60.0
    tran_window: float = 60.0
    tun_mtu: int = 1500
    tls_version_min: str = "1.2"
    #: announce TLS-EKM support (off only to exercise the PRF path against a 2.6 server)
    offer_ekm: bool = True
    #: accept a pushed redirect-gateway (route everything through the server)
    allow_redirect_gateway: bool = False
    #: compression framing (comp-lzo / compress), see compress.py; None: no header
    compress: str | None = None
    #: mssfix N [mtu|fixed] (see mss.py); openvpn 2.6's default is 1492 mtu, 0 is off
    mssfix: int = 1492
    mssfix_encap: bool = True
    mssfix_fixed: bool = False
    tun_mtu_extra: int = 32  # openvpn's room for a TAP frame's Ethernet header (mssfix)
    #: tls-verify: (depth, certificate) -> refusal reason or None (a plain function)
    tls_verify: Any = None
    #: pull-filter (action, text) in order, route-nopull, and the config's own routes
    #: (``route``/``route-ipv6`` option words), see pullfilter.py
    pull_filters: list[tuple[str, str]] = field(default_factory=list)
    route_nopull: bool = False
    routes: list[list[str]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


class OpenVPNClient(OpenVPNSession[ServerKeyMessage]):
    """Sans-I/O OpenVPN TLS client for one server (see module docstring)."""

    SIDE, PEER = "client", "server"
    PEER_HARD_RESET = P_CONTROL_HARD_RESET_SERVER_V2
    NO_INPUT = ("closed", "failed", "idle")
    NO_OUTPUT = ("closed", "idle")
    CONTROL_IS_LIFE = True

    options: ClientOptions

    #: tells the UDP adapter to reconnect from a fresh source port (as openvpn's client
    #: does): a server may ignore a new session from an address it still tracks
    new_port_on_restart = True
    lane = True
    follows_answer = outlives_stream = peer_socket = reports_crypto = True

    def __init__(self, options: ClientOptions, peer: Addr = None,
                 wall_clock: float | None = None, peers: list[Addr] | None = None) -> None:
        self.options = options
        self.peer = peer
        #: UDP: the servers to try in turn, one more on every restart (``remote`` lines)
        self._peers = list(peers) if peers else [peer]
        self._tls_ctx = TlsContext(TlsSettings(
            options.ca_pem, options.cert_pem, options.key_pem, options.remote_cert_tls,
            options.verify_x509_name, options.tls_version_min, options.tls_verify))
        self._epoch = int(time.time() if wall_clock is None else wall_clock)
        #: a pushed auth-token: sent instead of the password from then on
        self.auth_token: str | None = None
        # one wrapper for the connection's life: its packet ids keep rising across
        # sessions, so a server that still remembers our address sees no replay
        super().__init__(make_wrapper(options, True, self._epoch), self._tls_ctx,
                         parse_server_message, 4.0 if options.proto == "udp" else 8.0)
        self.state = "idle"
        self.reconnects = 0
        #: UDP: the connection restarts itself after ping-restart (TCP: the adapter
        #: reconnects the stream and :meth:`connection_made` starts a new session)
        self._backoff = Backoff(base=1.0, cap=30.0)
        self._restart_at: float | None = None
        #: the server refused us for good (AUTH_FAILED, HALT, no common cipher)
        self.halted = False
        self._reset_session(0.0)

    # -- session lifecycle -------------------------------------------------------------

    def _reset_session(self, now: float) -> None:
        self._new_session(now)
        #: the address the server's session answers from (learned from its reset)
        self._server_src: Addr = None
        self.session_id = secrets.token_bytes(8)
        self.remote_session_id: bytes | None = None
        self._push: pushmod.PushReply | None = None
        self._push_partial: pushmod.PushReply | None = None
        self._push_next: float | None = None
        self._peer_id: int | None = None
        self._ping = self.options.ping
        self._ping_restart = self.options.ping_restart
        self._comp = Framing(self.options.compress) if self.options.compress else None
        self._started = now

    def start(self, now: float) -> None:
        """(Re)connect: a fresh session (new session id) with a hard reset, key_id 0."""
        if self.state in ("failed", "connected"):
            self.reconnects += 1
        self._reset_session(now)
        self._out.clear()
        self._restart_at = None
        self.state = "connecting"
        if self.options.proto == "udp" and len(self._peers) > 1:
            self.peer = self._peers[self.reconnects % len(self._peers)]
        self._hand_deadline = now + self.options.hand_window
        self._new_key_state(0, now, P_CONTROL_HARD_RESET_CLIENT_V2)
        log.info("openvpn: connecting to %s (session %s)", self.peer, self.session_id.hex())
        self._flush(now)

    def close(self, now: float) -> None:
        if self.state == "closed":
            return
        self._send_exit(max(1, min(self.options.explicit_exit_notify, 3)), now)
        self.state = "closed"

    def connection_made(self, now: float) -> None:
        """A new TCP stream: a new OpenVPN session on it (not after AUTH_FAILED / HALT)."""
        if self.options.proto == "tcp" and self.state != "closed" and not self.halted:
            self.start(now)

    def _fail(self, reason: str, now: float, restart: bool = True) -> None:
        if self.state in ("closed", "failed"):
            return
        log.warning("openvpn: %s", reason)
        self.halted = not restart
        if restart and self.options.proto == "udp":
            self._restart_at = now + self._backoff.next_delay()
        self._stop("failed", reason, now, restart)

    def _broken(self, reason: str, now: float) -> None:
        self._fail(reason, now)

    # -- inputs --------------------------------------------------------------------------

    def quick_datagram(self, data: bytes, addr: Addr, now: float) -> bytes | None | Literal[False]:
        """The bulk case of :meth:`receive_datagram` without its per-packet control flush:
        a data packet from where the server's session answers, on a key in use."""
        if self.state != "connected" or not data or data[0] >> 3 not in DATA_OPCODES \
                or not isinstance(addr, tuple) or addr[:2] != self._server_src:
            return False
        dk = self._data_keys.get(data[0] & 7)
        return False if dk is None else self._quick_open(dk, data, now)

    def send_one(self, frame: bytes | memoryview, now: float, *, vnet_hdr: bool
                 ) -> bytes | None | Literal[False]:
        """The latency lane: one frame of an idle tunnel, sealed at once (UDP, nothing
        queued before it); the device's header is all zero (no TUNSETOFFLOAD)."""
        if self.state != "connected" or self._out or self.options.proto != "udp":
            return False
        return seal_one(self.send_frames, self._out, frame, now, vnet_hdr)

    def has_work(self) -> bool:
        # a send or a received packet only moves the ping timers later
        return bool(self._out or self._events)

    has_output = has_work

    def batches_to_send(self, now: float) -> list[tuple[DatagramBatch, Addr]]:
        """All that is queued, in order, as one run for the server (equal sizes leave in
        one GSO sendmsg), not a tuple per datagram."""
        if not self._out or self.peer is None:
            return []
        out, self._out = self._out, []
        return [(out, self.peer)]

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        src = addr[:2] if isinstance(addr, tuple) else None
        known = self._server_src
        if src is not None and known is not None and src != known:
            # once the server's session answered from ``known``, a packet from anywhere
            # else counts only if it authenticates (data, or control under tls-auth or
            # tls-crypt): an authenticated float. A stranger that knows the session id
            # must not feed our TLS session.
            allowed = bool(data) and (split_opcode(data[0])[0] in DATA_OPCODES
                                      or type(self._wrapper) is not Wrapper)
            if self._receive_elsewhere(data, now, allowed):
                log.info("openvpn: the server now answers from %s (was %s)", src, known)
                self._server_src = src
            self._flush(now)
            return
        self._receive_packet(data, now)
        if known is None and src is not None and self.remote_session_id is not None:
            self._server_src = src  # where the server's session answers from
        self._flush(now)

    # -- key state machine ---------------------------------------------------------------

    def _tls_failed(self, ks: KeyState[ServerKeyMessage], exc: Exception, now: float) -> None:
        reason = ks.tls.refusal or f"TLS failed: {exc}"
        self._fail(f"refused server: {reason}" if ks.tls.refusal else reason, now)

    def _tls_established(self, ks: KeyState[ServerKeyMessage]) -> None:
        ks.tls.write(client_message(ks.local, self._options_string(), self.options.username,
                                    self.auth_token or self.options.password,
                                    self._peer_info()))
        ks.phase = KEYS_SENT
        if ks.key_id == 0:
            log.info("openvpn: TLS %s established (%s)", ks.tls.version, ks.tls.cipher)

    def _peer_key_arrived(self, ks: KeyState[ServerKeyMessage], msg: ServerKeyMessage,
                          now: float) -> bool:
        if ks.key_id == 0 and self._push is None:
            self._send_push_request(ks, now)
        else:
            self._activate(ks, now)
        return True

    def _send_push_request(self, ks: KeyState[ServerKeyMessage], now: float) -> None:
        ks.tls.write(b"PUSH_REQUEST\0")
        self._push_next = now + PUSH_RETRY

    def _control_message(self, ks: KeyState[ServerKeyMessage], text: str, now: float) -> None:
        if text.startswith("PUSH_REPLY"):
            for opt in pushmod.parse_options(text[len("PUSH_REPLY"):].lstrip(",")):
                if opt[0] == "auth-token" and len(opt) >= 2:
                    self.auth_token = opt[1]  # also a renewal after the first reply
            self._push_reply(text[len("PUSH_REPLY") :].lstrip(","), now)
        elif text.startswith("AUTH_FAILED") and self.auth_token is not None and \
                not text.startswith("AUTH_FAILED,TEMP"):
            # receive_auth_failed: a refused token (expired, or a server that restarted
            # and forgot it) is dropped and the next session sends the password again;
            # a second refusal, with no token left, is final
            self.auth_token = None
            self._fail(f"server refused our auth-token: {text}", now)
        elif text.startswith("AUTH_FAILED"):
            self._fail(f"server refused authentication: {text}", now, restart=False)
        elif text.startswith("RESTART"):
            self._fail(f"server asked to restart: {text}", now)
        elif text.startswith("HALT"):
            self._fail(f"server asked to halt: {text}", now, restart=False)
        elif text.startswith("INFO") or text.startswith("AUTH_PENDING"):
            log.info("openvpn: server says %s", text[:200])
        else:
            self.drops["unknown_control_message"] += 1

    def _push_reply(self, body: str, now: float) -> None:
        if self._push is not None:
            return  # a duplicate answer to a retried PUSH_REQUEST
        opts, rejected = filter_pushed(pushmod.parse_options(body), self.options.pull_filters,
                                       self.options.route_nopull)
        if rejected is not None:
            self._fail(f"pushed option rejected by pull-filter: {rejected[:200]!r}", now)
            return
        if self._push_partial is None:  # the config's own routes join the first message
            opts += [list(r) for r in self.options.routes]
        partial = self._push_partial or pushmod.PushReply()
        try:
            pushmod.apply(partial, opts)
        except RemoteProtocolError as exc:
            self._fail(f"unusable PUSH_REPLY: {exc}", now)
            return
        if pushmod.continuation(opts):
            self._push_partial = partial
            return
        self._push_partial = None
        self._push = reply = partial
        for opt in reply.options:  # a pushed comp-lzo / compress sets the framing
            if opt[0] in ("comp-lzo", "compress"):
                try:
                    kind = compress_option(opt)
                except ValueError as exc:
                    self._fail(f"server pushed {' '.join(opt)}: {exc}", now, restart=False)
                    return
                self._comp = Framing(kind) if kind else None
        reply.ignored = [i for i in reply.ignored
                         if not i.startswith(("comp-lzo", "compress"))]  # used above
        self._push_next = None
        cipher = canonical_cipher(reply.cipher) if reply.cipher else None
        if cipher is None and reply.cipher is None and self.options.cipher_fallback:
            cipher = canonical_cipher(self.options.cipher_fallback)
        if cipher is None:
            self._fail(f"server pushed an unsupported data cipher {reply.cipher!r} "
                       f"(supported: {', '.join(CIPHERS)})", now, restart=False)
            return
        self.cipher = cipher
        self._peer_id = reply.peer_id
        self.ekm = reply.key_derivation == "tls-ekm"
        if reply.ping is not None:
            self._ping = reply.ping
        if reply.ping_restart is not None:
            self._ping_restart = reply.ping_restart
        ks = self._keys.get(0)
        if ks is None or ks.peer_key is None:
            self._fail("PUSH_REPLY before the key exchange", now)
            return
        if reply.ignored:
            log.info("openvpn: pushed options not used: %s", ", ".join(reply.ignored)[:300])
        self._activate(ks, now)
        if self.state == "failed":
            return
        self._mss = self._mss_for(peer_id=self._peer_id is not None)
        routes = list(reply.routes)
        gw = reply.default_gateway()
        routes = [(net, g or (gw if self.options.tap else None)) for net, g in routes]
        routes += list(reply.routes_ipv6)
        extra: dict[str, Any] = dict(reply.extra)
        extra.update(cipher=cipher, peer_id=reply.peer_id, topology=reply.topology,
                     route_gateway=reply.route_gateway, key_derivation=reply.key_derivation,
                     routes_ipv6=list(reply.routes_ipv6))
        extra.update(ifconfig=reply.ifconfig, ifconfig_ipv6=reply.ifconfig_ipv6)
        extra["peer_chain"] = dict(getattr(ks.tls, "chain", {}))
        if reply.redirect_gateway is not None:
            if self.options.allow_redirect_gateway:
                extra["redirect_gateway"] = reply.redirect_gateway
                routes += [("0.0.0.0/1", gw), ("128.0.0.0/1", gw)]
                if self.peer is not None and isinstance(self.peer, tuple):
                    extra["bypass_host"] = str(self.peer[0])
            else:
                log.warning("openvpn: server pushed redirect-gateway %s: refused (set "
                            "allow_redirect_gateway = true to route everything through it)",
                            " ".join(reply.redirect_gateway))
        addresses = reply.addresses(self.options.tap)
        if isinstance(self.peer, tuple):  # the server's underlay address: never ours
            server = str(self.peer[0])
            conflict = pushmod.ifconfig_conflict(addresses, server)
            if conflict is not None:
                self._fail(conflict, now)
                return
            extra["server"] = server
        self._events.append(ConfigAssigned(now, addresses, tuple(routes), reply.tun_mtu,
                                           extra))
        self.state = "connected"
        self.last_error = None
        self._backoff.reset()
        self._hand_deadline = None
        self._reneg_at = now + self.options.reneg_sec
        log.info("openvpn: connected, %s, peer-id %s, keys by %s", cipher, reply.peer_id,
                 "TLS-EKM" if self.ekm else "PRF")
        self._events.append(Connected(now, self.peer))
        self._send_data(occ_message(OCC_REQUEST), now)

    def _activate(self, ks: KeyState[ServerKeyMessage], now: float) -> None:
        if not self._derive(ks, self._peer_id, now):
            return
        self._make_primary(ks, now)
        for kid in [k for k in self._keys if k != ks.key_id and k not in self._data_keys]:
            del self._keys[kid]

    # -- timers --------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        if self.state == "failed" and self._restart_at is not None and now >= self._restart_at:
            self.start(now)
            return
        super().handle_timer(now)

    def _own_timers(self, now: float) -> bool:
        if self._push_next is not None and now >= self._push_next and self._push is None:
            ks = self._keys.get(0)
            if ks is not None and ks.peer_key is not None:
                try:
                    self._send_push_request(ks, now)
                except SSL.Error as exc:
                    self._tls_failed(ks, exc, now)
                    return False
                return self._send_tls(ks, now)
        return True

    def get_timer(self) -> float | None:
        if self.state == "failed":
            return self._restart_at
        return super().get_timer()

    def _own_times(self) -> list[float] | None:
        if self._push_next is not None and self._push is None:
            return [self._push_next]
        return []

    def _reneg_due(self, now: float) -> bool:
        primary = self._primary
        return super()._reneg_due(now) or (primary is not None and primary.exhausted)

    # -- strings -------------------------------------------------------------------------

    def _peer_info(self) -> str:
        ciphers = ":".join(c for c in self.options.data_ciphers if c in CIPHERS)
        proto = IV_PROTO if self.options.offer_ekm else IV_PROTO & ~(1 << 3)
        lines = ["IV_VER=2.6.14", "IV_PLAT=linux", f"IV_PROTO={proto}", "IV_NCP=2",
                 f"IV_CIPHERS={ciphers}", "IV_TCPNL=1", "IV_GUI_VER=tunconnector"]
        if self.options.compress:  # framing without compression, as openvpn announces it
            lines += ["IV_LZO_STUB=1", "IV_COMP_STUB=1", "IV_COMP_STUBv2=1"]
        return "\n".join(lines) + "\n"

    # -- status --------------------------------------------------------------------------

    def status(self, now: float) -> dict[str, Any]:
        dk = self._primary
        return {
            **self._link_status(),
            "session_age": round(now - dk.created, 1) if dk else None,
            "rekeys": self.renegotiations,
            "error": self.last_error,
            **self._key_status(now),
            "peer_id": self._peer_id,
            "renegotiations": self.renegotiations,
            "reconnects": self.reconnects,
            **self._counters(),
            "addresses": list(self._push.addresses(self.options.tap)) if self._push else [],
        }
