"""The OpenVPN TLS server, sans I/O: one :class:`OpenVPNServerSession` per client and an
:class:`OpenVPNServer` that decides which session a datagram belongs to.

A session mirrors the client (client.py) from the other end, on the same key states,
control and data channel (session.py): after the TLS handshake it reads the
client's key-method-2 message (credentials, peer-info), answers with its own, derives the
data keys (TLS-EKM when the client offers it in IV_PROTO, else the PRF) with the cipher
negotiated from the client's IV_CIPHERS against ``data-ciphers``, and answers
PUSH_REQUEST with a PUSH_REPLY built from the server's options and a pool address.

Authentication decisions are not made here: with ``auth_user_pass_verify`` the session
emits an :class:`AuthRequest` and waits for :meth:`OpenVPNServerSession.auth_result`
(the script, plugin or management answer runs outside proto/). A refusal sends
AUTH_FAILED and ends the session once the client acknowledged it. Every renegotiation
that carries a password (not a valid auth-token) asks again; the new key is answered
only once the adapter said yes.

openvpn's order after authentication: drop an older client with the same name, read
the CCD file, choose the addresses, then (``client_connect``) emit :class:`ClientConnect`
with the script environment and wait for :meth:`OpenVPNServerSession.client_connect_result`,
whose output is merged before the PUSH_REPLY. With ``client_disconnect`` a session whose
connect chain succeeded emits :class:`ClientDisconnect` when it ends.

A new key becomes the one we send with only once the client acknowledged our key
message (openvpn's S_ACTIVE), and the first key only once PUSH_REPLY is out; the
previous key keeps decrypting for ``tran_window`` so a renegotiation loses nothing.
"""

from __future__ import annotations

import collections
import heapq
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from OpenSSL import SSL

from ...errors import ConfigError, RemoteProtocolError
from ..connection import (
    Addr,
    AddressChanged,
    AuthRequest,
    ClientConnect,
    ClientDisconnect,
    Connected,
    Connection,
    ConnectionEvent,
)
from ..router import Network, Router
from .authtoken import AuthTokenKey, TokenCheck, is_auth_token
from .authtoken import push_options as auth_token_push
from .ccd import ClientConfig, apply_push, exclusive_allows, lookup
from .compress import KINDS as COMPRESS_KINDS
from .compress import Framing
from .datav2 import CIPHERS, canonical_cipher
from .gate import FIRST_SESSION_PACKET_ID, GateAccept, GateReply, HandshakeGate
from .ifpool import IfconfigPool, Lease, format_persist, parse_persist
from .keymethod import ClientKeyMessage, parse_client_message, server_message
from .packet import (
    DATA_OPCODES,
    P_ACK_V1,
    P_CONTROL_HARD_RESET_CLIENT_V2,
    P_CONTROL_HARD_RESET_SERVER_V2,
    P_CONTROL_V1,
    P_DATA_V2,
    split_opcode,
)
from .servernet import address_env, expand_server, ifconfig_push
from .session import ACTIVE, KEYS_SENT, RESET, TLS, KeyState, OpenVPNSession, make_wrapper
from .tls import TlsServerContext, TlsServerSettings
from .tlsauth import Wrapper

log = logging.getLogger(__name__)

#: IV_PROTO bits a client announces
IV_PROTO_DATA_V2 = 1 << 1
IV_PROTO_TLS_KEY_EXPORT = 1 << 3
IV_PROTO_REQUEST_PUSH = 1 << 2
#: peer-ids fit in 24 bits; openvpn's MAX_PEER_ID (0xFFFFFF) means "none"
MAX_PEER_ID = 0xFFFFFE
#: PUSH_REPLY bytes per message before a push-continuation: openvpn's PUSH_BUNDLE_SIZE
#: (1024) less the 84 it keeps free for a trailing option and the continuation marker
PUSH_BUNDLE_SIZE = 1024 - 84
#: a client's control-channel message (PUSH_REQUEST, EXIT ...) is far shorter than this
MAX_CONTROL_MESSAGE = 64 * 1024
#: after AUTH_FAILED the session lingers this long for the client's ack, then ends
AUTH_FAILED_LINGER = 5.0
#: seconds between reads of every session's deadline (see OpenVPNServer.handle_timer)
SWEEP = 1.0
#: a peer-info line openvpn puts in the scripts' environment (validate_peer_info_line)
_PEER_INFO_NAME = re.compile(r"(IV_|UV_|ID)[A-Za-z0-9_]*")


