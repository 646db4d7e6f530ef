"""The server's management interface, socket side (tunconnector/ovpnserver_mgmt.py): the
real listener on a unix socket in a tmp dir, driven the way GUIs and scripts do.

The tunnel is a stub (snapshot(), server.sessions/close_session,
reload_client_configs): the real OpenVPNServerTunnel needs a TUN device and root. The
commands' wording is tested sans I/O in test_openvpn_mgmtserver.py.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunconnector.ovpnconfig import Management as Spec
from tunconnector.ovpnserver_mgmt import ServerManagementListener
from tunconnector.proto.openvpn.mgmt import GREETING
from tunconnector.proto.openvpn.serverstatus import ClientRow, ServerSnapshot


@dataclass
class FakeSession:
    peer_id: int
    common_name: str
    peer: str
    address: str
    username: str | None = None
    closed: bool = False


@dataclass
class FakeServer:
    sessions: dict[str, FakeSession] = field(default_factory=dict)
    ended: list[int] = field(default_factory=list)

    def close_session(self, session: FakeSession, now: float) -> None:
        session.closed = True
        self.ended.append(session.peer_id)


class FakeTunnel:
    def __init__(self) -> None:
        self.server = FakeServer({
            "a": FakeSession(0, "alice", "198.51.100.7:51234", "10.8.0.6"),
            "b": FakeSession(1, "bob", "203.0.113.9:1194", "10.8.0.10"),
        })
        self.reloads = 0

    def snapshot(self) -> ServerSnapshot:
        now = int(time.time())
        return ServerSnapshot(now, tuple(
            ClientRow(s.common_name, s.peer, s.address, bytes_received=100 + s.peer_id,
                      bytes_sent=200 + s.peer_id, connected_since=now - 60,
                      client_id=s.peer_id, peer_id=s.peer_id)
            for s in self.server.sessions.values() if not s.closed))

    def reload_client_configs(self) -> list[str]:
        self.reloads += 1
        return []


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r, self.w = reader, writer

    async def line(self) -> str:
        raw = await asyncio.wait_for(self.r.readline(), 5)
        assert raw.endswith(b"\r\n"), raw
        return raw.decode()[:-2]

    async def cmd(self, text: str, *, until: str | None = None) -> list[str]:
        self.w.write(text.encode() + b"\n")
        await self.w.drain()
        out = [await self.line()]
        while until is not None and out[-1] != until:
            out.append(await self.line())
        return out


async def _open(tmp_path: Path, password: str | None = None
                ) -> tuple[ServerManagementListener, FakeTunnel, list[str], Client]:
    tunnel = FakeTunnel()
    stops: list[str] = []
    settled: list[float] = []
    spec = Spec(str(tmp_path / "mgmt.sock"), None, password=password)
    mg = ServerManagementListener(spec, tunnel, settle=settled.append,
                                  terminate=lambda: stops.append("SIGTERM"))
    await mg.start()
    reader, writer = await asyncio.open_unix_connection(spec.address)
    return mg, tunnel, stops, Client(reader, writer)


async def test_commands_over_the_socket(tmp_path: Path) -> None:
    mg, tunnel, stops, c = await _open(tmp_path)
    try:
        assert await c.line() == GREETING
        ver = await c.cmd("version", until="END")
        assert ver[0].startswith("OpenVPN Version: OpenVPN 2.6") and \
            ver[1] == "Management Version: 5"
        assert await c.cmd("pid") == [f"SUCCESS: pid={os.getpid()}"]
        st = await c.cmd("status 2", until="END")
        assert st[0] == "TITLE,OpenVPN 2.6.14 tunconnector [openvpn-compatible server]"
        rows = [r.split(",") for r in st if r.startswith("CLIENT_LIST,")]
        assert [(r[1], r[2], r[3]) for r in rows] == [
            ("alice", "198.51.100.7:51234", "10.8.0.6"),
            ("bob", "203.0.113.9:1194", "10.8.0.10")]
        assert (await c.cmd("status", until="END"))[0] == "OpenVPN CLIENT LIST"
        assert await c.cmd("load-stats") == [
            "SUCCESS: nclients=2,bytesin=0,bytesout=0"]
        state = await c.cmd("state", until="END")
        assert state[0].split(",")[1:3] == ["CONNECTED", "SUCCESS"]
        # no management-client-auth: nothing is pending, as openvpn answers then
        assert await c.cmd("client-auth-nt 0 0") == ["ERROR: client-auth command failed"]
        assert await c.cmd("bytecount 1") == ["SUCCESS: bytecount interval changed"]
        ticks = {await c.line(), await c.line()}
        assert ticks == {">BYTECOUNT_CLI:0,100,200", ">BYTECOUNT_CLI:1,101,201"}
        assert await c.cmd("bytecount 0") == ["SUCCESS: bytecount interval changed"]
        tlog = logging.getLogger("tunconnector.test_server_mgmt")
        tlog.disabled, tlog.propagate = False, True
        tlog.setLevel(logging.INFO)
        assert await c.cmd("log on") == ["SUCCESS: real-time log notification set to ON"]
        tlog.warning("something odd")
        assert (await c.line()).endswith(",W,something odd")
        assert await c.cmd("log off") == ["SUCCESS: real-time log notification set to OFF"]
        assert (await c.cmd("log all", until="END"))[-2].endswith(",W,something odd")
        assert await c.cmd("signal SIGHUP") == ["SUCCESS: signal SIGHUP thrown"]
        assert tunnel.reloads == 1
        assert await c.cmd("signal SIGUSR2") == ["SUCCESS: signal SIGUSR2 thrown"]
        assert await c.cmd("signal SIGTERM") == ["SUCCESS: signal SIGTERM thrown"]
        assert stops == ["SIGTERM"]
        c.w.write(b"quit\n")
        assert await asyncio.wait_for(c.r.read(), 5) == b""
    finally:
        c.w.close()
        await mg.close()
    assert not (tmp_path / "mgmt.sock").exists()


async def test_kill_ends_the_session(tmp_path: Path) -> None:
    mg, tunnel, _, c = await _open(tmp_path)
    try:
        assert await c.line() == GREETING
        assert await c.cmd("kill bob") == ["SUCCESS: common name 'bob' found, 1 client(s) "
                                           "killed"]
        assert tunnel.server.ended == [1] and tunnel.server.sessions["b"].closed
        assert await c.cmd("kill bob") == ["ERROR: common name 'bob' not found"]
        assert await c.cmd("kill 198.51.100.7:51234") == [
            "SUCCESS: 1 client(s) at address 198.51.100.7:51234 killed"]
        assert tunnel.server.ended == [1, 0]
        st = await c.cmd("status 2", until="END")
        assert not [r for r in st if r.startswith("CLIENT_LIST,")]
        assert await c.cmd("client-kill 0") == ["ERROR: client-kill command failed"]
    finally:
        c.w.close()
        await mg.close()


async def test_client_kill_by_cid(tmp_path: Path) -> None:
    mg, tunnel, _, c = await _open(tmp_path)
    try:
        assert await c.line() == GREETING
        assert await c.cmd("client-kill 0 HALT") == ["SUCCESS: client-kill command succeeded"]
        assert tunnel.server.ended == [0] and not tunnel.server.sessions["b"].closed
    finally:
        c.w.close()
        await mg.close()


async def test_password_prompt(tmp_path: Path) -> None:
    mg, _, _, c = await _open(tmp_path, password="s3cret")
    try:
        c.w.write(b"wrong\n")
        assert await c.line() == "ENTER PASSWORD:ERROR: bad password"
        c.w.write(b"s3cret\n")
        assert await c.line() == "ENTER PASSWORD:SUCCESS: password is correct"
        assert await c.line() == GREETING
        assert await c.cmd("pid") == [f"SUCCESS: pid={os.getpid()}"]
    finally:
        c.w.close()
    # three wrong passwords: the connection is closed
    reader, writer = await asyncio.open_unix_connection(str(tmp_path / "mgmt.sock"))
    try:
        writer.write(b"a\nb\nc\npid\n")
        rest = await asyncio.wait_for(reader.read(), 5)
        assert rest == b"ENTER PASSWORD:ERROR: bad password\r\n" * 3
    finally:
        writer.close()
        await mg.close()


async def test_tcp_listener(tmp_path: Path) -> None:
    tunnel = FakeTunnel()
    mg = ServerManagementListener(Spec("127.0.0.1", 0), tunnel)
    await mg.start()
    try:
        assert mg.bound_port
        reader, writer = await asyncio.open_connection("127.0.0.1", mg.bound_port)
        c = Client(reader, writer)
        assert await c.line() == GREETING
        writer.write(b"exit\n")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
    finally:
        await mg.close()
