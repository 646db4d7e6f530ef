"""Many hub clients in one process, without TUN devices: sans-I/O endpoints on UDP sockets.

    python -m bench.hubclients KEYS.json HUB_PUBLIC_KEY HUB_HOST PORT FIRST COUNT

Each client is a :class:`NativeEndpoint` with its own initiating :class:`SecureChannel`
and its own UDP socket, bound to its own loopback address (127.1.x.y: the hub rate-limits
initiations per source address under load, as a real fleet of sites would look).
Keepalives run as in the daemon (10 s). Commands on stdin, one per line:

- ``storm SECONDS``: every client rekeys again as soon as its last handshake completed,
  for SECONDS; prints ``{"storm": completed handshakes}``;
- ``quit``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time
from typing import Any

from tunconnector.keys import decode_key
from tunconnector.proto.native import NativeEndpoint
from tunconnector.proto.secure import SecureChannel


class Client:
    __slots__ = ("sock", "native", "secure", "timer", "loop", "storm", "done", "hub")

    def __init__(self, loop: asyncio.AbstractEventLoop, priv: bytes, hub_pub: bytes,
                 local: str, hub: tuple[str, int]) -> None:
        self.loop = loop
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.sock.bind((local, 0))
        self.hub = hub  # not connect(): the hub may answer from another local address
        self.secure = SecureChannel(initiator=True, private_key=priv, peer_public_key=hub_pub,
                                    stale_after=15.0)
        self.native = NativeEndpoint(keepalive=10.0, dead_after=60.0, max_frame=1500,
                                     secure=self.secure)
        self.timer: asyncio.TimerHandle | None = None
        self.storm = False
        self.done = 0
        loop.add_reader(self.sock.fileno(), self.readable)

    def start(self) -> None:
        self.native.start(self.loop.time(), initiator=True)
        self.flush()

    def readable(self) -> None:
        now = self.loop.time()
        while True:
            try:
                data, _ = self.sock.recvfrom(4096)
            except (BlockingIOError, ConnectionRefusedError):
                break
            before = self.secure.handshakes
            self.native.decode(data, now)
            if self.secure.handshakes != before:
                self.done += 1
                if self.storm:
                    self.secure.force_rekey(now)
        self.flush()

    def flush(self) -> None:
        for m in self.native.messages_to_send():
            try:
                self.sock.sendto(m, self.hub)
            except OSError:
                pass
        while self.native.next_event() is not None:
            pass
        while self.secure.next_event() is not None:
            pass
        t = self.native.get_timer()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if t is not None:
            self.timer = self.loop.call_at(max(t, self.loop.time()), self.fire)

    def fire(self) -> None:
        self.timer = None
        self.native.handle_timer(self.loop.time())
        self.flush()


async def run(argv: list[str]) -> int:
    keys_file, hub_pub_b64, host, port, first, count = argv[:6]
    keys = json.loads(open(keys_file).read())
    hub_pub = decode_key(hub_pub_b64)
    loop = asyncio.get_running_loop()
    clients: list[Client] = []
    for i in range(int(first), int(first) + int(count)):
        local = f"127.1.{i // 250}.{i % 250 + 1}"
        clients.append(Client(loop, decode_key(keys[i]), hub_pub, local, (host, int(port))))
    for c in clients:
        c.start()
        await asyncio.sleep(0)
    print(json.dumps({"started": len(clients)}), flush=True)
    if os.environ.get("HUBCLIENTS_DEBUG"):
        async def report() -> None:
            import collections
            while True:
                await asyncio.sleep(5)
                drops: collections.Counter[str] = collections.Counter()
                for c in clients:
                    drops.update(c.secure.drops)
                    drops.update(c.native.drops)
                up = sum(1 for c in clients if c.secure.established)
                print(f"{time.strftime('%H:%M:%S')} first={first} established={up} "
                      f"drops={dict(drops)}", file=sys.stderr, flush=True)
        loop.create_task(report())
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().split()
        if not line or line[0] == "quit":
            break
        if line[0] == "storm":
            before = sum(c.done for c in clients)
            now = loop.time()
            for c in clients:
                c.storm = True
                c.secure.force_rekey(now)
                c.flush()
            await asyncio.sleep(float(line[1]))
            for c in clients:
                c.storm = False
            out: dict[str, Any] = {"storm": sum(c.done for c in clients) - before}
            print(json.dumps(out), flush=True)
    return 0


def main() -> int:
    try:
        import uvloop

        return int(uvloop.run(run(sys.argv[1:])))
    except ImportError:  # pragma: no cover
        return asyncio.run(run(sys.argv[1:]))


if __name__ == "__main__":
    sys.exit(main())
