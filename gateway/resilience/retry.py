"""When to try again, and how long to wait first. Pure: no I/O, the clock and dice passed in.

What EXACT's answers mean (``docs/exact-facts.md`` section 3, README "Resilience"):

* **503**: the practice's server could not be reached. Retried, but for POST and PATCH only
  with an ``Idempotency-Key`` (a POST to ``.../Contact`` sends a patient an SMS: it must never
  be sent twice).
* **504**, a time-out, or a connection that failed after the request may have left: retried
  for idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE) only. The request may have been
  carried out, and EXACT documents no support for ``Idempotency-Key``, so a key proves
  nothing to it: a POST or PATCH is never sent again after these, whatever its headers.
* A connection that failed **before any byte was sent** (refused, TLS, connect time-out):
  retried whatever the method.
* **502** and everything else: never retried.

The wait is capped exponential backoff with full jitter, or the answer's ``Retry-After``
(seconds or an HTTP date) when that is longer; a ``Retry-After`` beyond its cap means "not
now", so no retry. No retry starts that could not finish inside the request's deadline.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from gateway.errors import GatewayError, UpstreamTimeout, UpstreamUnreachable
from gateway.outcome import RetryReason, SkipReason
from gateway.resilience.backoff import full_jitter

__all__ = ["RetryPolicy", "RetryReason", "SkipReason", "Verdict", "decide", "may_repeat"]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
# The least time worth starting an attempt with: below it, the retry cannot finish.
MIN_ATTEMPT_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff_base: float = 1.0
    backoff_max: float = 20.0
    retry_after_max: float = 300.0


@dataclass(frozen=True, slots=True)
class Verdict:
    """Retry after ``wait`` seconds, or not (``why`` says which rule stopped it)."""

    retry: bool
    wait: float = 0.0
    why: SkipReason | None = None


def retry_reason(status: int | None, error: GatewayError | None) -> RetryReason | None:
    """The retryable kind of an attempt's outcome (also the metric label), or None."""
    if error is not None:
        if isinstance(error, UpstreamUnreachable):
            return RetryReason.CONNECT_ERROR if not error.sent else RetryReason.CONNECTION_LOST
        if isinstance(error, UpstreamTimeout):
            return RetryReason.CONNECT_ERROR if error.connecting else RetryReason.TIMEOUT
        return None
    if status == 503:
        return RetryReason.STATUS_503
    if status == 504:
        return RetryReason.STATUS_504
    return None


def may_repeat(method: str, has_idempotency_key: bool, reason: str) -> bool:
    """Can this method be sent again after an outcome of this kind without duplicating it?"""
    if reason == RetryReason.CONNECT_ERROR:
        return True  # nothing left the gateway
    if method in IDEMPOTENT_METHODS:
        return True
    # POST/PATCH: only when the request provably did not reach the practice. EXACT's 503
    # says its relay could not reach the practice's server; the contract still asks the
    # caller to opt in with a key.
    return reason == RetryReason.STATUS_503 and has_idempotency_key


def parse_retry_after(value: str | None, now_unix: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date), or None."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now_unix)


def decide(
    policy: RetryPolicy,
    *,
    attempt: int,
    reason: str,
    method: str,
    has_idempotency_key: bool,
    retry_after: float | None,
    remaining: float,
    rng: random.Random,
) -> Verdict:
    """After attempt number ``attempt`` failed with ``reason``: retry, and after how long?"""
    if not may_repeat(method, has_idempotency_key, reason):
        return Verdict(False, why=SkipReason.NOT_IDEMPOTENT)
    if attempt >= policy.max_attempts:
        return Verdict(False, why=SkipReason.ATTEMPTS)
    wait = full_jitter(attempt, policy.backoff_base, policy.backoff_max, rng)
    if retry_after is not None:
        if retry_after > policy.retry_after_max:
            return Verdict(False, wait=retry_after, why=SkipReason.RETRY_AFTER)
        wait = max(wait, retry_after)
    if wait + MIN_ATTEMPT_SECONDS > remaining:
        return Verdict(False, wait=wait, why=SkipReason.DEADLINE)
    return Verdict(True, wait=wait)
