"""What one attempt to EXACT came to: one immutable value, built at the upstream boundary.

:mod:`gateway.upstream` turns everything the HTTP client can report (a response head, or any
of its errors while connecting, sending or waiting) into an :class:`Outcome`; the defences
(:meth:`gateway.resilience.Resilience.decide`) read nothing else. So the question "what
happened to this attempt" is answered once, in one vocabulary, and the rules that act on it
are pure functions of this value, the request's state and the clock.

The names of what the defences make of an outcome live here too (:class:`RetryReason`,
:class:`SkipReason`): they are the label values of ``retries_total`` and
``retries_skipped_total``, and their help texts list them.

``sent`` says whether any byte of the request may have reached EXACT: only an outcome with
``sent`` False proves that a POST or PATCH was not delivered.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from gateway.errors import (
    BadRequest,
    DeadlineExceeded,
    GatewayError,
    UpstreamBadResponse,
    UpstreamTimeout,
    UpstreamUnreachable,
)

# Statuses of EXACT that prove the request never reached the practice: the relay refused it
# (401) or could not reach the practice's server (503).
NOT_DELIVERED_STATUSES = frozenset({401, 503})


class OutcomeKind(enum.StrEnum):
    """The kinds of attempt outcome (also the ``outcome`` label of failed attempts)."""

    RESPONSE = "response"  # a final response head arrived
    CONNECT_FAILED = "connect_failed"  # refused, DNS, TLS, proxy refusal: nothing sent
    CONNECT_TIMEOUT = "connect_timeout"  # no connection in time: nothing sent
    LOST_AFTER_SEND = "lost_after_send"  # the connection broke once bytes had left
    NO_ANSWER_IN_TIME = "no_answer_in_time"  # no head within the attempt time-out
    CUT_BY_DEADLINE = "cut_by_deadline"  # no head before the caller's own deadline
    BAD_RESPONSE = "bad_response"  # EXACT's bytes are not a usable HTTP/1.1 answer
    INVALID_REQUEST = "invalid_request"  # the caller's request cannot be sent as it is


class RetryReason(enum.StrEnum):
    """Why an attempt is repeated: the ``reason`` label of ``retries_total``."""

    STATUS_503 = "status_503"  # EXACT could not reach the practice's server
    STATUS_504 = "status_504"  # the practice's server did not answer EXACT in time
    TIMEOUT = "timeout"  # no answer within the attempt time-out (may have been delivered)
    CONNECT_ERROR = "connect_error"  # no connection: refused, TLS, time-out; nothing sent
    CONNECTION_LOST = "connection_lost"  # the connection broke after sending


class SkipReason(enum.StrEnum):
    """Why a retryable outcome was not retried: the ``reason`` label of
    ``retries_skipped_total``."""

    BUDGET = "budget"  # retries across all requests are at their budget
    DEADLINE = "deadline"  # the retry could not finish inside the request's deadline
    RETRY_AFTER = "retry_after"  # EXACT asked for a wait beyond RETRY_AFTER_MAX_SECONDS
    ATTEMPTS = "attempts"  # RETRY_MAX_ATTEMPTS reached
    NOT_IDEMPOTENT = "not_idempotent"  # a POST/PATCH that may have been delivered
    BODY_STREAMED = "body_streamed"  # the body was streamed once and cannot be sent again
    BREAKER = "breaker"  # this attempt opened a breaker


def help_list(reasons: type[enum.StrEnum]) -> str:
    """The label values of an enum, for a metric's help text."""
    return ", ".join(member.value for member in reasons)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One attempt's result. ``response`` is the client's response object (kind RESPONSE)."""

    kind: OutcomeKind
    sent: bool
    status: int = 0
    retry_after: str | None = None  # EXACT's Retry-After header, raw
    response: Any = None
    detail: str = ""

    @classmethod
    def answered(cls, response: Any, status: int, retry_after: str | None) -> Outcome:
        return cls(OutcomeKind.RESPONSE, True, status, retry_after, response)

    @property
    def maybe_delivered(self) -> bool:
        """Whether the practice may have acted on the request (so a POST must not repeat)."""
        if self.kind is OutcomeKind.RESPONSE:
            return self.status not in NOT_DELIVERED_STATUSES
        return self.sent

    @property
    def failure(self) -> str | None:
        """The gateway reason of a failed attempt (None for a response): for a span."""
        if self.kind is OutcomeKind.RESPONSE:
            return None
        return _ERRORS[self.kind][0].reason

    @property
    def label(self) -> str:
        """The ``upstream_attempts_total`` outcome: the status, or the gateway's reason."""
        if self.kind is OutcomeKind.RESPONSE:
            return str(self.status)
        return _ERRORS[self.kind][0].reason

    def error(self) -> GatewayError:
        """The gateway error a caller hears when this failure is the last word."""
        if self.kind is OutcomeKind.RESPONSE:
            raise ValueError("a response is not an error")
        cls, detail = _ERRORS[self.kind]
        if cls is UpstreamTimeout:
            return UpstreamTimeout(detail, connecting=self.kind is OutcomeKind.CONNECT_TIMEOUT)
        if cls is UpstreamUnreachable:
            return UpstreamUnreachable(detail.format(self.detail), sent=self.sent)
        return cls(detail.format(self.detail))


# Each failure's error class and its detail ("{}" takes the outcome's own detail).
_ERRORS: dict[OutcomeKind, tuple[type[GatewayError], str]] = {
    OutcomeKind.CONNECT_FAILED: (UpstreamUnreachable, "could not connect to the EXACT API"),
    OutcomeKind.CONNECT_TIMEOUT: (UpstreamTimeout, "could not connect to the EXACT API in time"),
    OutcomeKind.LOST_AFTER_SEND: (
        UpstreamUnreachable,
        "the connection to the EXACT API failed ({})",
    ),
    OutcomeKind.NO_ANSWER_IN_TIME: (
        UpstreamTimeout,
        "the EXACT API did not answer within the time-out",
    ),
    OutcomeKind.CUT_BY_DEADLINE: (
        DeadlineExceeded,
        "the request's deadline passed before EXACT answered",
    ),
    OutcomeKind.BAD_RESPONSE: (
        UpstreamBadResponse,
        "the EXACT API's answer could not be used ({})",
    ),
    OutcomeKind.INVALID_REQUEST: (BadRequest, "the request cannot be forwarded unchanged ({})"),
}
