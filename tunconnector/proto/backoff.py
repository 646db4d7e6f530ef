"""Exponential reconnect backoff with full jitter (AWS architecture blog style)."""

from __future__ import annotations

import random


class Backoff:
    def __init__(self, base: float = 0.2, cap: float = 5.0, rng: random.Random | None = None):
        self.base = base
        self.cap = cap
        self.attempt = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Delay before the next attempt: uniform in [base/2, min(cap, base*2^n)]."""
        ceiling = min(self.cap, self.base * (2 ** self.attempt))
        self.attempt += 1
        return self._rng.uniform(min(self.base / 2, ceiling), ceiling)

    def reset(self) -> None:
        self.attempt = 0