@dataclass(slots=True)
class ServerOptions:
    """What a ``--server`` config says (files and inline blocks already read)."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes
    #: ``server NETWORK MASK`` as a prefix; the server takes the first host address
    #: (None: no IPv4 pool, e.g. with only ``server-ipv6`` or with ``server-bridge``)
    network: str | None = "10.8.0.0/24"
    #: ``topology``: subnet (one address each), net30 (a /30 each), p2p
    topology: str = "subnet"
    #: ``server-ipv6 NET/BITS``: pushes ``tun-ipv6`` and each client ``ifconfig-ipv6``
    network6: str | None = None
    #: ``server-bridge IP MASK POOL-START POOL-END`` (TAP)
    server_bridge: tuple[str, str, str, str] | None = None
    client_to_client: bool = False
    #: ``server ... nopool`` and ``ifconfig-pool START END [NETMASK]``
    nopool: bool = False
    ifconfig_pool: tuple[str, str, str | None] | None = None
    #: ``ifconfig-ipv6-pool BASE/BITS`` with the server's ``ifconfig-ipv6 ADDR/BITS``
    ifconfig_ipv6_pool: str | None = None
    ifconfig_ipv6: str | None = None
    #: ``client-config-dir``, already read: common name (or ``DEFAULT``) -> its
    #: parsed file (ccd.py); None: no client-config-dir
    client_configs: dict[str, ClientConfig] | None = None
    #: ``ccd-exclusive``: a client without its own file is refused
    ccd_exclusive: bool = False
    #: ``auth-gen-token [LIFETIME] [renewal SECONDS]``: push a session token the client
    #: sends instead of its password (authtoken.py); renewal defaults to reneg-sec
    auth_gen_token: bool = False
    auth_token_lifetime: int = 0
    auth_token_renewal: int | None = None
    #: ``auth-gen-token-secret``'s HMAC key (None: random, tokens die with the server)
    auth_token_secret: bytes | None = None
    verify_client_cert: str = "require"
    crl_pem: bytes | None = None
    remote_cert_tls: str | None = None
    tls_verify: Any = None
    tls_auth: bytes | None = None
    key_direction: int | None = 0
    tls_crypt: bytes | None = None
    auth: str = "SHA1"
    data_ciphers: tuple[str, ...] = ("AES-256-GCM", "AES-128-GCM", "CHACHA20-POLY1305")
    data_ciphers_fallback: str | None = None
    #: push "..." lines, without the quotes (route, dhcp-option, redirect-gateway ...)
    push: list[str] = field(default_factory=list)
    #: keepalive PING RESTART: pushed as ping / ping-restart, the server itself uses
    #: ping PING and ping-restart 2 * RESTART (openvpn's helper does the same)
    keepalive: tuple[int, int] | None = (10, 60)
    reneg_sec: int = 3600
    hand_window: float = 60.0
    tran_window: float = 60.0
    #: ask the adapter (AuthRequest) before any client is accepted
    auth_user_pass_verify: bool = False
    #: ``client-connect``: emit ClientConnect once the addresses are chosen and wait for
    #: the adapter's client_connect_result before the PUSH_REPLY
    client_connect: bool = False
    #: ``client-disconnect``: emit ClientDisconnect when a connected client ends
    client_disconnect: bool = False
    #: verify-client-cert none + username: the user name is the client's identity
    username_as_common_name: bool = False
    force_tls_key_material_export: bool = False
    #: compression framing, never compression (compress.py): None, "lzo" (pushes
    #: ``comp-lzo no``), "stub", "stub-v2", or "migrate" (openvpn's ``compress migrate``:
    #: only clients whose options say comp-lzo get framing, stub-v2 when they announce
    #: IV_COMP_STUBv2, else ``comp-lzo no``)
    compress: str | None = None
    #: derive data keys by TLS-EKM when the client offers it (off: always the PRF, as a
    #: pre-2.6 server would; for interop checks of that path)
    allow_ekm: bool = True
    #: duplicate-cn: several clients may share one identity (each gets its own address)
    duplicate_cn: bool = False
    tap: bool = False
    tun_mtu: int = 1500
    #: ``mssfix N [mtu|fixed]`` (mss.py): clamped per client, since its cipher, peer-id,
    #: compression and address family decide the overhead (openvpn 2.6: 1492 mtu)
    mssfix: int = 1492
    mssfix_encap: bool = True
    mssfix_fixed: bool = False
    tun_mtu_extra: int = 32
    proto: str = "udp"
    tls_version_min: str = "1.2"
    max_clients: int = 1024
    #: handshakes in progress from one source address (IP) at most
    max_handshakes_per_source: int = 8


#: what a session emits; AuthRequest is answered with OpenVPNServerSession.auth_result
ServerEvent = ConnectionEvent


def negotiate_cipher(server: tuple[str, ...], peer_info: dict[str, str], client_options: str,
                     fallback: str | None) -> str | None:
    """The data cipher for a client, as openvpn's ``ncp_get_best_cipher`` and
    ``multi_client_set_protocol_options``: the first of the server's ``data-ciphers``
    that the client lists in IV_CIPHERS (IV_NCP=2 alone: the two GCM ciphers) or, for a
    client without IV_CIPHERS, that is its own ``cipher``. ``data-ciphers-fallback`` only
    for a client that says nothing about ciphers at all; else None (no shared cipher)."""
    ours = [c for c in (canonical_cipher(s) for s in server) if c is not None]
    if "IV_CIPHERS" in peer_info:
        theirs = {c.strip().upper() for c in peer_info["IV_CIPHERS"].split(":")}
    elif peer_info.get("IV_NCP", "0").isdigit() and int(peer_info.get("IV_NCP", "0")) >= 2:
        theirs = {"AES-256-GCM", "AES-128-GCM"}
    else:
        theirs = set()
    remote: str | None = None
    for opt in client_options.split(","):
        words = opt.split()
        if len(words) == 2 and words[0] == "cipher":
            remote = words[1].upper()
    # a client that lists its ciphers is not assumed to accept its own --cipher
    match_remote = None if "IV_CIPHERS" in peer_info else remote
    for c in ours:
        if c in theirs or c == match_remote:
            return c
    if theirs or remote:
        return None
    return canonical_cipher(fallback) if fallback else None


def _iv_proto(peer_info: dict[str, str]) -> int:
    try:
        return int(peer_info.get("IV_PROTO", "0"))
    except ValueError:
        return 0


class _Shared:
    """What every session of one server shares: options, TLS context, pool, time base."""

    def __init__(self, options: ServerOptions, epoch: int,
                 wall: Callable[[], float] = time.time) -> None:
        self.options = options
        self.epoch = epoch
        #: wall-clock seconds, for auth-token times (the sessions' ``now`` is monotonic)
        self.wall = wall
        self.tokens = AuthTokenKey(options.auth_token_secret) \
            if options.auth_gen_token else None
        self.tls = TlsServerContext(TlsServerSettings(
            options.ca_pem, options.cert_pem, options.key_pem, options.remote_cert_tls,
            tls_version_min=options.tls_version_min, verify_hook=options.tls_verify,
            verify_client_cert=options.verify_client_cert, crl_pem=options.crl_pem))
        self.net = expand_server(options.network, tap=options.tap,
                                 topology=options.topology, network6=options.network6,
                                 bridge=options.server_bridge,
                                 client_to_client=options.client_to_client,
                                 nopool=options.nopool, pool=options.ifconfig_pool,
                                 pool6=options.ifconfig_ipv6_pool,
                                 ifconfig6=options.ifconfig_ipv6)
        pool = self.net.make_pool(options.duplicate_cn)
        if pool is None:
            raise ConfigError("server: no address pool (server, server-ipv6 or "
                              "server-bridge is needed)")
        self.pool: IfconfigPool = pool
        #: the acceptor's hook run before a client gets its address (openvpn's
        #: ``multi_client_connect_early_setup``: an older client with the same name goes)
        self.early_setup: Callable[[OpenVPNServerSession, float], None] | None = None
        if options.tls_auth is not None and options.tls_crypt is not None:
            raise ConfigError("tls-auth and tls-crypt are exclusive")
        if options.compress not in (None, "migrate", *COMPRESS_KINDS):
            raise ConfigError(f"compress: {options.compress!r} is not one of lzo, stub, "
                              "stub-v2, migrate (tunconnector frames, never compresses)")
        for line in options.push:
            if "," in line:
                raise ConfigError(f"push {line!r}: a pushed option cannot contain a comma")
            if len(line) + 40 > PUSH_BUNDLE_SIZE:
                raise ConfigError(f"push {line[:40]!r}...: option too long")
        for c in options.data_ciphers:
            if canonical_cipher(c) is None:
                raise ConfigError(f"data-ciphers: {c!r} is not supported "
                                  f"(supported: {', '.join(CIPHERS)})")

    def wrapper(self) -> Wrapper:
        return make_wrapper(self.options, False, self.epoch)


class OpenVPNServerSession(OpenVPNSession[ClientKeyMessage]):
    """One client of the server (see module docstring). Created by :class:`OpenVPNServer`."""

    SIDE, PEER = "server", "client"
    PEER_HARD_RESET = P_CONTROL_HARD_RESET_CLIENT_V2
    ANSWER_HARD_RESET = P_CONTROL_HARD_RESET_SERVER_V2
    MAX_APP_IN = MAX_CONTROL_MESSAGE

    options: ServerOptions

    def __init__(self, shared: _Shared, peer: Addr, peer_id: int, now: float,
                 cookie: GateAccept | None = None) -> None:
        self._shared = shared
        self.options = shared.options
        self.peer = peer
        self.peer_id = peer_id
        super().__init__(shared.wrapper(), shared.tls, parse_client_message)
        self._new_session(now)
        self.state = "handshake"
        self.common_name: str | None = None
        self.username: str | None = None
        self.peer_info: dict[str, str] = {}
        self.address: str | None = None
        self.address6: str | None = None
        self.lease: Lease | None = None
        #: this client's CCD file followed by its client-connect output, if any
        self.client_config: ClientConfig | None = None
        self.script_config: ClientConfig | None = None
        #: auth-gen-token: the token we pushed last, and the session's first one
        self.auth_token: str | None = None
        self._token_initial: str | None = None
        self._comp_push: str | None = None
        self._auth: str | None = None  # None: not asked yet, "pending", "ok", "failed"
        #: the key_id whose renegotiation waits for the adapter's password answer
        self._reauth: int | None = None
        #: client-connect chain: None (not run), "pending", "done", "failed"; partial: a
        #: step (CCD file, script) succeeded, so a later refusal still runs client-disconnect
        self._cc: str | None = None
        self._cc_partial = False
        self._created = now
        self.created_wall = int(shared.wall())
        #: link bytes (control and data, as read and written), openvpn's link_*_bytes
        self.link_bytes_in = self.link_bytes_out = 0
        self._auth_reason = ""
        #: why we refused, for our log and status when the client is told no reason
        self._refusal: str | None = None
        self._push_requested = False
        self._pushed = False
        self._close_at: float | None = None
        ping, restart = self.options.keepalive or (0, 0)
        self._ping = ping
        self._ping_restart = 2 * restart
        self._hand_deadline = now + self.options.hand_window
        ks = self._new_key_state(0, now)
        if cookie is not None:
            # the gate already exchanged both resets: message 0 each way is done
            self.session_id = cookie.server_session_id
            self.remote_session_id: bytes | None = cookie.client_session_id
            ks.receiver.skip(1)
            ks.sender.skip(1)
            ks.peer_reset = True
            ks.phase = TLS
            self._wrapper.skip_packet_ids(FIRST_SESSION_PACKET_ID - 1)
        else:
            self.session_id = secrets.token_bytes(8)
            self.remote_session_id = None

    # -- inputs --------------------------------------------------------------------------

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        if self.state == "closed" or not data:
            return
        self.link_bytes_in += len(data)
        src = addr[:2] if isinstance(addr, tuple) else addr
        here = self.peer[:2] if isinstance(self.peer, tuple) else self.peer
        if src != here:
            # only data that authenticates may move the client (openvpn floats on data
            # with the peer-id, after decryption)
            allowed = split_opcode(data[0])[0] in DATA_OPCODES
            if self._receive_elsewhere(data, now, allowed) and self.state != "closed":
                log.info("openvpn server: client %s moved to %s", self.peer, addr)
                self.peer = addr
                self._events.append(AddressChanged(now, addr))
        else:
            self._receive_packet(data, now)
        self._flush(now)

    def quick_data(self, data: bytes, now: float) -> bytes | None | bool:
        """The data fast path: a data packet from the client's own address on a key
        in use, while connected. Returns the frame to deliver, None when the packet was
        consumed (a ping, OCC, or a drop counted), False when the full path
        (:meth:`receive_datagram`) must take it, nothing done. The caller then takes
        :meth:`datagrams_to_send` (an OCC reply) and events (an explicit exit)."""
        if self.state != "connected":
            return False
        dk = self._data_keys.get(data[0] & 7)
        if dk is None:
            return False
        self.link_bytes_in += len(data)
        try:
            self._accept_data(data)
        except RemoteProtocolError as exc:
            self.drops[exc.reason] += 1
            return None
        return self._quick_open(dk, data, now)

    def receive_stream(self, data: bytes, now: float) -> None:
        self.link_bytes_in += len(data)
        super().receive_stream(data, now)

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        out = super().datagrams_to_send(now)
        self.link_bytes_out += sum(len(p) for p, _ in out)
        return out

    def stream_to_send(self, now: float) -> list[bytes]:
        out = super().stream_to_send(now)
        self.link_bytes_out += sum(len(p) for p in out)
        return out

    def _accept_data(self, data: bytes) -> None:
        if self._auth != "ok":
            raise RemoteProtocolError("unknown_key", "data before authentication")
        if data[0] >> 3 == P_DATA_V2 and len(data) >= 4 and \
                int.from_bytes(data[1:4], "big") != self.peer_id:
            raise RemoteProtocolError("bad_peer_id", "data with another client's peer-id")

    def _peer_renegotiates(self, key_id: int, now: float) -> KeyState[ClientKeyMessage]:
        if self._auth != "ok":
            raise RemoteProtocolError("unexpected_reset", "renegotiation before auth")
        return super()._peer_renegotiates(key_id, now)

    # -- key state machine ---------------------------------------------------------------

    @property
    def _who(self) -> str:
        return f"openvpn server: {self.peer}"

    def _broken(self, reason: str, now: float) -> None:
        self.end(reason, now)

    def _tls_failed(self, ks: KeyState[ClientKeyMessage], exc: Exception,
                    now: float) -> None:
        reason = ks.tls.refusal
        if reason is None and "peer did not return a certificate" in str(exc):
            reason = "the client sent no certificate (verify-client-cert require)"
        # the TLS alert goes out once, so the client learns why at once
        try:
            alert = ks.tls.outgoing()
        except SSL.Error:
            alert = b""
        if alert and self.remote_session_id is not None:
            self._queue_tls(ks, alert)
            self._send_due(ks, now)
        self.end(f"refused client: {reason}" if reason else f"TLS failed: {exc}", now,
                  logging.WARNING)

    def _tls_established(self, ks: KeyState[ClientKeyMessage]) -> None:
        if ks.key_id == 0 and self.common_name is None:
            self.common_name = ks.tls.peer_common_name()

    def _bad_control_message(self, exc: RemoteProtocolError, now: float) -> None:
        # inside TLS, so from the client itself: its stream is unusable from here on
        self.end(f"bad control-channel message from the client: {exc}", now)

    def _peer_key_arrived(self, ks: KeyState[ClientKeyMessage], msg: ClientKeyMessage,
                          now: float) -> bool:
        """The client's key message arrived: identity, cipher, our answer, data keys."""
        cn = ks.tls.peer_common_name()
        if ks.key_id == 0 and self._auth is None:
            self.peer_info = msg.peer_info_map()
            self.username = msg.username
            if self.options.username_as_common_name and msg.username:
                cn = msg.username
            self.common_name = cn
            self.cipher = negotiate_cipher(self.options.data_ciphers, self.peer_info,
                                           msg.options, self.options.data_ciphers_fallback)
            self._choose_framing(msg)
            self.ekm = self.options.allow_ekm and \
                bool(_iv_proto(self.peer_info) & IV_PROTO_TLS_KEY_EXPORT)
            # refusals that need no one's opinion come before asking the adapter
            if self.cipher is None:
                self._auth = "failed"
                self._auth_reason = "Data channel cipher negotiation failed (no shared cipher)"
            elif self.options.ccd_exclusive and \
                    not exclusive_allows(self.options.client_configs or {}, cn):
                # verify_final_auth_checks sets no client reason: plain AUTH_FAILED
                self._auth, self._auth_reason = "failed", ""
                self._refusal = "client-config-dir authentication failed (ccd-exclusive)"
            elif self.options.force_tls_key_material_export and not self.ekm:
                self._auth, self._auth_reason = "failed", "TLS key-material export required"
            elif self._shared.tokens is not None and is_auth_token(msg.password):
                # ssl_verify.c: a token is checked here, no script is asked
                check = self._check_token(msg.username or "", msg.password or "")
                if check.valid:
                    self._auth = "ok"
                    self._token_initial = msg.password
                else:
                    self._auth = "failed"
                    self._auth_reason = "SESSION: token expired" if check.hmac_ok else ""
            elif self.options.auth_user_pass_verify:
                self._auth = "pending"
                self.state = "auth-pending"
                self._events.append(AuthRequest(now, msg.username, msg.password, cn,
                                                dict(self.peer_info)))
            elif self.options.verify_client_cert != "require" and cn is None:
                self._auth = "failed"
                self._auth_reason = "no client certificate and no auth-user-pass-verify"
            else:
                self._auth = "ok"
        else:
            # a renegotiation keeps the identity the first key proved
            if not self.options.username_as_common_name and cn != self.common_name \
                    and self.options.verify_client_cert != "none":
                self.end(f"client certificate changed from {self.common_name!r} to {cn!r} "
                          "on renegotiation", now)
                return False
            if msg.username != self.username and self.options.auth_user_pass_verify:
                self.end("user name changed on renegotiation", now)
                return False
            if self._shared.tokens is not None and is_auth_token(msg.password):
                check = self._check_token(msg.username or "", msg.password or "",
                                          self._token_initial)
                if not check.valid:
                    self.end("auth-token refused on renegotiation" +
                              (" (expired)" if check.expired else ""), now)
                    return False
            elif self.options.auth_user_pass_verify and ks.key_id != 0:
                # verify_user_pass runs for every key: the new key is answered (and so
                # used) only once the password is accepted again
                self._reauth = ks.key_id
                self._events.append(AuthRequest(now, msg.username, msg.password, cn,
                                                dict(self.peer_info)))
                return False
        if not self._send_key(ks, now):
            return False
        if ks.key_id == 0 and not self._push_requested and \
                _iv_proto(self.peer_info) & IV_PROTO_REQUEST_PUSH:
            # a 2.5+ client takes the PUSH_REPLY without asking (push_reply right after
            # the key exchange, as openvpn's server does): a second less to connect
            self._push_requested = True
            if self._auth == "ok":
                self._send_push_reply(ks, now)
        return True

    def _send_key(self, ks: KeyState[ClientKeyMessage], now: float) -> bool:
        """Our key message (and a renewed token), then the data keys."""
        ks.tls.write(server_message(ks.local, self._options_string()))
        if ks.key_id != 0 and self.auth_token is not None:
            # send_push_reply_auth_token: the renewed token, alone in a PUSH_REPLY
            self._issue_token()
            ks.tls.write(f"PUSH_REPLY,auth-token {self.auth_token}".encode() + b"\0")
        ks.phase = KEYS_SENT
        if self._auth == "failed":
            self._auth_failed(ks, now)
            return False
        data_v2 = bool(_iv_proto(self.peer_info) & IV_PROTO_DATA_V2)
        self._derive(ks, self.peer_id if data_v2 else None, now)
        return True

    def _choose_framing(self, msg: ClientKeyMessage) -> None:
        """Compression framing for this client (openvpn's
        ``multi_client_connect_compress_migrate`` for "migrate")."""
        kind = self.options.compress
        if kind == "migrate":
            if ",comp-lzo," not in msg.options + ",":
                return
            kind = "stub-v2" if self.peer_info.get("IV_COMP_STUBv2") == "1" else "lzo"
        if kind is None:
            return
        self._comp = Framing(kind)
        self._comp_push = {"lzo": "comp-lzo no", "stub": "compress stub",
                           "stub-v2": "compress stub-v2"}[kind]

    def _control_message(self, ks: KeyState[ClientKeyMessage], text: str, now: float) -> None:
        if text.startswith("PUSH_REQUEST"):
            self._push_requested = True
            if self._auth == "ok":
                self._send_push_reply(ks, now)
            elif self._auth == "failed":
                self._auth_failed(ks, now)
        elif text.startswith("EXIT"):
            self.end("client sent EXIT", now)
        else:
            self.drops["unknown_control_message"] += 1

    def auth_result(self, ok: bool, now: float, reason: str = "",
                    client_config: ClientConfig | None = None, *,
                    why: str | None = None) -> None:
        """The adapter's answer to :class:`AuthRequest` (client-reason text optional);
        ``client_config``: what a client-connect script wrote, applied after the CCD
        file as openvpn does; ``why``: a refusal's cause for our log (never sent)."""
        if not ok and why:
            self._refusal = why
        if self._reauth is not None and self.state != "closed":
            self._reauth_result(ok, now, reason)
            return
        if self._auth != "pending" or self.state == "closed":
            return
        self.script_config = client_config
        ks = self._keys.get(0)
        if ks is None:
            return
        if not ok:
            self._auth, self._auth_reason = "failed", reason
            self._auth_failed(ks, now)
        else:
            self._auth = "ok"
            self._go_on(ks, now)
            return
        self._flush(now)

    def _go_on(self, ks: KeyState[ClientKeyMessage], now: float) -> None:
        """The client is let in: to the handshake state, and the PUSH_REPLY it asked for
        leaves now, not with the client's next PUSH_REQUEST."""
        self.state = "handshake"
        if self._push_requested:
            self._send_push_reply(ks, now)
            if not self._send_tls(ks, now):
                return
        self._flush(now)

    def _reauth_result(self, ok: bool, now: float, reason: str) -> None:
        """The password answer for a renegotiation: go on with the new key, or refuse
        the client (openvpn: one failed key fails the whole client)."""
        kid, self._reauth = self._reauth, None
        ks = self._keys.get(kid) if kid is not None else None
        if ks is None:
            return
        if ok:
            if not self._send_key(ks, now) or not self._send_tls(ks, now):
                return
        else:
            # send_control_channel_string: on the key in use (the client reads the new
            # one's channel only for our key message), then no more data either way
            primary = self._primary
            old = self._keys.get(primary.key_id) if primary is not None else None
            self._auth, self._auth_reason = "failed", reason
            self._primary = None
            self._auth_failed(old or ks, now)
        self._flush(now)

    def client_connect_result(self, ok: bool, now: float,
                              config: ClientConfig | None = None) -> None:
        """The adapter's answer to :class:`ClientConnect`: the hook's verdict and its
        output file (parsed), merged after the CCD file; an ``ifconfig-push`` in it
        replaces the chosen address (the pool's goes back), ``disable`` refuses."""
        if self._cc != "pending" or self.state == "closed":
            return
        ks = self._keys.get(0)
        if ks is None:
            return
        if not ok:
            log.warning("openvpn server: %s (%s): client-connect refused the client",
                        self.peer, self.common_name)
            self._connect_failed(ks, now, "client-connect refused")
        else:
            self._cc_partial = True
            if config is not None:
                self.script_config = config if self.script_config is None \
                    else self.script_config.extend(config)
                self.client_config = config if self.client_config is None \
                    else self.client_config.extend(config)
            if not self._connect_checks(ks, now):
                self._flush(now)
                return
            self._cc = "done"
            self._go_on(ks, now)
            return
        self._flush(now)

    def _connect_failed(self, ks: KeyState[ClientKeyMessage], now: float,
                        why: str) -> bool:
        """The connect chain refused the client: AUTH_FAILED without a reason (openvpn
        sends none for CAS_FAILED), client-disconnect if a step had succeeded."""
        self._cc = "failed"
        if self._cc_partial:
            self._disconnect_hook(now)
        self._auth, self._auth_reason, self._refusal = "failed", "", why
        self._auth_failed(ks, now)
        return False

    def _auth_failed(self, ks: KeyState[ClientKeyMessage], now: float) -> None:
        text = "AUTH_FAILED" + (f",{self._auth_reason}" if self._auth_reason else "")
        try:
            ks.tls.write(text.encode() + b"\0")
            out = ks.tls.outgoing()
        except SSL.Error:
            out = b""
        self._queue_tls(ks, out)
        if self._close_at is None:
            why = self._auth_reason or self._refusal
            ident = ", ".join(f"{k} {v!r}" for k, v in (("common name", self.common_name),
                                                        ("user", self.username)) if v)
            log.warning("openvpn server: %s%s refused: %s", self.peer,
                        f" ({ident})" if ident else "", why or "authentication failed")
            self.last_error = f"authentication failed: {why or 'refused'}"
            self._close_at = now + AUTH_FAILED_LINGER
            self.state = "auth-failed"

    def _push_options(self) -> list[str]:
        """openvpn's order: the config's push lines, then what ``server`` and
        ``keepalive`` add (helper.c), changed by the client's config (ccd.py), then
        this client's addresses, peer-id, cipher (``prepare_push_reply``)."""
        o = self.options
        parts = [p.strip() for p in o.push if p.strip()]
        parts += self._shared.net.push
        if o.keepalive:
            parts += [f"ping {o.keepalive[0]}", f"ping-restart {o.keepalive[1]}"]
        if self._comp_push is not None:
            # multi_client_connect_compress_migrate pushes before the CCD is read
            parts.append(self._comp_push)
        cfg = self.client_config
        res = apply_push(parts, cfg.push_ops if cfg is not None else [])
        parts = res.push
        for line in self._ifconfig_options():
            if not (res.block_ifconfig_ipv6 if line.startswith("ifconfig-ipv6 ")
                    else res.block_ifconfig):
                parts.append(line)
        if _iv_proto(self.peer_info) & IV_PROTO_DATA_V2:
            parts.append(f"peer-id {self.peer_id}")
        if self.auth_token is not None:
            parts += auth_token_push(self.auth_token, self.username or "")
        parts.append(f"cipher {self.cipher}")
        if self.ekm:
            parts.append("key-derivation tls-ekm")
        return parts

    def push_reply_messages(self) -> list[str]:
        """PUSH_REPLY text(s): a long option list goes in several messages, all but the
        last marked ``push-continuation 2`` (openvpn's ``send_push_reply`` splits at
        about 1 KiB so a client's control buffer takes each)."""
        out: list[str] = []
        current: list[str] = []
        size = len("PUSH_REPLY") + len(",push-continuation 2")
        for opt in self._push_options():
            if current and size + 1 + len(opt) > PUSH_BUNDLE_SIZE:
                out.append(",".join(["PUSH_REPLY", *current, "push-continuation 2"]))
                current, size = [], len("PUSH_REPLY") + len(",push-continuation 2")
            current.append(opt)
            size += 1 + len(opt)
        if out:
            current.append("push-continuation 1")
        out.append(",".join(["PUSH_REPLY", *current]))
        return out

    def _ifconfig_options(self) -> list[str]:
        """ifconfig-ipv6 then ifconfig: from the client config where it says so, else
        from the pool (``multi_select_virtual_addr``)."""
        cfg, net = self.client_config, self._shared.net
        pool = ifconfig_push(net, self.lease) if self.lease is not None else []
        v6 = [p for p in pool if p.startswith("ifconfig-ipv6 ")]
        v4 = [p for p in pool if not p.startswith("ifconfig-ipv6 ")]
        if cfg is not None and cfg.ifconfig_ipv6_push is not None:
            addr, remote = cfg.ifconfig_ipv6_push
            remote = remote or net.local6
            v6 = [f"ifconfig-ipv6 {addr} {remote}"] if remote is not None else []
        if cfg is not None and cfg.ifconfig_push is not None:
            local, remote4, alias = cfg.ifconfig_push
            v4 = [f"ifconfig {alias or local} {remote4}"]
        return v6 + v4

    def address_env(self) -> dict[str, str]:
        """openvpn's ``ifconfig_pool_*`` variables for this client's scripts (the
        address itself, never a ``ifconfig-push`` alias)."""
        lines = self._ifconfig_options()
        cfg = self.client_config
        if cfg is not None and cfg.ifconfig_push is not None and cfg.ifconfig_push[2]:
            lines = [f"ifconfig {cfg.ifconfig_push[0]} {cfg.ifconfig_push[1]}"
                     if line.startswith("ifconfig ") else line for line in lines]
        return address_env(self._shared.net, lines)

    def _check_token(self, username: str, token: str,
                     initial: str | None = None) -> TokenCheck:
        tokens = self._shared.tokens
        assert tokens is not None
        renewal = self.options.auth_token_renewal or self.options.reneg_sec
        return tokens.verify(username, token, int(self._shared.wall()), renewal,
                             self.options.auth_token_lifetime, initial)

    def _issue_token(self) -> None:
        """generate_auth_token: a new token, or a renewal keeping the session's id."""
        tokens = self._shared.tokens
        assert tokens is not None
        self.auth_token = tokens.generate(self.username or "", int(self._shared.wall()),
                                          self._token_initial)
        if self._token_initial is None:
            self._token_initial = self.auth_token

    def _client_connect(self, ks: KeyState[ClientKeyMessage], now: float) -> bool:
        """What openvpn does between authentication and the first PUSH_REPLY: drop an
        older client with this name, read its client config, pick its addresses."""
        if self._shared.tokens is not None:
            self._issue_token()
        if self._shared.early_setup is not None:
            self._shared.early_setup(self, now)
        cfg = None
        if self.options.client_configs is not None:
            cfg = lookup(self.options.client_configs, self.common_name)
        # multi_client_connect_source_ccd: a file read counts as a step that succeeded
        self._cc_partial = cfg is not None
        if self.script_config is not None:
            cfg = self.script_config if cfg is None else cfg.extend(self.script_config)
        self.client_config = cfg
        if not self._connect_checks(ks, now):
            return False
        if self.options.client_connect:
            self._cc, self.state = "pending", "client-connect"
            self._events.append(ClientConnect(now, self.script_env("client-connect")))
            return False
        self._cc = "done"
        return True

    def _connect_checks(self, ks: KeyState[ClientKeyMessage], now: float) -> bool:
        """``disable`` (checked after every step, as multi_connection_established),
        then the addresses for the config as it now stands."""
        cfg = self.client_config
        if cfg is not None and cfg.disable:
            log.warning("openvpn server: %s (%s) rejected by its 'disable' directive",
                        self.peer, self.common_name)
            return self._connect_failed(ks, now, "disabled by its client config")
        return self._select_address(ks, now)

    def _select_address(self, ks: KeyState[ClientKeyMessage], now: float) -> bool:
        """multi_select_virtual_addr: the config's ``ifconfig-push`` (a pool address
        chosen before goes back, forgotten), else a pool address once."""
        cfg = self.client_config
        if cfg is None or cfg.ifconfig_push is None:
            if self.lease is None:
                # like openvpn, duplicate-cn clients are anonymous to the pool
                lease = self._shared.pool.acquire(self.common_name or self.username)
                if lease is None:
                    self._auth, self._auth_reason = "failed", "no free address"
                    log.warning("openvpn server: %s: no free ifconfig-pool address",
                                self.peer)
                    self._auth_failed(ks, now)
                    return False
                self.lease = lease
                self.address = None if lease.ipv4 is None else str(lease.ipv4)
                self.address6 = None if lease.ipv6 is None else str(lease.ipv6)
        else:
            if self.lease is not None:
                self._shared.pool.release(self.lease.handle, now, hard=True)
                self.lease = None
            # openvpn: a static IPv4 gets no pool IPv6 (only an ifconfig-ipv6-push)
            self.address, self.address6 = str(cfg.ifconfig_push[0]), None
            net = self._shared.net
            if net.pool_netmask4 is not None and net.local4 is not None and \
                    ipaddress.IPv4Network(f"{net.local4}/{net.pool_netmask4}",
                                          strict=False).network_address != \
                    ipaddress.IPv4Network(f"{self.address}/{net.pool_netmask4}",
                                          strict=False).network_address:
                # ifconfig_push_constraint_satisfied: openvpn logs it and goes on
                log.error("openvpn server: primary virtual IP for %s (%s) violates "
                          "tunnel network/netmask constraint", self.common_name,
                          self.address)
        if cfg is not None and cfg.ifconfig_ipv6_push is not None:
            self.address6 = str(cfg.ifconfig_ipv6_push[0].ip)
        return True

    def script_env(self, script_type: str) -> dict[str, str]:
        """The environment openvpn gives client-connect / client-disconnect: peer-info
        (output_peer_info_env), identity, the real address (setenv_trusted), the
        tunnel addresses (multi_set_virtual_addr_env) and the connection time."""
        env = {k: v for k, v in self.peer_info.items()
               if _PEER_INFO_NAME.fullmatch(k) and v.isprintable()}
        env["script_type"] = script_type
        if self.common_name is not None:
            env["common_name"] = self.common_name
        if self.username is not None:
            env["username"] = self.username
        if isinstance(self.peer, tuple) and len(self.peer) >= 2:
            host = str(self.peer[0])
            host = host[len("::ffff:"):] if host.startswith("::ffff:") and "." in host \
                else host
            env["trusted_ip6" if ":" in host else "trusted_ip"] = host
            env["trusted_port"] = str(self.peer[1])
        env.update(self.address_env())
        env["time_ascii"] = time.strftime("%Y-%m-%d %H:%M:%S",
                                          time.localtime(self.created_wall))
        env["time_unix"] = str(self.created_wall)
        return env

    def _disconnect_hook(self, now: float) -> None:
        """multi_client_disconnect_script: the same environment plus traffic and time."""
        if not self.options.client_disconnect:
            return
        env = self.script_env("client-disconnect")
        env.update(bytes_received=str(self.link_bytes_in), bytes_sent=str(self.link_bytes_out),
                   time_duration=str(int(now - self._created)))
        self._events.append(ClientDisconnect(now, env))

    def peer_certificate(self) -> Any:
        """The client's certificate from its first handshake (None: none sent)."""
        ks = self._keys.get(0) or next(iter(self._keys.values()), None)
        return None if ks is None else ks.tls.chain.get(0)

    def mss_clamp(self) -> int:
        """This client's MSS clamp (0: none), the same computation as the client's
        (openvpn's ``frame_calculate_mssfix`` on the server's per-client frame)."""
        return self._mss_for(peer_id=bool(_iv_proto(self.peer_info) & IV_PROTO_DATA_V2))

    def prefixes(self) -> list[Network]:
        """What the router sends to this client: its addresses and its iroutes."""
        out: list[Network] = []
        if self.address is not None:
            out.append(ipaddress.ip_network(self.address))
        if self.address6 is not None:
            out.append(ipaddress.ip_network(self.address6))
        if self.client_config is not None:
            out += self.client_config.iroutes
            out += self.client_config.iroutes_ipv6
        return out

    def _send_push_reply(self, ks: KeyState[ClientKeyMessage], now: float) -> None:
        if not self._pushed and self._cc != "done":
            if self._cc is not None or not self._client_connect(ks, now):
                return  # client-connect still running, or refused
        try:
            for text in self.push_reply_messages():
                ks.tls.write(text.encode() + b"\0")
        except SSL.Error as exc:
            self._tls_failed(ks, exc, now)
            return
        if self._pushed:
            return  # an answer to a retried PUSH_REQUEST: the key is already in use
        self._pushed = True
        self._mss = self.mss_clamp()
        if ks.data is not None:
            self._make_primary(ks, now)
        self.state = "connected"
        self._hand_deadline = None
        self._reneg_at = now + self.options.reneg_sec
        log.info("openvpn server: %s (%s) connected as %s, %s, keys by %s", self.peer,
                 self.common_name, self.address, self.cipher, "TLS-EKM" if self.ekm else "PRF")
        self._events.append(Connected(now, self.peer))

    def _before_flush(self, now: float) -> None:
        """A renegotiated key whose message the client acked becomes the sending key."""
        for ks in list(self._keys.values()):
            if ks.phase == KEYS_SENT and ks.data is not None and ks.sender.empty and (
                    ks.key_id != 0 or self._pushed):
                self._make_primary(ks, now)
        for ks in list(self._keys.values()):
            if ks.phase == RESET and ks.peer_reset and ks.sender.empty:
                self._advance(ks, now)

    # -- lifecycle -----------------------------------------------------------------------

    def end(self, reason: str, now: float, level: int = logging.INFO) -> None:
        if self.state == "closed":
            return
        log.log(level, "openvpn server: %s disconnected: %s", self.peer, reason)
        if self._cc == "done":
            self._disconnect_hook(now)
        if self.lease is not None:
            # soft: the name stays on the handle, so the client gets it back
            self._shared.pool.release(self.lease.handle, now)
        self._stop("closed", reason, now, False)

    def close(self, now: float) -> None:
        """Ending the client from our side (restart, kill): tell it to reconnect."""
        if self.state == "closed":
            return
        self._send_exit(1, now)
        self.end("closed by the server", now)

    @property
    def closed(self) -> bool:
        return self.state == "closed"

    def start(self, now: float) -> None:
        """Nothing to do: a server session begins with the client's packets."""

    def connection_made(self, now: float) -> None:
        """A TCP session lives and dies with its one stream (see accept_stream)."""

    def _out_of_time(self, now: float) -> bool:
        if self._close_at is not None and (now >= self._close_at or all(
                k.sender.empty for k in self._keys.values())):
            self.end(self.last_error or "authentication failed", now)
            return True
        return super()._out_of_time(now)

    def _silence_limit(self) -> int | None:
        return self._ping_restart if self.state == "connected" else None

    def _own_timers(self, now: float) -> bool:
        for ks in list(self._keys.values()):
            if ks.phase != ACTIVE and ks.key_id != 0 \
                    and now - ks.created >= self.options.hand_window:
                self.end(f"renegotiation (key_id {ks.key_id}) did not finish within "
                          f"{self.options.hand_window:g} s", now)
                return False
        return True

    def _own_times(self) -> list[float] | None:
        times: list[float] = []
        if self._close_at is not None:
            if all(k.sender.empty for k in self._keys.values()):
                return None  # AUTH_FAILED was acknowledged: end now
            times.append(self._close_at)
        for ks in self._keys.values():
            if ks.phase != ACTIVE and ks.key_id != 0:
                times.append(ks.created + self.options.hand_window)
        return times

    def status(self, now: float) -> dict[str, Any]:
        return {
            **self._link_status(),
            "common_name": self.common_name,
            "username": self.username,
            "address": self.address,
            "address6": self.address6,
            "iroutes": [str(n) for n in self.prefixes()[bool(self.address) +
                                                        bool(self.address6):]],
            "peer_id": self.peer_id,
            **self._key_status(now),
            "renegotiations": self.renegotiations,
            "error": self.last_error,
            **self._counters(),
        }


