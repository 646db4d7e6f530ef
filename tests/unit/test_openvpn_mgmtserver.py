"""The server's management commands, sans I/O: replies as openvpn 2.6's manage.c."""

from __future__ import annotations

import time

import pytest

from tunconnector.proto.openvpn.mgmt import StateEntry
from tunconnector.proto.openvpn.mgmtserver import (
    ClientAuth,
    KillClient,
    Reply,
    SendSignal,
    ServerManagement,
)
from tunconnector.proto.openvpn.serverstatus import ClientRow, ServerSnapshot, status_lines

NOW = 1700000000
SNAP = ServerSnapshot(
    now=NOW,
    clients=(
        ClientRow("alice", "198.51.100.7:51234", "10.8.0.6", bytes_received=100,
                  bytes_sent=200, connected_since=NOW - 60, client_id=4, peer_id=0),
        ClientRow("alice", "198.51.100.8:4000", "10.8.0.10", client_id=5, peer_id=1),
        ClientRow("bob", "203.0.113.9:1194", "10.8.0.14", bytes_received=7, bytes_sent=9,
                  client_id=6, peer_id=2),
    ),
    bytes_in=1000, bytes_out=2000,
    pending_auth=frozenset({(7, 0), (8, 1)}),
)


def _mgmt(**kw: int) -> ServerManagement:
    return ServerManagement(pid=4242, title="OpenVPN 2.6.14 test", localtime=time.gmtime,
                            **kw)


def _run(m: ServerManagement, line: str, now: float = 100.0) -> Reply:
    return m.receive_line(line, SNAP, now)


def test_greeting_version_pid_quit() -> None:
    m = _mgmt()
    assert m.greeting() == [
        ">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info"]
    assert _run(m, "version").lines == ["OpenVPN Version: OpenVPN 2.6.14 test",
                                        "Management Version: 5", "END"]
    assert _run(m, "version 3").lines == []
    assert _run(m, "pid").lines == ["SUCCESS: pid=4242"]
    assert _run(m, "quit").close and _run(m, "exit").close
    assert not _run(m, "pid").close
    assert _run(m, "frobnicate").lines == [
        "ERROR: unknown command, enter 'help' for more options"]
    assert _run(m, "").lines == []


def test_help_lists_the_server_commands() -> None:
    lines = _run(_mgmt(), "help").lines
    assert lines[:2] == ["Management Interface for OpenVPN 2.6.14 test", "Commands:"]
    assert lines[-1] == "END"
    assert "kill cn                : Kill the client instance(s) having common name cn." \
        in lines
    assert "client-kill CID [M]    : Kill client instance CID with message M (def=RESTART)" \
        in lines


def test_status_formats() -> None:
    m = _mgmt(status_version=2)
    assert _run(m, "status").lines == status_lines(SNAP, 2, time.gmtime)
    assert _run(m, "status 0").lines == status_lines(SNAP, 2, time.gmtime)
    assert _run(m, "status 1").lines == status_lines(SNAP, 1, time.gmtime)
    assert _run(m, "status 3").lines[0] == "TITLE\tOpenVPN 2.6.14 tunconnector " \
        "[openvpn-compatible server]"
    assert _run(m, "status 9").lines == ["ERROR: bad status format version number"]


def test_load_stats() -> None:
    assert _run(_mgmt(), "load-stats").lines == [
        "SUCCESS: nclients=3,bytesin=1000,bytesout=2000"]


def test_kill_by_common_name() -> None:
    r = _run(_mgmt(), "kill alice")
    assert r.lines == ["SUCCESS: common name 'alice' found, 2 client(s) killed"]
    assert r.actions == [KillClient(4), KillClient(5)]
    r = _run(_mgmt(), "kill carol")
    assert (r.lines, r.actions) == (["ERROR: common name 'carol' not found"], [])


def test_kill_by_address() -> None:
    r = _run(_mgmt(), "kill 203.0.113.9:1194")
    assert r.lines == ["SUCCESS: 1 client(s) at address 203.0.113.9:1194 killed"]
    assert r.actions == [KillClient(6)]
    assert _run(_mgmt(), "kill 203.0.113.9:1195").lines == [
        "ERROR: client at address 203.0.113.9:1195 not found"]
    assert _run(_mgmt(), "kill 203.0.113.9:70000").lines == [
        "ERROR: port number is out of range: 70000"]
    assert _run(_mgmt(), "kill nowhere:1194").lines == [
        "ERROR: error parsing IP address: nowhere"]
    assert _run(_mgmt(), "kill :1194").lines == ["ERROR: kill parse"]
    assert _run(_mgmt(), "kill").lines == ["ERROR: the 'kill' command requires 1 parameter"]


def test_client_kill() -> None:
    r = _run(_mgmt(), "client-kill 6")
    assert r.lines == ["SUCCESS: client-kill command succeeded"]
    assert r.actions == [KillClient(6, "RESTART")]
    assert _run(_mgmt(), "client-kill 5 HALT").actions == [KillClient(5, "HALT")]
    r = _run(_mgmt(), "client-kill 99")
    assert (r.lines, r.actions) == (["ERROR: client-kill command failed"], [])
    assert _run(_mgmt(), "client-kill x").lines == ["ERROR: cannot parse CID"]
    assert _run(_mgmt(), "client-kill").lines == [
        "ERROR: the 'client-kill' command requires at least 1 parameter"]


