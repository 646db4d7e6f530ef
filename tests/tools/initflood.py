"""Flood a native responder with valid-mac1 handshake initiations from unknown keys.

    python initflood.py HOST PORT RESPONDER_PUBLIC_KEY TOTAL [DISTINCT] [SOURCES] [BIND]

Builds DISTINCT initiations (IKpsk2 first messages from random static keys, each with a
valid mac1: only the responder's public key is needed for that), prints a "ready" line,
waits for a line on stdin (go), then sends TOTAL datagrams cycling through them from
SOURCES sockets (source ports) as fast as it can. BIND, a comma-separated list of local
addresses, binds socket i to BIND[i % len(BIND)]: many source hosts, so a responder's
per-host rate limit alone does not bound its work. Every one of them costs a responder
without cookies a Diffie-Hellman: the key is only known after the DH. Prints one JSON
line: sent, seconds, cookie replies received, and when the flood started and ended
(``time.time()``, for overlap checks).
"""

from __future__ import annotations

import hashlib
import json
import select
import socket
import sys
import time

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tunconnector.keys import decode_key
from tunconnector.proto.framing import HEADER, VERSION, MsgType
from tunconnector.proto.noise import HandshakeState
from tunconnector.proto.secure import _INIT_PAYLOAD, PROLOGUE, _mac_key


def main() -> int:
    host, port, pub = sys.argv[1], int(sys.argv[2]), decode_key(sys.argv[3])
    total = int(sys.argv[4])
    distinct = int(sys.argv[5]) if len(sys.argv) > 5 else 500
    sources = int(sys.argv[6]) if len(sys.argv) > 6 else 20
    binds = sys.argv[7].split(",") if len(sys.argv) > 7 else []
    mac_key = _mac_key(pub, bytes(32))
    statics = [X25519PrivateKey.generate() for _ in range(max(1, distinct // 10))]
    msgs = []
    for i in range(distinct):
        hs = HandshakeState("IKpsk2", initiator=True, prologue=PROLOGUE,
                            static=statics[i % len(statics)], remote_static=pub,
                            psk=bytes(32))
        body = hs.write_message(_INIT_PAYLOAD.pack(time.time_ns() + i, 1, 1))
        data = HEADER.pack(VERSION, MsgType.HANDSHAKE_INIT, 0, 0, i + 1, 0) + body
        msgs.append(data + hashlib.blake2s(data, key=mac_key, digest_size=16).digest())
    socks = []
    for i in range(sources):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        if binds:
            s.bind((binds[i % len(binds)], 0))
        s.connect((host, port))
        socks.append(s)
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()
    cookies = 0
    started_at = time.time()
    last_reply_at = None
    start = time.monotonic()
    sent = 0
    while sent < total:
        s = socks[sent % sources]
        try:
            s.send(msgs[sent % distinct])
            sent += 1
        except BlockingIOError:
            select.select([], [s], [], 0.01)
        if sent % 200 == 0:
            for r in socks:
                try:
                    while r.recv(2048):
                        cookies += 1
                        last_reply_at = time.time()
                except (BlockingIOError, ConnectionRefusedError):
                    pass
    seconds = time.monotonic() - start
    ended_at = time.time()
    # the replies still on their way: until one came and 0.2 s passed without another
    # (bounded: 5 s)
    deadline = start + seconds + 5.0
    while time.monotonic() < deadline:
        ready, _, _ = select.select(socks, [], [], 0.2)
        if not ready and cookies:
            break
        for r in ready:
            try:
                while r.recv(2048):
                    cookies += 1
                    last_reply_at = time.time()
            except (BlockingIOError, ConnectionRefusedError):
                pass
    print(json.dumps({"sent": sent, "seconds": round(seconds, 3), "cookie_replies": cookies,
                      "started_at": started_at, "ended_at": ended_at,
                      "last_reply_at": last_reply_at}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
