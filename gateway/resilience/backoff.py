"""Capped exponential backoff with full jitter, as a pure function.

"Full jitter" (a uniform draw between 0 and the capped exponential) spreads the retries of
many clients that failed together, so they do not come back in lock-step: the identity server
or a practice that just recovered sees a trickle, not a thundering herd. The random source is
passed in, so schedules are reproducible in tests.
"""

from __future__ import annotations

import random


def backoff_ceiling(failures: int, base: float, cap: float) -> float:
    """The largest wait after ``failures`` consecutive failures: base·2^(failures-1), capped."""
    if failures <= 0:
        return 0.0
    # Clamp the exponent: 2**1000 would overflow to inf long after reaching any cap.
    return min(cap, base * 2.0 ** min(failures - 1, 62))


def full_jitter(failures: int, base: float, cap: float, rng: random.Random) -> float:
    """A wait drawn uniformly from [0, backoff_ceiling(failures, base, cap)]."""
    return rng.uniform(0.0, backoff_ceiling(failures, base, cap))
