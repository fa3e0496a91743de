"""The retry budget: retries may add at most a fraction of live traffic, plus a small floor.

Without it, a broad outage (every practice answering 503) would turn each caller request into
``max_attempts`` upstream attempts exactly when EXACT can least afford them. With it, retries
over the last ``window`` seconds stay below ``ratio`` x requests (or ``floor``, so a quiet
gateway can still retry a few). Counted in one-second slices: constant memory, pure, clock
passed in.
"""

from __future__ import annotations

import math


class RetryBudget:
    def __init__(self, ratio: float, floor: int, window: float = 10.0) -> None:
        self._ratio = ratio
        self._floor = floor
        self._slices = max(1, math.ceil(window))
        self._second = [-1] * self._slices
        self._requests = [0] * self._slices
        self._retries = [0] * self._slices

    def _slot(self, now: float) -> int:
        second = int(now)
        slot = second % self._slices
        if self._second[slot] != second:
            self._second[slot] = second
            self._requests[slot] = 0
            self._retries[slot] = 0
        return slot

    def _totals(self, now: float) -> tuple[int, int]:
        oldest = int(now) - self._slices
        requests = retries = 0
        for second, n, r in zip(self._second, self._requests, self._retries, strict=True):
            if second > oldest:
                requests += n
                retries += r
        return requests, retries

    def record_request(self, now: float) -> None:
        """A caller request was forwarded (its first attempt)."""
        self._requests[self._slot(now)] += 1

    def try_spend(self, now: float) -> bool:
        """Take one retry from the budget, or say there is none left."""
        requests, retries = self._totals(now)
        if retries >= max(self._floor, self._ratio * requests):
            return False
        self._retries[self._slot(now)] += 1
        return True

    def state(self, now: float) -> dict[str, float]:
        requests, retries = self._totals(now)
        return {
            "requests": requests,
            "retries": retries,
            "allowed": max(self._floor, self._ratio * requests),
        }
