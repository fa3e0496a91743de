"""The gateway's defences, wired together: breakers, budget, bulkhead, and what each outcome
means for them.

The state machines live in :mod:`gateway.breaker`, :mod:`gateway.budget`,
:mod:`gateway.bulkhead` and :mod:`gateway.retry`; this module decides which of them an
attempt's outcome concerns (shared/product.md, "Resilience semantics"):

=====================================  ==================  ============================
outcome of an attempt                  practice breaker    partner-wide ("upstream")
=====================================  ==================  ============================
503 / 504 / no answer in time          failure             host answered: success [1]
502, 2xx, 3xx, 4xx                     success             success
cannot connect / TLS / connection lost neutral             failure
503 / 504 on a partner-wide path       (none)              failure
=====================================  ==================  ============================

[1] Unless the partner-wide breaker opened because most of the distinct practices attempted
failed together (EXACT's relay failing, not the practices): then a 503/504 probe keeps it open.

"Most" is relative on purpose (:class:`gateway.breaker.PracticeOutcomes`): a nightly batch
that touches a few closed surgeries among many healthy practices is not an EXACT outage and
must never cut off the healthy ones. When a correlated failure is detected, the practice
breakers that opened in the same window are reset: one EXACT outage must not look like a
thousand practice outages.

A practice breaker that opens stays open at least as long as EXACT's own ``Retry-After`` on
the failures that opened it (capped by the maximum open time).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.breaker import (
    Admission,
    Breaker,
    BreakerPolicy,
    BreakerTable,
    Observation,
    PracticeOutcomes,
    State,
)
from gateway.budget import RetryBudget
from gateway.bulkhead import Bulkhead
from gateway.errors import CircuitOpen, GatewayError, UpstreamCircuitOpen, UpstreamTimeout
from gateway.metrics import Metrics
from gateway.retry import RetryPolicy, parse_retry_after
from gateway.settings import Settings

log = logging.getLogger("exact_gateway.breaker")

UPSTREAM = "upstream"
_STATE_VALUE = {State.CLOSED: 0, State.OPEN: 1, State.HALF_OPEN: 2}
_FAILURE_STATUSES = frozenset({503, 504})
# (state, cause: "connection" or "correlated" unless closed, seconds it opens for when open)
UpstreamListener = Callable[[str, str | None, float | None], None]


@dataclass(frozen=True, slots=True)
class Ticket:
    """What admission handed out for one attempt; given back with its outcome."""

    practice: Breaker | None
    practice_probe: bool
    upstream_probe: bool


class Resilience:
    """Everything that decides whether, and how often, a request goes to EXACT."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._metrics = metrics
        self.clock = clock
        self.wall_clock = wall_clock
        # Jitter, not secrecy: an ordinary PRNG, seeded from the OS so replicas differ.
        self.rng = rng if rng is not None else random.Random()  # noqa: S311
        self.retry = RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            backoff_base=settings.retry_backoff_base_seconds,
            backoff_max=settings.retry_backoff_max_seconds,
            retry_after_max=settings.retry_after_max_seconds,
        )
        self.budget = RetryBudget(
            settings.retry_budget_ratio,
            settings.retry_budget_min_retries,
            settings.retry_budget_window_seconds,
        )
        self.bulkhead = Bulkhead(settings.practice_concurrency, settings.global_concurrency)
        self.breakers = BreakerTable(
            BreakerPolicy(
                consecutive=settings.breaker_consecutive_failures,
                ratio=settings.breaker_failure_ratio,
                min_calls=settings.breaker_min_calls,
                window=settings.breaker_window_seconds,
                open_base=settings.breaker_open_seconds,
                open_max=settings.breaker_open_max_seconds,
                jitter=settings.breaker_open_jitter,
            ),
            max_entries=settings.breaker_max_entries,
            idle=settings.breaker_idle_seconds,
            clock=clock,
            rng=self.rng,
            on_transition=self._transition,
        )
        self.upstream = Breaker(
            UPSTREAM,
            BreakerPolicy(
                consecutive=settings.upstream_breaker_failures,
                ratio=1.0,
                min_calls=2**31,  # consecutive failures only
                window=settings.upstream_breaker_window_seconds,
                open_base=settings.upstream_breaker_open_seconds,
                open_max=settings.upstream_breaker_open_max_seconds,
                jitter=settings.breaker_open_jitter,
            ),
            self.rng,
            self._transition,
        )
        self._correlated = PracticeOutcomes(
            settings.upstream_breaker_practices,
            settings.upstream_breaker_practice_ratio,
            settings.upstream_breaker_window_seconds,
        )
        self._upstream_window = settings.upstream_breaker_window_seconds
        self._upstream_opened_for = ""
        self._upstream_listeners: list[UpstreamListener] = []

    def watch_upstream(self, listener: UpstreamListener) -> None:
        """Call ``listener`` on every change of the partner-wide breaker (the status page's
        history of EXACT outages)."""
        self._upstream_listeners.append(listener)

    # -- admission --------------------------------------------------------------------------

    def admit(self, practice_id: str | None) -> Ticket:
        """Clear an attempt with the breakers, or raise the 503 that says which one is open."""
        now = self.clock()
        breaker = None
        practice_probe = False
        if practice_id is not None:
            breaker = self.breakers.get(practice_id.upper())
            admission = breaker.admit(now)
            if not admission.allowed:
                raise _practice_open(practice_id, admission.retry_after)
            practice_probe = admission.probe
        upstream: Admission = self.upstream.admit(now)
        if not upstream.allowed:
            if breaker is not None and practice_probe:
                breaker.release()
            raise _upstream_open(upstream.retry_after)
        return Ticket(breaker, practice_probe, upstream.probe)

    def opened_by(self, ticket: Ticket) -> GatewayError | None:
        """If the attempt just observed opened a breaker, the error that says so."""
        now = self.clock()
        practice = ticket.practice
        if practice is not None and practice.state is State.OPEN:
            return _practice_open(practice.key, practice.open_until - now)
        if self.upstream.state is State.OPEN:
            return _upstream_open(self.upstream.open_until - now)
        return None

    def abandon(self, ticket: Ticket) -> None:
        """The attempt ended with no outcome (the caller left): free any probe slot."""
        if ticket.practice is not None and ticket.practice_probe:
            ticket.practice.release()
        if ticket.upstream_probe:
            self.upstream.release()

    # -- outcomes ---------------------------------------------------------------------------

    def observe(
        self,
        ticket: Ticket,
        status: int | None,
        error: GatewayError | None,
        retry_after: str | None = None,
    ) -> None:
        """Feed one attempt's outcome to the breakers it concerns (see the module table).

        ``retry_after`` is EXACT's ``Retry-After`` header on the answer, if any.
        """
        now = self.clock()
        practice = ticket.practice
        waited_on_practice = (
            practice is not None and isinstance(error, UpstreamTimeout) and not error.connecting
        )
        if practice is None or (error is not None and not waited_on_practice):
            # The EXACT host itself failed (or a partner-wide path did): not the practice's.
            if practice is not None:
                practice.record(now, Observation.NEUTRAL, probe=ticket.practice_probe)
            failed = error is not None or status in _FAILURE_STATUSES
            self._observe_upstream(now, _verdict(failed), ticket.upstream_probe)
            return
        practice_failed = waited_on_practice or status in _FAILURE_STATUSES
        hint = parse_retry_after(retry_after, self.wall_clock()) if practice_failed else None
        practice.record(
            now, _verdict(practice_failed), probe=ticket.practice_probe, retry_after=hint
        )
        if not practice_failed:
            host = Observation.SUCCESS
        elif self._upstream_opened_for == "correlated":
            host = Observation.FAILURE  # EXACT's relay still failing practices wholesale
        else:
            host = Observation.NEUTRAL if waited_on_practice else Observation.SUCCESS
        self._observe_upstream(now, host, ticket.upstream_probe)
        if self._correlated.record(practice.key, now, practice_failed):
            self._correlated_failure(now)

    def _observe_upstream(self, now: float, observation: Observation, probe: bool) -> None:
        was_open = self.upstream.state is State.OPEN
        self.upstream.record(now, observation, probe=probe)
        if not was_open and self.upstream.state is State.OPEN and not self._upstream_opened_for:
            self._upstream_opened_for = "connection"

    def _correlated_failure(self, now: float) -> None:
        self._correlated.clear()
        self._upstream_opened_for = "correlated"
        self.upstream.trip(now)
        forgiven = self.breakers.forgive(since=now - self._upstream_window)
        log.warning(
            "many practices failing at once: treating it as an EXACT outage",
            extra={"fields": {"event": "upstream_outage", "practice_breakers_reset": forgiven}},
        )

    def _transition(self, breaker: Breaker, previous: State, state: State) -> None:
        if breaker is self.upstream and state is State.CLOSED:
            self._upstream_opened_for = ""
        scope = "upstream" if breaker is self.upstream else "practice"
        self._metrics.breaker_transitions.labels(scope, state.value).inc()
        fields: dict[str, Any] = {"event": f"breaker_{state.value}", "scope": scope}
        if breaker is not self.upstream:
            fields["practice_id"] = breaker.key
        if state is State.OPEN:
            fields["open_for"] = round(breaker.open_until - breaker.opened_at, 1)
        if breaker is self.upstream:
            # On a first opening by failed connections the cause is set only after this call.
            cause = None
            if state is not State.CLOSED:
                cause = self._upstream_opened_for or "connection"
            for listener in self._upstream_listeners:
                listener(state.value, cause, fields.get("open_for"))
        log.log(
            logging.WARNING if state is State.OPEN else logging.INFO,
            "breaker %s",
            state.value,
            extra={"fields": fields},
        )

    # -- visibility -------------------------------------------------------------------------

    def breaker_status(self) -> dict[str, Any]:
        """``/breakers``: every breaker that is not closed, and how many are."""
        now = self.clock()
        wall = time.time()
        return {
            "upstream": {
                key: value
                for key, value in _describe(self.upstream, now, wall).items()
                if key != "practice_id"
            }
            | {"cause": self._upstream_opened_for or None},
            "practices": sorted(
                (_describe(b, now, wall) for b in self.breakers.not_closed()),
                key=lambda entry: entry["practice_id"],
            ),
            "counts": self.breakers.counts(),
            "retry_budget": self.budget.state(now),
            "inflight": self.bulkhead.inflight,
        }


