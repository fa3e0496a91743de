"""What one caller request has been through, and what it leaves behind once answered.

An :class:`Exchange` collects a request's facts as the proxy handles it (route, practice,
attempts, status, error, what the resilience rules need to know); the :class:`Observer`
turns a finished exchange into its traces: the request metrics, the status page's history and
the access line (:mod:`gateway.access_log`). The observer resolves each metric child once per
label combination (labels are bounded: method, route template, status, reason), so a request
pays for one dictionary lookup and plain increments (:mod:`gateway.tally`), not for the
client library's label resolution and locks.
"""

from __future__ import annotations

import itertools
import re
import secrets
from dataclasses import dataclass

from gateway.access_log import AccessLog
from gateway.history import History
from gateway.idempotency import StoredAnswer
from gateway.metrics import Metrics
from gateway.routes import OTHER_ROUTE
from gateway.tally import Bins, Count
from gateway.tracing import NO_TRACE, RequestSpan

# A caller's request id is reused only when it is short and plain, so it cannot forge log
# lines or smuggle data into upstream headers.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestIds:
    """The id of each request: the caller's own when it is short and plain, else a new one.

    A new id is 32 lowercase hex digits: 16 drawn from the operating system's random source
    once, when this object is built (once per gateway process), then a 64-bit counter. So
    ids are unique within a process by construction (the counter does not wrap in practice),
    and across replicas and restarts because two processes share an id only if they drew
    the same 64-bit prefix: about N^2 / 2^65 for N process starts ever, nil in practice.
    Drawing 128 random bits per request instead cost a ``getrandom`` system call each (3-4%
    of a proxied request's CPU). The ids are not secrets (they are logged and returned in
    ``X-Request-ID``); what the counter adds to what a caller sees is how many requests its
    replica served between two of its own, which the partner's services can count anyway.
    """

    __slots__ = ("_counter", "_prefix")

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def new(self) -> str:
        """A fresh id, unique across processes (see the class docstring)."""
        return f"{self._prefix}{next(self._counter):016x}"

    def for_request(self, supplied: str | None) -> str:
        """The caller's ``X-Request-ID`` if it is plain and short, else a fresh id."""
        if supplied is not None and _REQUEST_ID.fullmatch(supplied):
            return supplied
        return self.new()


@dataclass(slots=True)
class Exchange:
    """What one caller request has been through so far: the access log line's fields."""

    request_id: str
    method: str
    deadline: float = 0.0  # resilience-clock time by which the caller must have an answer
    route: str = OTHER_ROUTE
    practice_id: str | None = None
    status: int = 500
    attempts: int = 0
    error: str | None = None
    replayable: bool = True  # the body (if any) is buffered and can be sent again
    keyed: bool = False  # an Idempotency-Key goes upstream (decided from the headers sent)
    # Some attempt may have reached the practice (so a keyed POST must not be sent again).
    maybe_delivered: bool = False
    answer: StoredAnswer | None = None  # what the caller got, kept for an Idempotency-Key
    collect: bool = False  # keep the streamed body (up to a bound) for that record
    token_replaced: bool = False  # a 401 already led to a new token
    caller_stalled: bool = False  # the last attempt was waiting on the caller's own body
    trace: RequestSpan = NO_TRACE  # the SERVER span (gateway/tracing: a no-op when off)


class Observer:
    """Metrics, history and the access line of every request and attempt."""

    def __init__(self, metrics: Metrics, history: History, access_log: AccessLog) -> None:
        self._metrics = metrics
        self._history = history
        self._access_log = access_log
        # Children resolved once per label combination (the labels are bounded vocabularies).
        self._requests: dict[tuple[str, str, int], Bins] = {}
        self._attempts: dict[tuple[str, str], tuple[Count, Bins]] = {}
        self._rejected: dict[str, Count] = {}

    def rejected(self, reason: str) -> None:
        child = self._rejected.get(reason)
        if child is None:
            child = self._rejected[reason] = self._metrics.rejected.labels(reason)
        child.value += 1

    def attempt(self, route: str, outcome: str, seconds: float) -> None:
        key = (route, outcome)
        children = self._attempts.get(key)
        if children is None:
            metrics = self._metrics
            children = self._attempts[key] = (
                metrics.upstream_attempts.labels(route, outcome),
                metrics.upstream_attempt_duration.labels(route),
            )
        children[0].value += 1
        children[1].observe(seconds)

    def request(self, exchange: Exchange, elapsed: float) -> None:
        status = exchange.status
        self._history.record(status, exchange.error is not None, elapsed)
        key = (exchange.method, exchange.route, status)
        bins = self._requests.get(key)
        if bins is None:
            bins = self._requests[key] = self._metrics.request_duration.labels(
                exchange.method, exchange.route, str(status)
            )
        bins.observe(elapsed)  # also requests_total: the histogram's count (gateway.tally)
        self._access_log.request(
            method=exchange.method,
            route=exchange.route,
            status=status,
            duration_ms=round(elapsed * 1000, 2),
            attempts=exchange.attempts,
            practice_id=exchange.practice_id,
            request_id=exchange.request_id,
            error=exchange.error,
            trace_id=exchange.trace.trace_id,
        )
