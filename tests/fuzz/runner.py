"""Mutation fuzzer over the registered targets (deterministic for a given seed)."""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tunconnector.errors import RemoteProtocolError

from .registry import Target, discover

MAX_LEN = 4096  # mutated inputs are cut here (seeds may be longer: GSO super-packets)
BYTEWISE_MAX = 2048  # a stream input is fed one byte per chunk up to here, then in runs
INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x01", b"\x00\x00", b"\xff\xff",
               b"\x7f\xff", b"\x80\x00", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff",
               b"\x7f\xff\xff\xff", b"\x00\x00\xff\xff", b"\x00\x01\x11\x70"]


@dataclass
class Failure:
    target: str
    data: bytes
    how: str
    error: str


@dataclass
class Report:
    inputs: int = 0
    calls: int = 0
    seconds: float = 0.0
    per_target: dict[str, Counter[str]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.inputs} inputs, {self.calls} parser calls, {self.seconds:.1f} s, "
                 f"{len(self.failures)} failures"]
        for name, c in sorted(self.per_target.items()):
            top = ", ".join(f"{k} {v}" for k, v in c.most_common(4))
            lines.append(f"  {name:<28} {top}")
        for f in self.failures[:20]:
            lines.append(f"FAIL {f.target} ({f.how}) {f.error}\n  input {f.data[:200].hex()}")
        return "\n".join(lines)


def mutate(rng: random.Random, data: bytes, pool: Sequence[bytes]) -> bytes:
    buf = bytearray(data)
    if rng.random() < 0.05 or not buf:
        return rng.randbytes(rng.randrange(0, 200))
    for _ in range(rng.choice((1, 1, 2, 3, 4))):
        op = rng.randrange(9)
        n = len(buf)
        if op == 0 and n:  # flip a bit
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # a random byte
            buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            i = rng.randrange(n + 1)
            buf[i:i] = rng.randbytes(rng.choice((1, 2, 4, 16, 100)))
        elif op == 3 and n:  # delete a range
            i = rng.randrange(n)
            del buf[i : i + rng.choice((1, 2, 4, 16, n))]
        elif op == 4 and n:  # duplicate a range
            i = rng.randrange(n)
            buf[i:i] = buf[i : i + rng.choice((1, 4, 16, 64))]
        elif op == 5 and n:  # truncate
            del buf[rng.randrange(n) :]
        elif op == 6 and pool:  # splice with another seed
            other = rng.choice(pool)
            i = rng.randrange(n + 1)
            j = rng.randrange(len(other) + 1)
            buf = buf[:i] + other[j:]
        elif op == 7 and n:  # an interesting value (lengths, signs, limits)
            v = rng.choice(INTERESTING)
            i = rng.randrange(n)
            buf[i : i + len(v)] = v
        elif op == 8 and n:  # nudge a byte (counters, lengths off by one)
            i = rng.randrange(n)
            buf[i] = (buf[i] + rng.choice((1, -1, 16, -16))) & 0xFF
    return bytes(buf[:MAX_LEN])


def _chunks(rng: random.Random, data: bytes) -> list[bytes]:
    """One byte per chunk up to BYTEWISE_MAX, then random runs."""
    head = [data[i : i + 1] for i in range(min(len(data), BYTEWISE_MAX))]
    pos, tail = BYTEWISE_MAX, []
    while pos < len(data):
        step = rng.randrange(1, 4096)
        tail.append(data[pos : pos + step])
        pos += step
    return head + tail


def _call(target: Target, arg: object, data: bytes, how: str, report: Report,
          counts: Counter[str]) -> None:
    report.calls += 1
    try:
        target.parse(arg)
    except RemoteProtocolError as exc:
        counts[f"rejected:{exc.reason}"] += 1
    except Exception as exc:  # the invariant: nothing else may come out
        counts["FAILED"] += 1
        report.failures.append(Failure(target.name, data, how,
                                       "".join(traceback.format_exception_only(exc)).strip()
                                       + "\n" + traceback.format_exc(limit=-3)))
    else:
        counts["ok"] += 1


def run(inputs: int, *, seed: int = 1, only: str | None = None,
        crashes: Path | None = None, max_failures: int = 100) -> Report:
    # parsers log what they refuse, thousands of lines here; the level is given back
    # afterwards (a test run goes on in the same process)
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        return _run(inputs, seed=seed, only=only, crashes=crashes, max_failures=max_failures)
    finally:
        logging.disable(previous)


def _run(inputs: int, *, seed: int, only: str | None, crashes: Path | None,
         max_failures: int) -> Report:
    targets = [t for n, t in sorted(discover().items()) if only is None or only in n]
    if not targets:
        raise SystemExit(f"no fuzz target matches {only!r}")
    rng = random.Random(seed)
    report = Report()
    pools = {t.name: [bytes(s) for s in t.seeds()] for t in targets}
    start = time.monotonic()
    for t in targets:  # every seed whole, and every one of its prefixes
        counts = report.per_target.setdefault(t.name, Counter())
        for s in pools[t.name]:
            for cut in range(len(s) + 1) if len(s) <= 256 else (len(s), 0, len(s) // 2):
                arg = [s[:cut]] if t.stream else s[:cut]
                _call(t, arg, s[:cut], "seed prefix", report, counts)
    for i in range(inputs):
        t = targets[i % len(targets)]
        pool = pools[t.name]
        data = mutate(rng, rng.choice(pool), pool) if pool else rng.randbytes(
            rng.randrange(0, 300))
        counts = report.per_target[t.name]
        if t.stream:
            _call(t, [data], data, "whole", report, counts)
            _call(t, _chunks(rng, data), data, "byte by byte", report, counts)
        else:
            _call(t, data, data, "whole", report, counts)
            if data:
                cut = rng.randrange(len(data))
                _call(t, data[:cut], data[:cut], "truncated", report, counts)
        report.inputs += 1
        if len(report.failures) >= max_failures:
            break
    report.seconds = time.monotonic() - start
    if crashes is not None and report.failures:
        crashes.mkdir(parents=True, exist_ok=True)
        for n, f in enumerate(report.failures):
            (crashes / f"{f.target}-{n}.bin").write_bytes(f.data)
    return report