def _practice_open(practice_id: str, retry_after: float) -> CircuitOpen:
    return CircuitOpen(
        f"practice {practice_id} is not answering; the next probe is in {retry_after:.0f} s",
        practice_id=practice_id,
        retry_after=retry_after,
    )


def _upstream_open(retry_after: float) -> UpstreamCircuitOpen:
    return UpstreamCircuitOpen(
        "the EXACT API is failing for many requests; calls are paused",
        retry_after=retry_after,
    )


def _verdict(failed: bool) -> Observation:
    return Observation.FAILURE if failed else Observation.SUCCESS


def _describe(breaker: Breaker, now: float, wall: float) -> dict[str, Any]:
    calls, failures = breaker.window_counts(now)
    entry: dict[str, Any] = {
        "practice_id": breaker.key,
        "state": breaker.state.value,
        "consecutive_failures": breaker.consecutive_failures,
        "calls_in_window": calls,
        "failures_in_window": failures,
        "reopenings": breaker.reopenings,
    }
    if breaker.state is not State.CLOSED:
        entry["opened_at_unix"] = round(wall - (now - breaker.opened_at), 3)
        entry["next_probe_in_seconds"] = round(max(0.0, breaker.open_until - now), 3)
        entry["probe_in_flight"] = breaker.probe_in_flight
    return entry


class BreakerCollector(Collector):
    """Breaker states computed at scrape time, with bounded labels: a series per practice
    only while its breaker is not closed, and counts for the rest."""

    def __init__(self, resilience: Resilience) -> None:
        self._resilience = resilience

    def collect(self) -> Iterator[Metric]:
        per_practice = GaugeMetricFamily(
            "exact_gateway_circuit_breaker_state",
            "State of each practice breaker that is not closed (1 open, 2 half-open).",
            labels=["practice_id"],
        )
        for breaker in self._resilience.breakers.not_closed():
            per_practice.add_metric([breaker.key], _STATE_VALUE[breaker.state])
        yield per_practice
        counts = GaugeMetricFamily(
            "exact_gateway_circuit_breakers",
            "Practice breakers held, by state.",
            labels=["state"],
        )
        for state, count in self._resilience.breakers.counts().items():
            counts.add_metric([state], count)
        yield counts
        yield GaugeMetricFamily(
            "exact_gateway_upstream_circuit_breaker_state",
            "State of the partner-wide breaker (0 closed, 1 open, 2 half-open).",
            value=_STATE_VALUE[self._resilience.upstream.state],
        )
