"""The gateway's defences, wired together: breakers, budget, bulkhead, and what each outcome
means for them.

The state machines live beside it in this package (:mod:`~gateway.resilience.breaker`,
:mod:`~gateway.resilience.budget`, :mod:`~gateway.resilience.bulkhead`,
:mod:`~gateway.resilience.retry`); this module decides which of them an attempt's outcome
concerns (``docs/exact-facts.md`` section 3 and the README's "Resilience" table):

=====================================  ==================  ============================
outcome of an attempt                  practice breaker    partner-wide ("upstream")
=====================================  ==================  ============================
503 / 504 / no answer in time          failure             host answered: success [1]
502, 2xx, 3xx, 4xx                     success             success
cannot connect / TLS / connection lost neutral             failure
unusable answer (bad status, head)     neutral             failure
503 / 504 on a partner-wide path       (none)              failure
=====================================  ==================  ============================

[1] Unless the partner-wide breaker opened because most of the distinct practices attempted
failed together (EXACT's relay failing, not the practices): then a 503/504 probe keeps it open.

"Most" is relative on purpose (:class:`~gateway.resilience.breaker.PracticeOutcomes`): a
nightly batch that touches a few closed surgeries among many healthy practices is not an EXACT
outage and must never cut off the healthy ones. When a correlated failure is detected, the practice
breakers that opened in the same window are reset: one EXACT outage must not look like a
thousand practice outages.

A practice breaker that opens stays open at least as long as EXACT's own ``Retry-After`` on
the failures that opened it (capped by the maximum open time).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gateway.clock import SYSTEM_CLOCK, Clock
from gateway.errors import (
    CircuitOpen,
    GatewayError,
    RequestTimeout,
    UpstreamCircuitOpen,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from gateway.metrics import Metrics
from gateway.outcome import Outcome, OutcomeKind
from gateway.resilience.breaker import (
    Admission,
    Breaker,
    BreakerPolicy,
    BreakerTable,
    Observation,
    PracticeOutcomes,
    State,
)
from gateway.resilience.budget import RetryBudget
from gateway.resilience.bulkhead import Bulkhead
from gateway.resilience.decision import ANSWER, REPLAY, Action, Decision, RequestState
from gateway.resilience.retry import (
    RetryPolicy,
    RetryReason,
    SkipReason,
    parse_retry_after,
)
from gateway.resilience.retry import decide as decide_retry

log = logging.getLogger("exact_gateway.breaker")

UPSTREAM = "upstream"
_TIMED_OUT = frozenset({OutcomeKind.NO_ANSWER_IN_TIME, OutcomeKind.CUT_BY_DEADLINE})
# The retryable kind of each failed outcome, and of each status (None: never retried).
_RETRY_REASONS: dict[OutcomeKind, RetryReason | None] = {
    OutcomeKind.CONNECT_FAILED: RetryReason.CONNECT_ERROR,
    OutcomeKind.CONNECT_TIMEOUT: RetryReason.CONNECT_ERROR,
    OutcomeKind.LOST_AFTER_SEND: RetryReason.CONNECTION_LOST,
    OutcomeKind.NO_ANSWER_IN_TIME: RetryReason.TIMEOUT,
    OutcomeKind.BAD_RESPONSE: None,
}
_STATUS = {503: RetryReason.STATUS_503, 504: RetryReason.STATUS_504}
# What observe() is told for failures without a response (built once: no per-call objects).
_PRACTICE_SLOW = UpstreamTimeout("no answer in time")
_HOST_SLOW = UpstreamTimeout("no connection in time", connecting=True)
_HOST_FAILED = UpstreamUnreachable("the EXACT host failed")
_FAILURE_STATUSES = frozenset({503, 504})
# (state, cause: "connection" or "correlated" unless closed, seconds it opens for when open)
UpstreamListener = Callable[[str, str | None, float | None], None]
# (practice id, new state)
PracticeListener = Callable[[str, str], None]
# (practice breaker, previous state, new state): the fleet's view of every transition
BreakerListener = Callable[[Breaker, State, State], None]
# (practice breaker, EXACT's status): the breaker just opened on EXACT's own 503/504
OpeningListener = Callable[[Breaker, int], None]
# (practice breaker, EXACT's 503/504 on a closed breaker, or None: a success after failures)
StreakListener = Callable[[Breaker, int | None], None]
# Sends a half-open probe of its own for the ticket's practice, and reports it with observe().
Prober = Callable[["Ticket"], None]
# Retry-After for callers while the gateway's own probe is out.
PROBE_WAIT = 1.0


@dataclass(frozen=True, slots=True)
class Ticket:
    """What admission handed out for one attempt; given back with its outcome."""

    practice: Breaker | None
    practice_probe: bool
    upstream_probe: bool


# Frozen values, so one instance can be every policy's default.
DEFAULT_RETRY = RetryPolicy()
DEFAULT_PRACTICE_BREAKER = BreakerPolicy()
DEFAULT_UPSTREAM_BREAKER = BreakerPolicy(
    consecutive=5, ratio=1.0, min_calls=2**31, window=10.0, open_base=5.0, open_max=60.0
)


@dataclass(frozen=True, slots=True)
class ResiliencePolicy:
    """Every number of the defences, as one frozen value (built once from the settings)."""

    retry: RetryPolicy = DEFAULT_RETRY
    budget_ratio: float = 0.2
    budget_floor: int = 3
    budget_window: float = 10.0
    practice_concurrency: int = 10
    global_concurrency: int = 10000
    breaker: BreakerPolicy = DEFAULT_PRACTICE_BREAKER
    breaker_max_entries: int = 5000
    breaker_idle: float = 3600.0
    upstream: BreakerPolicy = DEFAULT_UPSTREAM_BREAKER
    upstream_practices: int = 20
    upstream_practice_ratio: float = 0.8
    upstream_window: float = 10.0


class Resilience:
    """Everything that decides whether, and how often, a request goes to EXACT."""

    def __init__(
        self,
        policy: ResiliencePolicy,
        metrics: Metrics,
        *,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
    ) -> None:
        self._metrics = metrics
        self.clock = clock
        # Jitter, not secrecy: an ordinary PRNG, seeded from the OS so replicas differ.
        self.rng = rng if rng is not None else random.Random()  # noqa: S311
        self.retry = policy.retry
        self.budget = RetryBudget(policy.budget_ratio, policy.budget_floor, policy.budget_window)
        self.bulkhead = Bulkhead(policy.practice_concurrency, policy.global_concurrency)
        self.breakers = BreakerTable(
            policy.breaker,
            max_entries=policy.breaker_max_entries,
            idle=policy.breaker_idle,
            clock=clock.monotonic,
            rng=self.rng,
            on_transition=self._transition,
        )
        self.upstream = Breaker(UPSTREAM, policy.upstream, self.rng, self._transition)
        self._correlated = PracticeOutcomes(
            policy.upstream_practices, policy.upstream_practice_ratio, policy.upstream_window
        )
        self._upstream_window = policy.upstream_window
        self._upstream_opened_for = ""
        self._upstream_listeners: list[UpstreamListener] = []
        self._practice_listeners: list[PracticeListener] = []
        self._breaker_listeners: list[BreakerListener] = []
        self._opening_listeners: list[OpeningListener] = []
        self._streak_listeners: list[StreakListener] = []
        self.breaker_policy = policy.breaker
        self._prober: Prober | None = None
        # Metric children resolved once: a retry or a skip costs one increment.
        self._retried = {r: metrics.retries.labels(r.value) for r in RetryReason}
        self._skipped = {r: metrics.retries_skipped.labels(r.value) for r in SkipReason}

    def watch_upstream(self, listener: UpstreamListener) -> None:
        """Call ``listener`` on every change of the partner-wide breaker (the status page's
        history of EXACT outages)."""
        self._upstream_listeners.append(listener)

    def watch_practices(self, listener: PracticeListener) -> None:
        """Call ``listener`` on every state change of a practice breaker (the ledger)."""
        self._practice_listeners.append(listener)

    def watch_breakers(self, listener: BreakerListener) -> None:
        """Call ``listener`` with the breaker and both states on every practice transition
        (the fleet: a successful probe closing, restored and shared verdicts)."""
        self._breaker_listeners.append(listener)

    def watch_openings(self, listener: OpeningListener) -> None:
        """Call ``listener`` when a practice breaker opens because EXACT itself answered
        503 or 504 (its relay's verdict, the same for every replica): never for our own
        time-outs, connection errors or a caller's fault."""
        self._opening_listeners.append(listener)

    def watch_streaks(self, listener: StreakListener) -> None:
        """Call ``listener`` with EXACT's status each time EXACT itself answers 503 or 504
        for a practice whose breaker is closed, and with ``None`` when a practice answers
        after failures in a row (the fleet counts EXACT's verdicts across replicas). Never
        for our own time-outs, connection errors, a caller's fault or a probe."""
        self._streak_listeners.append(listener)

    def probe_with(self, prober: Prober) -> None:
        """Let ``prober`` send each practice breaker's half-open probe (the gateway's own
        request) instead of a caller's: callers keep getting ``circuit_open`` meanwhile."""
        self._prober = prober

    def forget(self, practice_id: str) -> None:
        """Drop a practice's breaker (it left the subscription list)."""
        self.breakers.forget(practice_id.upper())

    # -- admission --------------------------------------------------------------------------

    def admit(self, practice_id: str | None) -> Ticket:
        """Clear an attempt with the breakers, or raise the 503 that says which one is open."""
        now = self.clock.monotonic()
        breaker = None
        practice_probe = False
        if practice_id is not None:
            breaker = self.breakers.get(practice_id.upper())
            admission = breaker.admit(now)
            if not admission.allowed:
                raise CircuitOpen.for_practice(practice_id, admission.retry_after)
            practice_probe = admission.probe
            if practice_probe and self._prober is not None:
                self._prober(Ticket(breaker, True, False))
                raise CircuitOpen.for_practice(practice_id, PROBE_WAIT)
        upstream: Admission = self.upstream.admit(now)
        if not upstream.allowed:
            if breaker is not None and practice_probe:
                breaker.release()
            raise _upstream_open(upstream.retry_after)
        return Ticket(breaker, practice_probe, upstream.probe)

    def opened_by(self, ticket: Ticket) -> GatewayError | None:
        """If the attempt just observed opened a breaker, the error that says so."""
        now = self.clock.monotonic()
        practice = ticket.practice
        if practice is not None and practice.state is State.OPEN:
            return CircuitOpen.for_practice(practice.key, practice.open_until - now)
        if self.upstream.state is State.OPEN:
            return _upstream_open(self.upstream.open_until - now)
        return None

    def abandon(self, ticket: Ticket) -> None:
        """The attempt ended with no outcome (the caller left): free any probe slot."""
        if ticket.practice is not None and ticket.practice_probe:
            ticket.practice.release()
        if ticket.upstream_probe:
            self.upstream.release()

    # -- one attempt, one verdict -----------------------------------------------------------

    def decide(  # noqa: PLR0911 - one return per row of the table
        self, ticket: Ticket, outcome: Outcome, state: RequestState
    ) -> Decision:
        """The README's resilience table as one function: feed the attempt's outcome to the
        breakers it concerns, then say what the request does next.

        Rows, in the order they are tried: the caller's own slowness or deadline never
        counts (the ticket is abandoned); a request that cannot be sent as it is gets 400;
        every other outcome is observed by the breakers; a 401 gets one new token and replay;
        a retryable outcome is retried unless this attempt opened a breaker, the body cannot
        be sent again, the retry policy (method, attempts, Retry-After, deadline) says no, or
        the retry budget is spent. Whatever stops a retry, the caller hears its own outcome.
        """
        kind = outcome.kind
        if state.caller_stalled and kind in _TIMED_OUT:
            self.abandon(ticket)
            return Decision(
                Action.REFUSE,
                RequestTimeout("the request body stopped arriving before it was complete"),
            )
        if kind is OutcomeKind.CUT_BY_DEADLINE or kind is OutcomeKind.INVALID_REQUEST:
            self.abandon(ticket)
            return Decision(Action.REFUSE, outcome.error())
        self._observe(ticket, outcome)
        status = outcome.status
        if kind is OutcomeKind.RESPONSE:
            if status == 401 and not state.token_replaced:
                return REPLAY
            if status not in _STATUS:
                return ANSWER  # the fast path: nothing else to weigh
        reason = _STATUS.get(status) if kind is OutcomeKind.RESPONSE else _RETRY_REASONS.get(kind)
        if reason is None:
            return self._answer(outcome, None)
        if self.opened_by(ticket) is not None:
            # This attempt opened a breaker: retrying into it would only be refused.
            return self._answer(outcome, SkipReason.BREAKER)
        if not state.replayable:
            return self._answer(outcome, SkipReason.BODY_STREAMED)
        now = self.clock.monotonic()
        verdict = decide_retry(
            self.retry,
            attempt=state.attempts,
            reason=reason,
            method=state.method,
            has_idempotency_key=state.keyed,
            retry_after=parse_retry_after(outcome.retry_after, self.clock.wall()),
            remaining=state.deadline - now,
            rng=self.rng,
        )
        if verdict.why is not None:
            return self._answer(outcome, verdict.why)
        if not self.budget.try_spend(now):
            return self._answer(outcome, SkipReason.BUDGET)
        self._retried[reason].inc()
        return Decision(Action.RETRY, wait=verdict.wait, retry=reason)

    def _answer(self, outcome: Outcome, skipped: SkipReason | None) -> Decision:
        """The caller hears this attempt's own outcome (``skipped``: the rule that stopped a
        retry, counted)."""
        if skipped is not None:
            self._skipped[skipped].inc()
        if outcome.kind is OutcomeKind.RESPONSE:
            return ANSWER if skipped is None else Decision(Action.ANSWER, skipped=skipped)
        error = outcome.error()
        if skipped is SkipReason.BUDGET:
            error.detail += " (not retried: retries across all requests are at their budget)"
        return Decision(Action.REFUSE, error, skipped=skipped)

    def _observe(self, ticket: Ticket, outcome: Outcome) -> None:
        kind = outcome.kind
        if kind is OutcomeKind.RESPONSE:
            self.observe(ticket, outcome.status, None, outcome.retry_after)
        elif kind is OutcomeKind.NO_ANSWER_IN_TIME:
            self.observe(ticket, None, _PRACTICE_SLOW)
        elif kind is OutcomeKind.CONNECT_TIMEOUT:
            self.observe(ticket, None, _HOST_SLOW)
        else:
            # Refused, TLS, lost, or bytes that are not HTTP: the EXACT host failed.
            self.observe(ticket, None, _HOST_FAILED)

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
        now = self.clock.monotonic()
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
        hint = parse_retry_after(retry_after, self.clock.wall()) if practice_failed else None
        was_open = practice.state is State.OPEN
        was_closed = practice.state is State.CLOSED
        streak = practice.consecutive_failures
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
        if self._streak_listeners and was_closed:
            self._tell_streak(practice, status, streak > 0 and not practice_failed)
        if status in _FAILURE_STATUSES and not was_open and practice.state is State.OPEN:
            for opened in self._opening_listeners:  # EXACT's own verdict (error is None here)
                opened(practice, status)

    def _tell_streak(self, practice: Breaker, status: int | None, recovered: bool) -> None:
        """EXACT's own 503/504 (``error`` was None), or the first success after failures."""
        if status in _FAILURE_STATUSES:
            for listener in self._streak_listeners:
                listener(practice, status)
        elif recovered:
            for listener in self._streak_listeners:
                listener(practice, None)

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
            for practice_listener in self._practice_listeners:
                practice_listener(breaker.key, state.value)
            for breaker_listener in self._breaker_listeners:
                breaker_listener(breaker, previous, state)
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
        now = self.clock.monotonic()
        wall = self.clock.wall()
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
