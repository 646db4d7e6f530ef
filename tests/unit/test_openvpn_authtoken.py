"""auth-gen-token: openvpn's token bytes (auth_token.c), its checks, and a server that
pushes one to our client, which then renegotiates and reconnects with it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
import sys
from pathlib import Path
from typing import Any

from tunconnector.proto.connection import AuthRequest, Disconnected, Rekeyed
from tunconnector.proto.openvpn.authtoken import AuthTokenKey, is_auth_token, push_options
from tunconnector.proto.openvpn.server import OpenVPNServer

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.unit.test_openvpn_server import (  # noqa: E402
    CLIENT_ADDR,
    SERVER_ADDR,
    Link,
    OpenVPNClient,
    client_options,
    server_options,
)

KEY = bytes(range(32))
T0 = 1_800_000_000


def test_token_bytes_are_openvpns() -> None:
    token = AuthTokenKey(KEY, rand=lambda n: b"\x07" * n).generate("alice", T0)
    assert token.startswith("SESS_ID_AT_") and len(token) == 11 + 80 and is_auth_token(token)
    data = base64.b64decode(token[11:])
    body = b"\x07" * 12 + struct.pack(">QQ", T0, T0)
    assert data[:28] == body
    # check_hmac_token: HMAC-SHA256(key, username | session id | initial | now)
    assert data[28:] == hmac.new(KEY, b"alice" + body, hashlib.sha256).digest()
    assert push_options(token, "alice") == [f"auth-token {token}",
                                            "auth-token-user YWxpY2U="]
    assert push_options(token, "") == [f"auth-token {token}"]


def test_token_checks_window_lifetime_user_and_session() -> None:
    keys = AuthTokenKey(KEY)
    token = keys.generate("alice", T0)
    assert keys.verify("alice", token, T0 + 10, renewal=60).valid
    assert keys.verify("alice", token, T0 + 119, renewal=60).valid
    late = keys.verify("alice", token, T0 + 120, renewal=60)  # [time, time + 2 * renewal)
    assert late.hmac_ok and late.expired and not late.valid
    assert keys.verify("alice", token, T0 - 1, renewal=60).expired  # clock went back
    assert not keys.verify("bob", token, T0, renewal=60).hmac_ok
    assert not AuthTokenKey().verify("alice", token, T0, renewal=60).hmac_ok
    assert not keys.verify("alice", token[:-4] + "AAAA", T0, renewal=60).hmac_ok
    assert not keys.verify("alice", "SESS_ID_AT_notbase64!", T0, renewal=60).hmac_ok
    anon = keys.generate("alice", T0, empty_user=True)
    check = keys.verify("alice", anon, T0, renewal=60)
    assert check.hmac_ok and check.empty_user and not check.valid
    # a renewal keeps the session id and initial time, so the lifetime counts from T0
    renewed = keys.generate("alice", T0 + 100, initial=token)
    assert renewed[:27] == token[:27] and renewed != token
    assert keys.verify("alice", renewed, T0 + 150, renewal=60, initial=token).valid
    assert keys.verify("alice", renewed, T0 + 150, renewal=60, lifetime=120).expired
    other = keys.generate("alice", T0 + 100)
    assert not keys.verify("alice", other, T0 + 101, renewal=60, initial=token).hmac_ok


class _Clock:
    def __init__(self) -> None:
        self.t = float(T0)

    def __call__(self) -> float:
        return self.t


def _server(clock: _Clock, **kw: Any) -> OpenVPNServer:
    return OpenVPNServer(server_options(auth_user_pass_verify=True, auth_gen_token=True,
                                        auth_token_secret=KEY, verify_client_cert="none",
                                        **kw), wall=clock)


def _link(server: OpenVPNServer, password: str, asked: list[AuthRequest],
          addr: tuple[str, int] = CLIENT_ADDR, **ckw: Any) -> Link:
    def decide(req: AuthRequest) -> tuple[bool, str]:
        asked.append(req)
        return (req.password == "secret", "bad password")

    client = OpenVPNClient(client_options(cert=None, username="alice", password=password,
                                          **ckw), peer=SERVER_ADDR)
    link = Link(server, client, addr, auth=decide)
    client.start(0.0)
    link.pump(5.0)
    return link


def test_token_is_pushed_then_replaces_the_password() -> None:
    clock = _Clock()
    asked: list[AuthRequest] = []
    server = _server(clock, reneg_sec=20)
    link = _link(server, "secret", asked)
    assert link.connected() and len(asked) == 1
    session = link.session()
    reply = session.push_reply_messages()[0].split(",")
    token = session.auth_token
    assert token is not None and link.client.auth_token == token
    # prepare_push_reply: ... ifconfig, peer-id, auth-token, auth-token-user, cipher
    at = reply.index(f"auth-token {token}")
    assert reply[at - 1].startswith("peer-id ") and reply[at + 1] == "auth-token-user YWxpY2U="
    assert reply[at + 2].startswith("cipher ")
    # the renegotiation at t=20 carries the token; the server renews it, same session
    clock.t += 20
    link.pump(30.0)
    assert any(isinstance(e, Rekeyed) for e in link.server_events)
    assert not session.closed and session.auth_token != token
    assert link.client.auth_token == session.auth_token
    assert session.auth_token is not None and session.auth_token[:27] == token[:27]
    # a reconnection with the token instead of the password: no one is asked
    again = _link(server, session.auth_token, asked, ("198.51.100.8", 2))
    assert again.connected() and len(asked) == 1


def _refusal(link: Link) -> str:
    down = [e for e in link.client_events if isinstance(e, Disconnected)]
    assert down and not link.connected()
    return str(down[0].reason)


def test_bad_or_expired_tokens_are_refused_without_asking() -> None:
    clock = _Clock()
    asked: list[AuthRequest] = []
    server = _server(clock)
    token = AuthTokenKey(KEY).generate("alice", T0)
    forged = AuthTokenKey().generate("alice", T0)
    assert "AUTH_FAILED" in _refusal(_link(server, forged, asked))
    clock.t += 2 * 3600  # two reneg-sec later: out of the renewal window
    reason = _refusal(_link(server, token, asked, ("198.51.100.8", 2)))
    assert "AUTH_FAILED,SESSION: token expired" in reason
    assert asked == []


def test_a_renegotiation_with_another_sessions_token_ends_the_session() -> None:
    clock = _Clock()
    asked: list[AuthRequest] = []
    server = _server(clock, reneg_sec=20)
    link = _link(server, "secret", asked)
    session = link.session()
    # valid HMAC and time, but not this session's id (verify_auth_token's last check)
    link.client.auth_token = AuthTokenKey(KEY).generate("alice", T0 + 20)
    clock.t += 20
    link.pump(30.0)
    assert session.closed and "auth-token refused" in str(session.last_error)
