"""The fuzz target registry: a parser, its seed inputs, and whether it eats a stream."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """``parse(data)`` for a datagram parser; ``parse(chunks)`` for a stream decoder
    (the runner feeds each input as one chunk and again one byte per chunk). ``seeds``
    returns valid inputs the mutator starts from (deeper code than random bytes reach)."""

    name: str
    parse: Callable[..., object]
    seeds: Callable[[], Iterable[bytes]]
    stream: bool = False


TARGETS: dict[str, Target] = {}


def register(name: str, *, seeds: Callable[[], Iterable[bytes]] = lambda: (),
             stream: bool = False) -> Callable[[Callable[..., object]], Callable[..., object]]:
    """Decorator: ``@register("native.decode", seeds=...)`` over ``def parse(data)``."""

    def deco(fn: Callable[..., object]) -> Callable[..., object]:
        if name in TARGETS:
            raise ValueError(f"fuzz target {name!r} registered twice")
        TARGETS[name] = Target(name, fn, seeds, stream)
        return fn

    return deco


def discover() -> dict[str, Target]:
    """Import every module of ``tests.fuzz.targets`` (each registers its parsers).

    A module whose product code has not landed yet may raise ImportError; it is skipped
    so the others still run."""
    from . import targets

    for info in pkgutil.iter_modules(targets.__path__):
        try:
            importlib.import_module(f"{targets.__name__}.{info.name}")
        except ImportError as exc:  # pragma: no cover - a parser not landed yet
            print(f"fuzz: skipping targets.{info.name}: {exc}")
    return TARGETS