def test_client_auth_multiline_block() -> None:
    m = _mgmt()
    assert _run(m, "client-auth 7 0").lines == []
    assert _run(m, 'push "route 10.1.0.0 255.255.0.0"').lines == []
    assert _run(m, "ifconfig-push 10.8.0.50 255.255.255.0").lines == []
    r = _run(m, "END")
    assert r.lines == ["SUCCESS: client-auth command succeeded"]
    assert r.actions == [ClientAuth(7, 0, True, ('push "route 10.1.0.0 255.255.0.0"',
                                                 "ifconfig-push 10.8.0.50 255.255.255.0"))]
    assert _run(m, "pid").lines == ["SUCCESS: pid=4242"]  # back to commands


def test_client_auth_nt_and_deny() -> None:
    r = _run(_mgmt(), "client-auth-nt 8 1")
    assert (r.lines, r.actions) == (["SUCCESS: client-auth command succeeded"],
                                    [ClientAuth(8, 1, True)])
    r = _run(_mgmt(), 'client-deny 7 0 "bad password" "try again"')
    assert (r.lines, r.actions) == (
        ["SUCCESS: client-deny command succeeded"],
        [ClientAuth(7, 0, False, reason="bad password", client_reason="try again")])
    r = _run(_mgmt(), "client-deny 7 3 no")  # no such key waiting
    assert (r.lines, r.actions) == (["ERROR: client-deny command failed"], [])
    assert _run(_mgmt(), "client-deny 7 0").lines == [
        "ERROR: the 'client-deny' command requires at least 3 parameters"]
    assert _run(_mgmt(), "client-auth-nt 7 k").lines == ["ERROR: cannot parse KID"]


@pytest.mark.parametrize(("line", "reply", "action"), [
    ("signal SIGUSR1", "SUCCESS: signal SIGUSR1 thrown", SendSignal("SIGUSR1")),
    ("signal sighup", "SUCCESS: signal SIGHUP thrown", SendSignal("SIGHUP")),
    ("signal SIGTERM", "SUCCESS: signal SIGTERM thrown", SendSignal("SIGTERM")),
    ("signal SIGFOO", "ERROR: signal 'SIGFOO' is not a known signal type", None),
])
def test_signal(line: str, reply: str, action: SendSignal | None) -> None:
    r = _run(_mgmt(), line)
    assert r.lines == [reply]
    assert r.actions == ([action] if action else [])


def test_verb_and_mute() -> None:
    m = _mgmt(verb_level=3)
    assert _run(m, "verb").lines == ["SUCCESS: verb=3"]
    assert _run(m, "verb 5").lines == ["SUCCESS: verb level changed"]
    assert m.verb == 5
    assert _run(m, "verb x").lines == ["ERROR: verb level is out of range"]
    assert _run(m, "mute").lines == ["SUCCESS: mute=0"]


def test_state_and_log_history_and_realtime() -> None:
    m = _mgmt()
    assert m.add_state(StateEntry(NOW, "CONNECTED", "SUCCESS", "10.8.0.1")) == []
    assert _run(m, "state").lines == ["1700000000,CONNECTED,SUCCESS,10.8.0.1,,,,", "END"]
    assert _run(m, "state on").lines == ["SUCCESS: real-time state notification set to ON"]
    assert m.add_state(StateEntry(NOW + 1, "EXITING", "SIGTERM")) == [
        ">STATE:1700000001,EXITING,SIGTERM,,,,,"]
    assert m.add_log("1700000000,I,hello") == []
    assert _run(m, "log on all").lines == [
        "SUCCESS: real-time log notification set to ON", "1700000000,I,hello", "END"]
    assert m.add_log("1700000001,N,bye") == [">LOG:1700000001,N,bye"]
    assert _run(m, "log 0").lines == [
        "ERROR: log parameter must be 'on' or 'off' or some number n or 'all'"]
    assert _run(m, "log").lines == [
        "ERROR: the 'log' command requires at least 1 parameter"]
    assert _run(m, "echo all").lines == ["END"]  # nothing is echoed
    assert _run(m, "echo").lines == [
        "ERROR: the 'echo' command requires at least 1 parameter"]


def test_bytecount_per_client() -> None:
    m = _mgmt()
    assert m.next_timer() is None
    assert m.tick(SNAP, 1000.0) == []
    assert _run(m, "bytecount 5", now=1000.0).lines == ["SUCCESS: bytecount interval changed"]
    assert m.next_timer() == 1005.0
    assert m.tick(SNAP, 1004.0) == []
    assert m.tick(SNAP, 1005.0) == [">BYTECOUNT_CLI:4,100,200", ">BYTECOUNT_CLI:5,0,0",
                                    ">BYTECOUNT_CLI:6,7,9"]
    assert m.next_timer() == 1010.0
    assert _run(m, "bytecount 0").lines == ["SUCCESS: bytecount interval changed"]
    assert m.next_timer() is None
    assert m.tick(SNAP, 2000.0) == []


def test_bad_quoting_is_reported() -> None:
    assert _run(_mgmt(), 'kill "alice').lines == ['ERROR: no closing quotation (")']
