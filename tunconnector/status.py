"""Control socket: every daemon publishes its tunnels' status under /run/tunconnector/.

One Unix stream socket per daemon (``<pid>.sock``); a client writes one JSON request line
(``{"cmd": "status"}``) and reads one JSON reply line. ``tunconnector status`` asks every
socket in the directory and removes the ones whose daemon is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .errors import TunconnectorError

DEFAULT_DIR = "/run/tunconnector"


class ControlServer:
    def __init__(self, directory: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / f"{os.getpid()}.sock"
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        try:
            self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
            os.chmod(self.path, 0o660)
        except OSError as exc:
            raise TunconnectorError(
                f"cannot create control socket {self.path}: {exc.strerror}"
            ) from exc

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            try:
                req = json.loads(line or b"{}")
                if not isinstance(req, dict):
                    raise ValueError("request must be an object")
                reply = self._handler(req)
                if asyncio.iscoroutine(reply):
                    reply = await reply
            except (ValueError, TunconnectorError) as exc:
                reply = {"error": str(exc)}
            writer.write(json.dumps(reply, default=str).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):  # the socket file goes only once unused
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        # after a privilege drop the directory may still be root's (no CAP_CHOWN, as in a
        # container with --cap-drop ALL): the socket stays, and query_all() removes it later
        with contextlib.suppress(OSError):
            self.path.unlink()


#: how long a daemon may take to answer before it is reported unresponsive; a live
#: daemon answers from its event loop in milliseconds, but a loaded machine can stall it;
#: a stopped one is recognised at once, whatever this is
DEFAULT_TIMEOUT = 3.0


def query_all(directory: str = DEFAULT_DIR, request: dict[str, Any] | None = None,
              timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    """Ask every daemon's control socket (all at once); stale sockets are removed.

    A daemon that holds its socket but does not answer (stopped with SIGSTOP, hung) is
    not skipped: it is reported as ``{"pid", "socket", "error", "unresponsive": true}``
    so the caller can name it. A stopped one is recognised at once from its process
    state (the peer's pid comes from the socket itself, SO_PEERCRED), without waiting.
    """
    req = json.dumps(request or {"cmd": "status"}).encode() + b"\n"
    d = Path(directory)
    if not d.is_dir():
        return []
    paths = sorted(d.glob("*.sock"))
    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        answers = list(pool.map(lambda p: _ask(p, req, timeout), paths))
    return [a for a in answers if a is not None]


def _ask(path: Path, req: bytes, timeout: float) -> dict[str, Any] | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    pid: int | None = None
    try:
        try:
            s.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(OSError):
                path.unlink()  # its daemon is gone
            return None
        except OSError as exc:  # a full backlog (timeout), permissions
            return _unresponsive(path, None, f"cannot connect: {exc.strerror or exc}")
        pid = _peer_pid(s)
        state = _proc_state(pid)
        if state in ("T", "t"):
            return _unresponsive(path, pid, "stopped (SIGSTOP or a debugger), not answering")
        if state == "Z":
            return _unresponsive(path, pid, "exited (zombie), not answering")
        try:
            s.sendall(req)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except TimeoutError:
            return _unresponsive(path, pid, f"no answer within {timeout:g}s")
        except OSError as exc:
            return _unresponsive(path, pid, f"control socket failed: {exc.strerror or exc}")
        try:
            reply = json.loads(buf)
            if not isinstance(reply, dict):
                raise ValueError("not an object")
        except ValueError:
            return _unresponsive(path, pid, "answered something that is not a status reply")
        reply.setdefault("socket", str(path))
        return reply
    finally:
        s.close()


def _unresponsive(path: Path, pid: int | None, why: str) -> dict[str, Any]:
    if pid is None and path.stem.isdigit():
        pid = int(path.stem)  # the daemon names its socket after its pid
    return {"pid": pid, "socket": str(path), "error": why, "unresponsive": True,
            "tunnels": []}


def _peer_pid(s: socket.socket) -> int | None:
    try:
        pid, _uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET,
                                                            socket.SO_PEERCRED, 12))
    except OSError:
        return None
    return pid or None


def _proc_state(pid: int | None) -> str | None:
    """One letter of /proc/PID/stat (R, S, T stopped, Z zombie...), None if unknown."""
    if pid is None:
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[0] if ")" in stat else None
