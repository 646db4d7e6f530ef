"""``python -m tests.fuzz --inputs N [--seed S] [--target SUBSTRING] [--crashes DIR]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .runner import run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    p.add_argument("--inputs", type=int, default=100_000, help="mutated inputs in all")
    p.add_argument("--seed", type=int, default=1, help="same seed, same inputs")
    p.add_argument("--target", default=None, help="only targets whose name contains this")
    p.add_argument("--crashes", type=Path, default=None,
                   help="write every failing input to this directory")
    p.add_argument("--list", action="store_true", help="list the targets and exit")
    args = p.parse_args(argv)
    if args.list:
        from .registry import discover

        for name, t in sorted(discover().items()):
            print(f"{name}{' (stream)' if t.stream else ''}")
        return 0
    report = run(args.inputs, seed=args.seed, only=args.target, crashes=args.crashes)
    print(report.summary())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