#: the adapter drives sessions through the Connection protocol (checked by mypy)
_CONFORMS: type[Connection] = OpenVPNServerSession


def _source_ip(addr: Addr) -> Any:
    return addr[0] if isinstance(addr, tuple) and addr else addr


class OpenVPNServer:
    """The acceptor: which session a datagram belongs to, and when a new one may exist.

    UDP: a datagram from a known address goes to its session; DATA_V2 from elsewhere goes
    to the session its peer-id names (a float, if it decrypts); anything else passes the
    :class:`~.gate.HandshakeGate` first, so no state exists for a source that did not
    prove it receives. TCP: the adapter calls :meth:`accept_stream` per connection.
    Events come out of :meth:`next_event` as (session, event).
    """

    def __init__(self, options: ServerOptions, wall_clock: float | None = None,
                 cookie_key: bytes | None = None,
                 wall: Callable[[], float] = time.time) -> None:
        self.options = options
        self._shared = _Shared(options, int(time.time() if wall_clock is None else wall_clock),
                               wall)
        self.gate = HandshakeGate(self._shared.wrapper, hand_window=options.hand_window,
                                  key=cookie_key)
        self.sessions: dict[Any, OpenVPNServerSession] = {}
        self.by_peer_id: dict[int, OpenVPNServerSession] = {}
        self._next_peer_id = 0
        self._gate_out: list[tuple[bytes, Addr]] = []
        self._events: collections.deque[tuple[OpenVPNServerSession, ServerEvent]] = \
            collections.deque()
        self.drops: collections.Counter[str] = collections.Counter()
        if not options.duplicate_cn:
            self._shared.early_setup = self._kick_duplicates
        #: clients' addresses and iroutes by peer-id, for the data path
        self.router = Router(client_to_client=options.client_to_client)
        #: one timer for all sessions: a heap of (deadline, n, session), stale entries
        #: skipped (``_deadline`` holds each session's current one), so 1,000 idle
        #: clients cost a wake-up only when one of them has something to do
        self._heap: list[tuple[float, int, OpenVPNServerSession]] = []
        self._deadline: dict[OpenVPNServerSession, float] = {}
        self._heap_n = 0
        #: every SWEEP seconds each session's deadline is read again, for a session
        #: changed by a direct call (tests, the adapter's fast path)
        self._next_sweep = 0.0

    @property
    def pool(self) -> IfconfigPool:
        return self._shared.pool

    @property
    def server_address(self) -> str | None:
        """The server's IPv4 on its device (None with server-bridge or IPv6 only)."""
        local = self._shared.net.local4
        return None if local is None else str(local)

    def set_client_configs(self, configs: dict[str, ClientConfig] | None,
                           now: float) -> list[OpenVPNServerSession]:
        """A reloaded client-config-dir (SIGHUP, ``tunconnector reload``): clients whose
        file changed, or whom ``ccd-exclusive`` now refuses, are told to reconnect and
        so get the new config; the others stay up. Returns the ended sessions."""
        self.options.client_configs = configs
        ended = []
        for session in list(self.sessions.values()):
            if session.closed or session.state != "connected":
                continue
            cn = session.common_name
            file = lookup(configs, cn) if configs is not None else None
            script = session.script_config
            want = file.extend(script) if file is not None and script is not None \
                else file or script
            refused = self.options.ccd_exclusive and not exclusive_allows(configs or {}, cn)
            if want != session.client_config or refused:
                log.info("openvpn server: %s (%s): client config changed, reconnecting it",
                         session.peer, cn)
                self.close_session(session, now)
                ended.append(session)
        return ended

    def set_crl(self, pem: bytes | None, now: float) -> list[OpenVPNServerSession]:
        """A changed ``crl-verify`` file: new handshakes check the new list, and a
        client whose certificate it revokes is ended now. Returns the ended sessions
        (a bad CRL raises ConfigError and changes nothing)."""
        tls = self._shared.tls
        tls.set_crl(pem)
        ended = []
        for session in list(self.sessions.values()):
            cert = session.peer_certificate()
            if session.closed or cert is None or not tls.revoked(cert):
                continue
            session.end(f"refused client: certificate {session.common_name!r} (serial "
                         f"{cert.serial_number:x}) is revoked (crl-verify changed)", now,
                         logging.WARNING)
            self.collect(session)
            ended.append(session)
        return ended

    def load_pool(self, text: str, now: float, fixed: bool = False) -> int:
        """Apply an ``ifconfig-pool-persist`` file's text (``fixed``: its SECONDS was
        0, openvpn's read-only mode); before any client connects."""
        return self._shared.pool.load(parse_persist(text), fixed, now)

    def pool_file(self) -> str:
        """The text to write to the ``ifconfig-pool-persist`` file."""
        return format_persist(self._shared.pool)

    def _key(self, addr: Addr) -> Any:
        return addr[:2] if isinstance(addr, tuple) else addr

    def _allocate_peer_id(self) -> int | None:
        for _ in range(MAX_PEER_ID + 1):
            pid = self._next_peer_id
            self._next_peer_id = (pid + 1) % (MAX_PEER_ID + 1)
            if pid not in self.by_peer_id:
                return pid
        return None

    def _may_start(self, addr: Addr) -> str | None:
        if len(self.sessions) >= self.options.max_clients:
            return "max_clients"
        ip = _source_ip(addr)
        busy = sum(1 for k, s in self.sessions.items()
                   if _source_ip(k) == ip and s.state != "connected")
        if busy >= self.options.max_handshakes_per_source:
            return "handshakes_per_source"
        return None

    def _new_session(self, addr: Addr, now: float,
                     cookie: GateAccept | None) -> OpenVPNServerSession | None:
        why = self._may_start(addr)
        pid = self._allocate_peer_id() if why is None else None
        if why is None and pid is None:
            why = "no_peer_id"
        if why is not None or pid is None:
            self.drops[why or "no_peer_id"] += 1
            return None
        session = OpenVPNServerSession(self._shared, addr, pid, now, cookie)
        self.sessions[self._key(addr)] = session
        self.by_peer_id[pid] = session
        return session

    def receive_datagram(self, data: bytes, addr: Addr,
                         now: float) -> OpenVPNServerSession | None:
        """Hand a datagram to its session (returned) or to the gate (None)."""
        if not data:
            self.drops["empty"] += 1
            return None
        key = self._key(addr)
        session = self.sessions.get(key)
        opcode = split_opcode(data[0])[0]
        if session is not None and not session.closed:
            if opcode == P_CONTROL_HARD_RESET_CLIENT_V2 and len(data) >= 9 and \
                    session.remote_session_id not in (None, bytes(data[1:9])):
                pass  # a restarted client at the same address: the gate decides
            elif opcode in (P_CONTROL_V1, P_ACK_V1) and len(data) >= 9 and \
                    session.remote_session_id not in (None, bytes(data[1:9])):
                pass  # its second packet with a cookie for the new session id
            else:
                session.receive_datagram(data, addr, now)
                self.collect(session)
                return session
        if opcode == P_DATA_V2 and len(data) >= 4:
            owner = self.by_peer_id.get(int.from_bytes(data[1:4], "big"))
            if owner is None or owner.closed:
                self.drops["unknown_peer_id"] += 1
                return None
            old = self._key(owner.peer)
            owner.receive_datagram(data, addr, now)
            if self._key(owner.peer) != old:
                self.sessions.pop(old, None)
                displaced = self.sessions.get(key)
                if displaced is not None and displaced is not owner:
                    displaced.close(now)
                    self.collect(displaced)
                self.sessions[key] = owner
            self.collect(owner)
            return owner
        if opcode in DATA_OPCODES:
            self.drops["no_session"] += 1
            return None
        verdict = self.gate.check(data, addr, now)
        if isinstance(verdict, GateReply):
            self._gate_out.append((verdict.packet, addr))
            return None
        if not isinstance(verdict, GateAccept):
            return None
        if session is not None and not session.closed:
            session.end("client restarted (new session from its address)", now)
            self.collect(session)
            self._forget(session)
        created = self._new_session(addr, now, verdict)
        if created is None:
            return None
        created.receive_datagram(data, addr, now)
        self.collect(created)
        return created

    def accept_stream(self, addr: Addr, now: float) -> OpenVPNServerSession | None:
        """A new TCP connection: a session that expects the client's hard reset (TCP
        proves the address by its own handshake, so there is no cookie)."""
        return self._new_session(addr, now, None)

    def schedule(self, session: OpenVPNServerSession) -> None:
        """Read ``session``'s deadline again (after anything that may have moved it
        earlier; a later one is found when the old one fires)."""
        t = session.get_timer()
        if t is None or session.closed:
            self._deadline.pop(session, None)
            return
        if self._deadline.get(session) == t:
            return
        self._deadline[session] = t
        self._heap_n += 1
        heapq.heappush(self._heap, (t, self._heap_n, session))

    def _forget(self, session: OpenVPNServerSession) -> None:
        self._deadline.pop(session, None)
        key = self._key(session.peer)
        if self.sessions.get(key) is session:
            del self.sessions[key]
        if self.by_peer_id.get(session.peer_id) is session:
            del self.by_peer_id[session.peer_id]
            self.router.remove_peer(session.peer_id)

    def collect(self, session: OpenVPNServerSession) -> None:
        while (ev := session.next_event()) is not None:
            if isinstance(ev, Connected):
                self.router.set_peer(session.peer_id, session.prefixes())
            self._events.append((session, ev))
        if session.closed:
            self._gate_out += session.datagrams_to_send(0.0)  # its last words (OCC EXIT)
            self._forget(session)
        else:
            self.schedule(session)

    def _kick_duplicates(self, session: OpenVPNServerSession, now: float) -> None:
        """Without duplicate-cn a new client with an identity in use replaces the old."""
        ident = session.common_name or session.username
        if ident is None:
            return
        for other in list(self.sessions.values()):
            if other is not session and not other.closed and \
                    (other.common_name or other.username) == ident:
                other.close(now)
                self.collect(other)

    def auth_result(self, session: OpenVPNServerSession, ok: bool, now: float,
                    reason: str = "", client_config: ClientConfig | None = None, *,
                    why: str | None = None) -> None:
        session.auth_result(ok, now, reason, client_config, why=why)
        self.collect(session)

    def client_connect_result(self, session: OpenVPNServerSession, ok: bool, now: float,
                              config: ClientConfig | None = None) -> None:
        """Answer a session's :class:`ClientConnect` (see the session's method)."""
        session.client_connect_result(ok, now, config)
        self.collect(session)

    def close_session(self, session: OpenVPNServerSession, now: float) -> None:
        """End a client from our side (kill, shutdown): it is told to reconnect."""
        session.close(now)
        self.collect(session)

    def handle_timer(self, now: float) -> list[OpenVPNServerSession]:
        """Run the sessions whose deadline passed; returns them (their output is due)."""
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP
            for session in list(self.sessions.values()):
                self.collect(session)
        else:  # sessions closed by a direct call go at once
            for session in [s for s in self.sessions.values() if s.state == "closed"]:
                self.collect(session)
        due = []
        heap, deadline = self._heap, self._deadline
        while heap and heap[0][0] <= now:
            t, _, session = heapq.heappop(heap)
            if deadline.get(session) != t:
                continue  # stale: the session moved its deadline, or is gone
            del deadline[session]
            if not session.closed:
                nt = session.get_timer()
                if nt is not None and nt <= now:
                    session.handle_timer(now)
                    due.append(session)
            self.collect(session)
        return due

    def get_timer(self) -> float | None:
        heap, deadline = self._heap, self._deadline
        while heap and deadline.get(heap[0][2]) != heap[0][0]:
            heapq.heappop(heap)
        if not self.sessions:
            return heap[0][0] if heap else None
        t = heap[0][0] if heap else None
        return self._next_sweep if t is None or self._next_sweep < t else t

    def take_gate_datagrams(self) -> list[tuple[bytes, Addr]]:
        """What the server itself answered (cookies, resets, closed sessions' last words),
        for the adapter to send; cleared."""
        out, self._gate_out = self._gate_out, []
        return out

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Addr]]:
        out = self.take_gate_datagrams()
        for session in list(self.sessions.values()):
            out += session.datagrams_to_send(now)
        return out

    def next_event(self) -> tuple[OpenVPNServerSession, ServerEvent] | None:
        return self._events.popleft() if self._events else None

    def status(self, now: float) -> dict[str, Any]:
        return {
            "clients": [s.status(now) for s in self.sessions.values()],
            "drops": dict(self.drops),
            "gate": {"replies": self.gate.replies, "accepted": self.gate.accepted,
                     "drops": dict(self.gate.drops)},
        }
