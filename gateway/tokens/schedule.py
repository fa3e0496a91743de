"""The token schedule's values, pure and immutable: when a token stops being usable
(:func:`safety_margin`), the numbers that decide when to refresh and how long to back off
(:class:`TokenPolicy`), a token as the gateway holds it (:class:`AccessToken`) and as the
identity server issued it (:class:`Grant`).

Kept apart from :class:`gateway.tokens.source.TokenSource` (the state and the background loop
that act on them) so the identity-server client, the settings and the policies can name them
without importing asyncio machinery, and so they are tested as plain arithmetic.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from gateway.resilience.backoff import backoff_ceiling, full_jitter

SAFETY_MARGIN_SECONDS = 30.0
SHORT_LIFETIME_SECONDS = 300.0


def safety_margin(lifetime: float) -> float:
    """Seconds before expiry from which a token is no longer used."""
    if lifetime < SHORT_LIFETIME_SECONDS:
        return lifetime / 10
    return SAFETY_MARGIN_SECONDS


@dataclass(frozen=True, slots=True)
class TokenPolicy:
    """The numbers of the token schedule (README, "Tokens", says why each is what it is)."""

    refresh_fraction: float = 0.8
    refresh_jitter: float = 0.05
    retry_base: float = 1.0
    retry_cap: float = 60.0
    refused_retry_base: float = 30.0
    refused_retry_cap: float = 300.0
    min_retry: float = 0.5
    # A 401 for a token younger than this does not cause another refresh: EXACT refusing a
    # fresh token is a configuration problem, and each caller would otherwise cost a fetch.
    unauthorized_refresh_interval: float = 5.0
    secret_poll: float = 5.0
    # Token requests never start closer together than this, whatever happens.
    min_fetch_interval: float = 2.0
    # A shorter lifetime is scheduled as if it were this long (the docstring of
    # :mod:`gateway.tokens.source` says why).
    min_lifetime: float = 30.0

    def refresh_delay(self, lifetime: float, rng: random.Random) -> float:
        low = self.refresh_fraction - self.refresh_jitter
        high = self.refresh_fraction + self.refresh_jitter
        return lifetime * rng.uniform(low, high)

    def retry_delay(self, failures: int, refused: bool, rng: random.Random) -> float:
        base, cap = (
            (self.refused_retry_base, self.refused_retry_cap)
            if refused
            else (self.retry_base, self.retry_cap)
        )
        return max(self.min_retry, full_jitter(failures, base, cap, rng))

    def retry_ceiling(self, failures: int, refused: bool) -> float:
        """The longest :meth:`retry_delay` can be after ``failures`` failures."""
        if refused:
            ceiling = backoff_ceiling(failures, self.refused_retry_base, self.refused_retry_cap)
        else:
            ceiling = backoff_ceiling(failures, self.retry_base, self.retry_cap)
        return max(self.min_retry, ceiling)


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str = field(repr=False)
    generation: int
    obtained_at: float  # monotonic clock
    lifetime: float
    expires_at_unix: float

    @property
    def usable_until(self) -> float:
        return self.obtained_at + self.lifetime - safety_margin(self.lifetime)

    def usable(self, now: float) -> bool:
        return now < self.usable_until


@dataclass(frozen=True, slots=True)
class Grant:
    """A token as the identity server issued it."""

    value: str = field(repr=False)
    lifetime: float
