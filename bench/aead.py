"""AEAD cost per packet and per 64 KiB super-packet, both ciphers: ``python -m bench.aead``.

Measures, for ChaCha20-Poly1305 and AES-256-GCM:

- ``raw``: the ``cryptography`` call alone (``encrypt_into`` / ``decrypt_into`` into a
  preallocated buffer, 16-byte header as associated data);
- ``bytes``: the allocating ``encrypt`` / ``decrypt`` API, for comparison;
- ``keypair``: :meth:`Keypair.seal_into` + :meth:`Keypair.open_into` in place (header
  packing, nonce, replay window): what the data path pays per message.

Prints microseconds per operation (best of 5 runs) and MB/s of payload.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from tunconnector.proto.framing import HEADER_LEN, MsgType
from tunconnector.proto.session import TAG_LEN, Keypair, nonce

SIZES = {"packet-1400": 1400, "super-64k": 65536}


def _time(fn: Callable[[], object], min_time: float, rounds: int = 5) -> float:
    """Seconds per call: best of ``rounds`` timed runs (the CPU is shared, take the
    least disturbed run), each repeating ``fn`` for about ``min_time / rounds``."""
    for _ in range(10):
        fn()
    best = float("inf")
    for _ in range(rounds):
        n, total, batch = 0, 0.0, 16
        start = time.perf_counter()
        while total < min_time / rounds:
            for _ in range(batch):
                fn()
            n += batch
            total = time.perf_counter() - start
            batch *= 2
        best = min(best, total / n)
    return best


def bench_cipher(cipher: str, size: int, min_time: float) -> dict[str, tuple[float, float]]:
    key = os.urandom(32)
    aead = ChaCha20Poly1305(key) if cipher == "chacha20-poly1305" else AESGCM(key)
    header = bytes(HEADER_LEN)
    pt = os.urandom(size)
    ct = aead.encrypt(nonce(0), pt, header)
    out_ct = bytearray(size + TAG_LEN)
    out_pt = bytearray(size)
    n0 = nonce(0)
    res: dict[str, tuple[float, float]] = {}

    res["raw encrypt_into"] = _per(
        _time(lambda: aead.encrypt_into(n0, pt, header, out_ct), min_time), size)
    res["raw decrypt_into"] = _per(
        _time(lambda: aead.decrypt_into(n0, ct, header, out_pt), min_time), size)
    res["bytes encrypt"] = _per(_time(lambda: aead.encrypt(n0, pt, header), min_time), size)
    res["bytes decrypt"] = _per(_time(lambda: aead.decrypt(n0, ct, header), min_time), size)

    k1, k2 = os.urandom(32), os.urandom(32)
    tx = Keypair(local_index=1, remote_index=2, send_key=k1, recv_key=k2, initiator=True,
                 created=0.0, cipher=cipher)
    rx = Keypair(local_index=2, remote_index=1, send_key=k2, recv_key=k1, initiator=False,
                 created=0.0, cipher=cipher)
    buf = bytearray(HEADER_LEN + size + TAG_LEN)
    mv = memoryview(buf)
    state = {"c": 0}

    def seal_open() -> None:
        tx.seal_into(buf, size, mtype=MsgType.DATA)
        rx.open_into(mv, state["c"], None)
        state["c"] += 1

    res["keypair seal+open in place"] = _per(_time(seal_open, min_time), size)
    return res


def _per(seconds: float, size: int) -> tuple[float, float]:
    return seconds * 1e6, size / seconds / 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.aead", description=__doc__)
    ap.add_argument("--time", type=float, default=0.3, help="seconds per measurement")
    args = ap.parse_args(argv)
    print(f"{'cipher':<18} {'size':<12} {'operation':<28} {'us/op':>9} {'MB/s':>9}")
    for cipher in ("chacha20-poly1305", "aes-256-gcm"):
        for label, size in SIZES.items():
            for op, (us, mbs) in bench_cipher(cipher, size, args.time).items():
                print(f"{cipher:<18} {label:<12} {op:<28} {us:9.2f} {mbs:9.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
