"""Sandbox configuration: one frozen object, built once and handed to the app factory.

Clocks are injected here so that token expiry and request-log timings can be driven by a fake
clock in tests without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Knobs of one sandbox instance; the defaults suit demos and local development."""

    token_lifetime_s: int = 3600
    page_budget_bytes: int = 16384
    slow_latency_s: float = 2.0
    flaky_failure_rate: float = 0.3
    seed: int = 20240501
    signing_key: bytes | None = None
    clock: Callable[[], float] = field(default=time.time)
    monotonic: Callable[[], float] = field(default=time.monotonic)

    def __post_init__(self) -> None:
        # Fail loudly at construction rather than with a confusing error mid-request.
        if self.token_lifetime_s <= 0:
            raise ValueError(f"token_lifetime_s must be positive, got {self.token_lifetime_s}")
        if self.page_budget_bytes <= 0:
            raise ValueError(f"page_budget_bytes must be positive, got {self.page_budget_bytes}")
        if self.slow_latency_s < 0:
            raise ValueError(f"slow_latency_s must be >= 0, got {self.slow_latency_s}")
        if not 0.0 <= self.flaky_failure_rate <= 1.0:
            raise ValueError(
                f"flaky_failure_rate must be within [0, 1], got {self.flaky_failure_rate}"
            )
        if self.signing_key is not None and len(self.signing_key) < 16:
            raise ValueError("signing_key must be at least 16 bytes")
