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
from collections.abc import Callable
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
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def query_all(directory: str = DEFAULT_DIR, request: dict[str, Any] | None = None,
              timeout: float = 3.0) -> list[dict[str, Any]]:
    """Ask every daemon's control socket; stale sockets are removed."""
    req = json.dumps(request or {"cmd": "status"}).encode() + b"\n"
    replies: list[dict[str, Any]] = []
    d = Path(directory)
    if not d.is_dir():
        return replies
    for path in sorted(d.glob("*.sock")):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(str(path))
            s.sendall(req)
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            reply = json.loads(buf)
            reply.setdefault("socket", str(path))
            replies.append(reply)
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(OSError):
                path.unlink()
        except (OSError, ValueError):
            continue
        finally:
            s.close()
    return replies
